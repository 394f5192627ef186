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

/* A GET XMLHttpRequest, opened. Same-origin requests carry Last-Event-ID as a header, as browsers
   do; cross-origin ones only in the query string, so that no CORS preflight is needed. */
function openXhr(es, url) {
  var xhr = new window.XMLHttpRequest(), id = es._p.id;
  xhr.open("GET", url, true);
  if (es.withCredentials && "withCredentials" in xhr) {
    xhr.withCredentials = true;
  }
  if (id && !es._cross) {
    xhr.setRequestHeader("Last-Event-ID", id);
  }
  return xhr;
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
