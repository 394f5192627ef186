/* The EventSource facade: the standard interface, transport choice, reconnection and backoff.
   Exported as SSEGateway.EventSource, and as window.EventSource where the browser has none. */

var TRANSPORTS = {
    "xhr-stream": xhrStream,
    "xdr-stream": xdrStream,
    "xhr-poll": xhrPoll,
    "jsonp-poll": jsonpPoll
  },
  NS = window.SSEGateway || {},
  BUFFERED = "SSEGateway buffered ";

/* "auto": XHR streaming where XHR has CORS (IE10+, all others); on IE8/9, long-poll XHR on the
   page's origin, XDomainRequest streaming across origins (it needs the page's scheme and cannot
   send cookies); JSONP long-poll where none of these works. Streaming found buffered on the way
   to this origin earlier in the session gives way to long-polling at once. */
function pickTransport(es, name) {
  var X = window.XMLHttpRequest, scheme = window.location.protocol, t = TRANSPORTS[name] && name;
  es._auto = !t;
  t = t || (
    X && "withCredentials" in new X() ? "xhr-stream" :
      !es._cross ? (X && window.JSON ? "xhr-poll" : "jsonp-poll") :
        window.XDomainRequest && !es.withCredentials &&
          es._origin.slice(0, scheme.length) == scheme ? "xdr-stream" : "jsonp-poll"
  );
  try {
    if (window.sessionStorage[BUFFERED + es._origin]) {
      t = downgrade(t);
    }
  } catch (e) {
    /* no session storage: nothing remembered */
  }
  return t;
}

/* The long-poll that replaces a stream transport. */
function downgrade(t) {
  return t == "xdr-stream" ? "jsonp-poll" : t == "xhr-stream" ? "xhr-poll" : t;
}

/* Calls one listener; an exception is reported asynchronously, as a browser would, and the
   remaining listeners still run. */
function invoke(target, listener, event) {
  try {
    if (typeof listener == "function") {
      listener.call(target, event);
    } else {
      listener.handleEvent(event);
    }
  } catch (e) {
    setTimeout(function () {
      throw e;
    }, 0);
  }
}

/* options: withCredentials, transport ("auto", "xhr-stream", "xdr-stream", "xhr-poll",
   "jsonp-poll"), heartbeatTimeout (ms without a byte before reconnecting, default 45000),
   lastEventIdParam (default "lastEventId"), pollUrl (default: the URL with its "/events"
   path segment turned into "/poll"), shared (one connection for all the origin's pages that
   open this URL with shared: true; see shared.js), token (a function that obtains a token for
   private channels: called with a function, it passes a token to it, or nothing if it has
   none, which fails this attempt). */
function EventSource(url, options) {
  var me = this, a = window.document.createElement("a"), URL = window.URL;
  options = options || {};
  a.href = url;
  me.url = a.href;
  /* WHATWG: a URL the URL parser rejects throws a SyntaxError. (An <a> returns such a URL as
     given; where URL cannot be constructed, as in IE, only what <a> resolves is checked.) */
  if (typeof URL == "function") {
    try {
      new URL(me.url);
    } catch (e) {
      throw syntaxError(url);
    }
  }
  me.withCredentials = !!options.withCredentials;
  me.readyState = CONNECTING;
  me._origin = originOf(me.url);
  me._cross = me._origin != originOf(window.location.href);
  me._idParam = options.lastEventIdParam || "lastEventId";
  me._heartbeat = +options.heartbeatTimeout || 45000;
  me._getToken = options.token;
  me._stale = 1;
  me._pollBase = options.pollUrl || pollUrlOf(me.url);
  me._listeners = {};
  me._retry = 3000;
  me._failures = 0;
  me._p = new Parser(function (type, data, id) {
    me._event(type, data, id);
  }, function (ms) {
    me._retry = ms;
  });
  /* The name of the transport in use (public: pages may show it). Any scheme but http(s) has
     none: the first attempt fails the connection, as a browser's fetch of it would. */
  me.transport = /^https?:/i.test(me.url) && pickTransport(me, options.transport);
  /* Connect in a later task, so that listeners added right after construction see "open";
     or share another page's connection, where the browser can. */
  if (!(options.shared && share(me))) {
    me._wait(0);
  }
}

EventSource.CONNECTING = CONNECTING;
EventSource.OPEN = OPEN;
EventSource.CLOSED = CLOSED;

EventSource.prototype = {
  constructor: EventSource,
  CONNECTING: CONNECTING,
  OPEN: OPEN,
  CLOSED: CLOSED,
  onopen: null,
  onmessage: null,
  onerror: null,

  close: function () {
    this._stop();
    this.readyState = CLOSED;
    this._unshare();
  },

  addEventListener: function (type, listener) {
    var list = this._listeners["$" + type] || [], i;
    for (i = 0; i < list.length; i++) {
      if (list[i].fn == listener) {
        return;
      }
    }
    if (listener) {
      /* A new array: a dispatch under way keeps walking the one it started with. */
      this._listeners["$" + type] = list.concat([{fn: listener}]);
    }
  },

  removeEventListener: function (type, listener) {
    var list = this._listeners["$" + type] || [], keep = [], i;
    for (i = 0; i < list.length; i++) {
      if (list[i].fn == listener) {
        /* A listener removed during a dispatch is not called by it. */
        list[i].fn = null;
      } else {
        keep.push(list[i]);
      }
    }
    this._listeners["$" + type] = keep;
  },

  dispatchEvent: function (event) {
    var me = this, type = event.type, list = me._listeners["$" + type] || [],
      handler = /^(open|message|error)$/.test(type) && me["on" + type], i;
    setProp(event, "target", me);
    setProp(event, "currentTarget", me);
    if (typeof handler == "function") {
      invoke(me, handler, event);
    }
    for (i = 0; i < list.length; i++) {
      if (list[i].fn) {
        invoke(me, list[i].fn, event);
      }
    }
    return true;
  },

  /* Dispatches an event; a shared connection's leader posts it to the other pages. */
  _fire: function (type, init) {
    this.dispatchEvent(makeEvent(type, init));
    if (this._post) {
      this._post(type, init);
    }
  },

  _unshare: noop,

  _streamUrl: function () {
    return withQuery(this.url, ["transport", "stream", this._idParam, this._p.id, "token",
      this._token]);
  },

  /* The first poll of a connection asks for an answer at once (timeout=0), so "open" comes
     without waiting out a long-poll. The next ones hold for the gateway's default time (25 s),
     or less when the heartbeat timeout would end a quiet poll before that. */
  _pollUrl: function (kv) {
    var beat = this._heartbeat, hold = "";
    if (this.readyState == CONNECTING) {
      hold = "0";
    } else if (beat < 30000) {
      hold = String((beat >= 10000 ? beat - 5000 : beat / 2) / 1000);
    }
    return withQuery(this._pollBase, [this._idParam, this._p.id, "timeout", hold, "token",
      this._token].concat(kv));
  },

  /* A token function is asked before the first request, after a failure and after the
     gateway-auth-expired event; a rotation and the next poll reuse the token. */
  _go: function () {
    var me = this, get = me._getToken, over;
    function done(token) {
      if (!over) {
        over = 1;
        if (token) {
          me._token = token;
          me._uses = 0;
          me._go();
        } else {
          me._end(0);
        }
      }
    }
    me._stop();
    if (get && me._stale) {
      me._stale = 0;
      me._abort = function () {
        over = 1;
      };
      return get(done);
    }
    me._uses++;
    me._p.reset();
    me._seen = 0;
    me._alive();
    try {
      me._abort = TRANSPORTS[me.transport](me);
    } catch (e) {
      /* No request can be made: a forced transport this browser lacks, a URL it refuses, a
         scheme that is not http(s) (no transport). */
      me._end(-1);
    }
  },

  /* One timer serves both waits, which never overlap: before a request, for the next one to go
     out (_wait); during a request, for its next byte (_alive). */
  _wait: function (ms) {
    var me = this;
    me._timer = setTimeout(function () {
      me._go();
    }, ms);
  },

  _stop: function () {
    var abort = this._abort;
    this._abort = null;
    clearTimeout(this._timer);
    if (abort) {
      abort();
    }
  },

  /* The response is good: announce the connection (once; a rotation or the next poll is silent). */
  _open: function () {
    this._failures = 0;
    if (this.readyState == CONNECTING) {
      this.readyState = OPEN;
      this._fire("open");
    }
  },

  /* (Re)starts the heartbeat timer: no byte for that long ends the request as a network error.
     An automatic stream that has shown no byte yet gets 5 s: a proxy that buffers holds back its
     opening comment (and with it, its first events until more come). Then the connection goes
     on by long-polling from the last event ID, silently, and the session remembers it. */
  _alive: function () {
    var me = this, poll = me._auto && !me._seen && downgrade(me.transport);
    clearTimeout(me._timer);
    me._timer = setTimeout(function () {
      if (poll && poll != me.transport) {
        me.transport = poll;
        try {
          window.sessionStorage[BUFFERED + me._origin] = 1;
        } catch (e) {
          /* remembered for this source only */
        }
        me._go();
      } else {
        me._end(0);
      }
    }, poll && poll != me.transport ? 5000 : me._heartbeat);
  },

  /* A stream's text so far: the parser gets the part it has not seen yet. */
  _chunk: function (text) {
    var seen = this._seen;
    if (text.length > seen) {
      this._seen = text.length;
      this._alive();
      this._p.feed(text.slice(seen));
    }
  },

  /* The gateway's answers about private channels. The expiry that ends a stream: reconnect at
     once, with a new token from the token function. A refusal (also a long-poll's): the
     connection fails for good, unless the token was reused (by a rotation, or a poll after
     the last): it may have expired in between, so a new one is asked for first. */
  _event: function (type, data, id) {
    var me = this;
    if (me.readyState != CLOSED) {
      if (type == "gateway-refused") {
        if (me._getToken && me._uses > 1) {
          me._stale = 1;
          me._stop();
          me._wait(0);
        } else {
          me._end(-1);
        }
        return;
      }
      if (type == "gateway-auth-expired") {
        me._stale = me._p.rotate = 1;
      }
      me._fire(type, {data: data, lastEventId: id, origin: me._origin});
    }
  },

  /* One long-poll answer: {"events": [{"id", "event", "data"}...], "lastEventId", "retry"},
     as JSON text (XHR) or an object (JSONP). */
  _poll: function (response) {
    var me = this, p = me._p, events, event, i;
    try {
      if (typeof response == "string") {
        response = parseJson(response);
      }
      events = response.events || [];
    } catch (e) {
      return me._end(0);
    }
    if (response.error) {
      return me._event("gateway-refused");
    }
    if (typeof response.retry == "number") {
      me._retry = response.retry;
    }
    me._open();
    for (i = 0; i < events.length; i++) {
      event = events[i];
      if (event.id != null) {
        p.id = "" + event.id;
      }
      me._event(event.event || "message", "" + event.data, p.id);
    }
    if (response.lastEventId != null) {
      p.id = "" + response.lastEventId;
    }
    me._end(200, true);
  },

  /* The request is over. status: the HTTP status, 0 for a network error or a heartbeat timeout,
     -1 for what fails the connection whatever the status: a response that is no event stream,
     an abort that the polyfill did not make, a request the browser cannot make. again: the server asked for the next request at
     once (a ": rotate" comment, or a long-poll answer). */
  _end: function (status, again) {
    var me = this, retry = Math.max(me._retry, 500), failures = me._failures, delay;
    me._stop();
    if (me.readyState == CLOSED) {
      return;
    }
    if (status == 200 && again) {
      return me._wait(0);
    }
    if (status == 200 || !status) {
      /* WHATWG "reestablish the connection" after the retry time (at least 500 ms, even after
         "retry: 0"). Each failure in a row after that doubles it, up to 30 s unless the retry
         time is longer, plus up to half again of random jitter, so that a gateway that stays
         down is not stormed; the next good response resets the count. */
      me.readyState = CONNECTING;
      me._stale = 1;
      me._fire("error");
      if (me.readyState == CONNECTING) {
        me._failures++;
        delay = Math.min(retry * Math.pow(2, failures), Math.max(retry, 30000));
        me._wait(failures ? delay * (1 + Math.random() / 2) : delay);
      }
    } else {
      /* WHATWG "fail the connection": a stream's status other than 200, a wrong Content-Type, an
         abort that the polyfill did not make, a URL it cannot fetch. */
      me.readyState = CLOSED;
      me._fire("error");
      me._unshare();
    }
  }
};

NS.EventSource = EventSource;
window.SSEGateway = NS;
if (!window.EventSource) {
  window.EventSource = EventSource;
}
