/* A stand-in for IE8/9's XDomainRequest, built on XMLHttpRequest, for the xdr-stream transport.
   It keeps XDR's surface and limits, so that the polyfill cannot lean on anything XDR lacks:
   - open(method, url), send([body]), abort(); timeout; onload, onprogress, onerror, ontimeout;
     responseText and contentType. No readyState, no status, no setRequestHeader, no
     getResponseHeader, no withCredentials property.
   - GET and POST only; the URL must have the page's scheme ("Access is denied" otherwise).
   - No request headers but the browser's own, never cookies (credentials are always omitted).
   - The status is never shown: a 2xx ends in onload, anything else (including a response the
     CORS check refused) in onerror, with responseText left empty.
   - Like IE's XDR, nothing of the body is shown until about 2 KB arrived or the response ended.
   window.xdrShim.opened counts the requests made through it, for the tests. */
(function (window) {
  /* The browser's own XHR, even when legacy_xhr.js already replaced it. */
  var RealXHR = (window.legacyXhrShim && window.legacyXhrShim.real) || window.XMLHttpRequest,
    THRESHOLD = 2048;

  function fire(xdr, name) {
    var handler = xdr["on" + name];
    if (typeof handler == "function") {
      handler.call(xdr);
    }
  }

  function XDomainRequest() {
    this.timeout = 0;
    this.responseText = "";
    this.contentType = "";
    this.onload = this.onprogress = this.onerror = this.ontimeout = null;
    this._xhr = null;
    this._method = this._url = null;
    this._timer = null;
    this._done = false;
  }

  XDomainRequest.prototype.open = function (method, url) {
    var upper = String(method).toUpperCase(), a = window.document.createElement("a");
    if (upper != "GET" && upper != "POST") {
      throw new Error("XDomainRequest: invalid argument (only GET and POST)");
    }
    a.href = url;
    if (a.protocol != window.location.protocol) {
      throw new Error("XDomainRequest: access is denied (not the page's scheme)");
    }
    this._method = upper;
    this._url = a.href;
  };

  XDomainRequest.prototype.send = function (body) {
    var me = this, xhr = new RealXHR(), shown = false;
    if (!me._url) {
      throw new Error("XDomainRequest: send() before open()");
    }
    me._xhr = xhr;
    window.xdrShim.opened++;
    xhr.open(me._method, me._url, true);
    xhr.withCredentials = false;

    function finish(name) {
      if (me._done) {
        return;
      }
      me._done = true;
      window.clearTimeout(me._timer);
      xhr.onreadystatechange = xhr.onprogress = xhr.onerror = null;
      fire(me, name);
    }

    function progress() {
      if (me._done || xhr.readyState < 3 || xhr.status < 200 || xhr.status > 299) {
        return;
      }
      me.contentType = xhr.getResponseHeader("Content-Type") || "";
      if (shown || xhr.responseText.length >= THRESHOLD) {
        shown = true;
        me.responseText = xhr.responseText;
        fire(me, "progress");
      }
    }

    xhr.onprogress = progress;
    xhr.onreadystatechange = function () {
      if (xhr.readyState == 2) {
        me.contentType = xhr.getResponseHeader("Content-Type") || "";
      } else if (xhr.readyState == 3) {
        progress();
      } else if (xhr.readyState == 4) {
        if (xhr.status >= 200 && xhr.status <= 299) {
          me.responseText = xhr.responseText;
          finish("load");
        } else {
          me.responseText = "";
          finish("error");
        }
      }
    };
    if (me.timeout > 0) {
      me._timer = window.setTimeout(function () {
        if (!me._done) {
          xhr.abort();
          finish("timeout");
        }
      }, me.timeout);
    }
    xhr.send(me._method == "POST" && body != null ? String(body) : null);
  };

  XDomainRequest.prototype.abort = function () {
    this._done = true;
    window.clearTimeout(this._timer);
    if (this._xhr) {
      this._xhr.onreadystatechange = this._xhr.onprogress = this._xhr.onerror = null;
      this._xhr.abort();
    }
  };

  window.xdrShim = {opened: 0};
  window.XDomainRequest = XDomainRequest;
}(window));
