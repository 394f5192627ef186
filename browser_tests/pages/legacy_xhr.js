/* Makes this Chromium look like IE8/9 (or IE7) to the polyfill's transport choice: a native
   XMLHttpRequest without CORS. The stand-in forwards to the real one but has no withCredentials
   and no overrideMimeType, refuses other origins in open() ("Access is denied", as IE did), and
   shows responseText only once the response is complete (IE8/9 throw before that).
   Load xdr_shim.js as well to look like IE8/9; without it the page looks like IE7. */
(function (window) {
  var RealXHR = window.XMLHttpRequest;

  function originOf(url) {
    var a = window.document.createElement("a");
    a.href = url;
    return a.protocol + "//" + a.host;
  }

  function LegacyXMLHttpRequest() {
    var me = this, xhr = new RealXHR();
    me._xhr = xhr;
    me.readyState = 0;
    me.status = 0;
    me.onreadystatechange = null;
    xhr.onreadystatechange = function () {
      me.readyState = xhr.readyState;
      me.status = xhr.readyState >= 2 ? xhr.status : 0;
      if (typeof me.onreadystatechange == "function") {
        me.onreadystatechange();
      }
    };
  }

  LegacyXMLHttpRequest.prototype = {
    open: function (method, url, async) {
      if (originOf(url) != originOf(window.location.href)) {
        throw new Error("XMLHttpRequest: access is denied (another origin)");
      }
      this._xhr.open(method, url, async !== false);
    },
    setRequestHeader: function (name, value) {
      this._xhr.setRequestHeader(name, value);
    },
    getResponseHeader: function (name) {
      return this._xhr.getResponseHeader(name);
    },
    getAllResponseHeaders: function () {
      return this._xhr.getAllResponseHeaders();
    },
    send: function (body) {
      this._xhr.send(body === undefined ? null : body);
    },
    abort: function () {
      this._xhr.abort();
    }
  };

  window.Object.defineProperty(LegacyXMLHttpRequest.prototype, "responseText", {
    get: function () {
      if (this._xhr.readyState < 4) {
        throw new Error("XMLHttpRequest: the data is not yet available");
      }
      return this._xhr.responseText;
    }
  });

  window.legacyXhrShim = {real: RealXHR};
  window.XMLHttpRequest = LegacyXMLHttpRequest;
}(window));
