/* Transport: long-polling over XMLHttpRequest, for IE8/9 on the gateway's own origin, where
   responseText cannot be read before the response is complete. */

function xhrPoll(es) {
  /* A unique parameter: IE would otherwise answer a repeated poll from its cache. */
  var xhr = openXhr(es, es._pollUrl(["_", uid()]));
  xhr.onreadystatechange = function () {
    if (xhr.readyState == 4) {
      xhr.onreadystatechange = noop;
      if (xhr.status == 200) {
        es._poll(xhr.responseText);
      } else {
        es._end(xhr.status);
      }
    }
  };
  xhr.send(null);
  return function () {
    xhr.onreadystatechange = noop;
    xhr.abort();
  };
}
