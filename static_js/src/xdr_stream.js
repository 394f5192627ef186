/* Transport: the padded event stream over IE8/9's XDomainRequest, for cross-origin pages.
   XDR shows no status and sends no headers: the last event ID rides in the query string. */

function xdrStream(es) {
  var xdr = new window.XDomainRequest(), opened = false;

  function onProgress() {
    if (!opened) {
      /* Not an event stream fails the connection; XDR shows a 204 as an empty body, so it ends here too. */
      if (!isEventStream(xdr.contentType)) {
        return es._end(-1);
      }
      opened = true;
      es._open();
    }
    es._chunk(xdr.responseText);
  }

  function off() {
    xdr.onprogress = xdr.onload = xdr.onerror = xdr.ontimeout = noop;
  }

  /* IE9 aborts an XDR that lacks any of these handlers. */
  xdr.onprogress = onProgress;
  xdr.onload = function () {
    off();
    onProgress();
    es._end(200, es._p.rotate);
  };
  xdr.onerror = xdr.ontimeout = function () {
    off();
    es._end(0);
  };
  xdr.open("GET", es._streamUrl());
  xdr.send();
  return function () {
    off();
    xdr.abort();
  };
}
