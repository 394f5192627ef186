/* Small helpers shared by the transports and the facade: URLs, origins, XHR set-up, JSON. */

var CONNECTING = 0, OPEN = 1, CLOSED = 2, uidCount = 0;

function noop() {}

/* A name unique on this page and across page loads (busts IE's XHR and script caches). */
function uid() {
  return (+new Date()).toString(36) + uidCount++;
}

/* The scheme (1) and host (2) of a URL that has them: "http://user@Host:80" of "http://user@Host:80/x". */
var URL_HEAD = /^([a-z][\w+.\-]*:)?\/\/(?:[^\/?#@]*@)?([^\/?#]*)/i;

/* "scheme://host[:port]" of an absolute URL, default ports dropped; a relative URL has the page's origin. */
function originOf(url) {
  var m = URL_HEAD.exec(url),
    scheme = (m && m[1] || window.location.protocol).toLowerCase();
  if (!m) {
    return originOf(window.location.href);
  }
  return scheme + "//" + m[2].toLowerCase().replace(scheme == "https:" ? /:443$/ : /:80$/, "");
}

/* The gateway's long-poll URL for a stream URL: its "/events" path segment becomes "/poll". */
function pollUrlOf(url) {
  var m = URL_HEAD.exec(url), head = m ? m[0] : "";
  return head + url.slice(head.length).replace(/\/events(?=[\/?#]|$)/, "/poll");
}

/* Sets query parameters from the name/value pairs in kv, replacing any of the same name.
   A pair with an empty value is skipped: the URL keeps whatever the page gave it. */
function withQuery(url, kv) {
  var m = /^([^?#]*)\??([^#]*)/.exec(url), query = "&" + m[2], i;
  for (i = 0; i < kv.length; i += 2) {
    if (kv[i + 1]) {
      query = query.replace(new RegExp("&" + kv[i] + "=[^&]*", "g"), "") +
        "&" + kv[i] + "=" + encodeURIComponent(kv[i + 1]);
    }
  }
  query = query.replace(/^&+/, "");
  return query ? m[1] + "?" + query : m[1];
}

/* Sends a GET XMLHttpRequest and returns the function that aborts it. A stream (onData given) is
   read as it arrives: onData(xhr) runs from readyState 2 on. onEnd(status, xhr) runs once, at the
   end: the HTTP status, 0 for a network error, -1 for an abort that the polyfill did not make
   (window.stop(): WHATWG "fail the connection"). An XHR without load events (IE8/9) ends on
   readyState 4, where such an abort looks like a network error.
   Same-origin requests carry the headers a browser's EventSource sends: Cache-Control, and
   Last-Event-ID as UTF-8 bytes, as browsers send it (setRequestHeader takes only Latin-1). Across
   origins they would cost a CORS preflight: the last event ID rides in the query string only. */
function xhrRequest(es, url, onData, onEnd) {
  var xhr = new window.XMLHttpRequest(), id = es._p.id, events = "onload" in xhr, over = false;

  function end(status) {
    if (!over) {
      over = true;
      /* IE's XHR reports 204 No Content as 1223. */
      onEnd(status == 1223 ? 204 : status, xhr);
    }
  }

  function change() {
    var state = xhr.readyState;
    if (over || state < 2) {
      return;
    }
    /* Status 0 is an error or an abort: the load events tell which. */
    if (onData && xhr.status) {
      onData(xhr);
    }
    if (state == 4 && !events) {
      end(xhr.status);
    }
  }

  xhr.open("GET", url, true);
  if (es.withCredentials && "withCredentials" in xhr) {
    xhr.withCredentials = true;
  }
  if (!es._cross) {
    xhr.setRequestHeader("Cache-Control", "no-cache");
    try {
      if (id) {
        xhr.setRequestHeader("Last-Event-ID", unescape(encodeURIComponent(id)));
      }
    } catch (e) {
      /* A lone surrogate or a line break (a long-poll answer can carry them): the query string has it. */
    }
  }
  xhr.onreadystatechange = change;
  if (events) {
    xhr.onprogress = change;
    xhr.onload = function () {
      end(xhr.status);
    };
    xhr.onerror = function () {
      end(0);
    };
    xhr.onabort = function () {
      end(-1);
    };
  }
  if (onData) {
    xhr.setRequestHeader("Accept", "text/event-stream");
    /* An event stream is always UTF-8, whatever charset its Content-Type names. */
    if (xhr.overrideMimeType) {
      xhr.overrideMimeType("text/plain; charset=utf-8");
    }
  }
  xhr.send(null);
  return function () {
    over = true;
    xhr.abort();
  };
}

/* A real Event (open, error) or MessageEvent (init: data, origin, lastEventId) where the browser can
   make one, by constructor or else by document.createEvent (IE9-11); a plain object in IE8. */
function makeEvent(type, init) {
  var event;
  try {
    event = init ? new window.MessageEvent(type, init) : new window.Event(type);
  } catch (e) {
    try {
      event = window.document.createEvent(init ? "MessageEvent" : "Event");
      if (init) {
        event.initMessageEvent(type, false, false, init.data, init.origin, init.lastEventId, null);
      } else {
        event.initEvent(type, false, false);
      }
    } catch (e2) {
      event = init || {};
      event.type = type;
    }
  }
  return event;
}

/* The exception a browser's EventSource throws for a URL it cannot parse. */
function syntaxError(url) {
  var message = "Invalid URL: " + url;
  try {
    return new window.DOMException(message, "SyntaxError");
  } catch (e) {
    return new SyntaxError(message);
  }
}

/* Sets a property that a real Event only has as a read-only getter (target); an assignment where
   defineProperty cannot (plain objects in IE8, which has it for DOM objects only). */
function setProp(object, name, value) {
  try {
    window.Object.defineProperty(object, name, {value: value, configurable: true});
  } catch (e) {
    object[name] = value;
  }
}

function isEventStream(contentType) {
  return /^text\/event-stream\s*(;|$)/i.test(contentType || "");
}

/* JSON.parse where the browser has it (IE8 has it in standards mode only). Elsewhere the text is
   evaluated only if, once every JSON literal is taken out, nothing but JSON punctuation is left:
   with no names, parentheses or operators such text cannot run code. */
function parseJson(text) {
  var json = window.JSON;
  if (json) {
    return json.parse(text);
  }
  if (/^[\s\[\]{},:0]*$/.test(text.replace(/"(?:[^"\\\u0000-\u001f\u2028\u2029]|\\["\\\/bfnrt]|\\u[\da-fA-F]{4})*"|-?\d+(?:\.\d+)?(?:[eE][+\-]?\d+)?|true|false|null/g, "0"))) {
    return new Function("return(" + text + ")")();
  }
  throw new Error("bad JSON");
}
