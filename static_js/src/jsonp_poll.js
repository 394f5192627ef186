/* Transport: long-polling with JSONP script tags, where nothing else works (IE6/7 cross-origin,
   or no JSON). The callback is a global, window.__sseg_cb_<uid>, only while its script is
   loading: the gateway accepts plain names only, no dotted paths. */

function jsonpPoll(es) {
  var doc = window.document,
    head = doc.getElementsByTagName("head")[0] || doc.documentElement,
    script = doc.createElement("script"),
    name = "__sseg_cb_" + uid();

  /* IE8 and older throw on delete of a window property. */
  function forget() {
    try {
      delete window[name];
    } catch (e) {
      window[name] = undefined;
    }
  }

  /* Removes the script; a script that may still run gets a callback that only removes itself. */
  function finish(mayRunLater) {
    var s = script;
    if (!s) {
      return;
    }
    script = null;
    s.onload = s.onerror = s.onreadystatechange = null;
    if (s.parentNode) {
      s.parentNode.removeChild(s);
    }
    if (mayRunLater) {
      window[name] = forget;
    } else {
      forget();
    }
  }

  function fail(status) {
    if (script) {
      finish(false);
      es._end(status);
    }
  }

  window[name] = function (response) {
    finish(false);
    es._poll(response);
  };
  /* A script that loads but does not call back was empty: a 204. Old IE cannot tell that
     from an error (it only reports "loaded"), so there it counts as an error. */
  script.onload = function () {
    fail(204);
  };
  script.onerror = function () {
    fail(0);
  };
  script.onreadystatechange = function () {
    if (/^(loaded|complete)$/.test(script.readyState)) {
      fail(0);
    }
  };
  script.charset = "utf-8";
  script.src = es._pollUrl(["callback", name]);
  head.insertBefore(script, head.firstChild);
  return function () {
    finish(true);
  };
}
