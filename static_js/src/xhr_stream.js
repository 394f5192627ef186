/* Transport: the padded event stream over XMLHttpRequest (IE10+ and every modern browser),
   feeding the parser the part of responseText it has not seen yet (see EventSource#_chunk). */

function xhrStream(es) {
  var xhr = openXhr(es, es._streamUrl()), opened = false;

  function onChange() {
    var state = xhr.readyState;
    if (state < 2) {
      return;
    }
    if (!opened) {
      if (xhr.status != 200 || !isEventStream(xhr.getResponseHeader("Content-Type"))) {
        return es._end(xhr.status == 200 ? -1 : xhr.status);
      }
      opened = true;
      es._open();
    }
    if (state > 2) {
      es._chunk(xhr.responseText);
    }
    if (state == 4) {
      es._end(xhr.status, es._p.rotate);
    }
  }

  xhr.setRequestHeader("Accept", "text/event-stream");
  /* An event stream is always UTF-8, whatever charset its Content-Type names. */
  if (xhr.overrideMimeType) {
    xhr.overrideMimeType("text/plain; charset=utf-8");
  }
  xhr.onreadystatechange = xhr.onprogress = onChange;
  xhr.send(null);
  return function () {
    xhr.onreadystatechange = xhr.onprogress = noop;
    xhr.abort();
  };
}
