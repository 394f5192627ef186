/* Transport: the padded event stream over XMLHttpRequest (IE10+ and every modern browser),
   feeding the parser the part of responseText it has not seen yet (see EventSource#_chunk). */

function xhrStream(es) {
  var opened = false;
  return xhrRequest(es, es._streamUrl(), function (xhr) {
    if (!opened) {
      /* WHATWG: any status but 200, or another Content-Type, fails the connection. */
      if (xhr.status != 200 || !isEventStream(xhr.getResponseHeader("Content-Type"))) {
        return es._end(xhr.status == 200 ? -1 : xhr.status);
      }
      opened = true;
      es._open();
    }
    if (xhr.readyState > 2) {
      es._chunk(xhr.responseText);
    }
  }, function (status) {
    es._end(status, es._p.rotate);
  });
}
