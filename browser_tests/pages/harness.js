/* The browser suite's page. Query: gateway=<gateway origin>, shims=<comma-separated names of
   scripts in this directory> (loaded before the polyfill). The test calls listen() and reads
   window.received, window.opens and window.errors with page.evaluate. */
(function (window, document) {
  var params = {}, pairs = window.location.search.slice(1).split("&"), shims, i, kv;
  for (i = 0; i < pairs.length; i++) {
    kv = pairs[i].split("=");
    if (kv[0]) {
      params[decodeURIComponent(kv[0])] = decodeURIComponent(kv[1] || "");
    }
  }
  shims = params.shims ? params.shims.split(",") : [];
  for (i = 0; i < shims.length; i++) {
    document.write('<script src="' + shims[i] + '.js"><\/script>');
  }
  document.write('<script src="' + params.gateway + '/static/eventsource.js"><\/script>');

  /* Every event delivered, in order: {type, data, lastEventId, origin, readyState}. */
  window.received = [];
  /* readyState seen by each open and each error listener call. */
  window.opens = [];
  window.errors = [];
  /* How often the polyfill asked for a token (options.tokens, below). */
  window.tokenCalls = 0;

  /* transport: "native" (the browser's own EventSource), "auto" (the polyfill choosing), or a
     polyfill transport name (forced). types: event types to listen for besides "message". */
  window.listen = function (url, transport, options, types) {
    var Source = transport == "native" ? window.EventSource : window.SSEGateway.EventSource,
      all = (types || []).concat(["gateway-reset"]), source, j;
    options = options || {};
    /* options.tokens, a list: the polyfill's token option hands them out in turn, a task later. */
    if (options.tokens) {
      var tokens = options.tokens;
      delete options.tokens;
      options.token = function (done) {
        window.tokenCalls++;
        setTimeout(function () {
          done(tokens.shift());
        }, 0);
      };
    }
    if (transport != "native" && transport != "auto") {
      options.transport = transport;
    }
    source = new Source(url, options);
    function record(e) {
      window.received.push({
        type: e.type, data: e.data, lastEventId: e.lastEventId, origin: e.origin,
        readyState: source.readyState
      });
    }
    source.onopen = function () {
      window.opens.push(source.readyState);
    };
    source.onerror = function () {
      window.errors.push(source.readyState);
    };
    source.onmessage = record;
    for (j = 0; j < all.length; j++) {
      source.addEventListener(all[j], record, false);
    }
    window.source = source;
    return true;
  };
}(window, document));
