/* One connection shared by the pages of an origin that open the same URL ({shared: true}).
   The leader holds the connection and posts what it dispatches; the other pages dispatch what
   it posts. Messages go over a BroadcastChannel, else through localStorage "storage" events.
   The leader is the page holding a Web Lock where the browser has them (the others queue for
   it), else the page holding a lease in localStorage. It posts every second, and goodbye when
   it closes or its page is hidden for good; silent for 3 s (frozen, crashed), it is replaced:
   its lock stolen or its lease taken. The new leader resumes from the last event ID it saw. Each takeover raises the term: a page follows the highest term it heard (a
   tie goes to the higher page id), so a frozen leader that wakes up is ignored and steps down;
   an event ID already dispatched is not dispatched again. */

function share(es) {
  var json = window.JSON, locks = window.navigator.locks, Channel = window.BroadcastChannel,
    key = "SSEGateway " + es.url, tab = uid(), term = 0, leader = "", lead = false,
    heard = +new Date(), ticked = heard, recent = [], release = noop, timer, ls, bc;
  try {
    ls = window.localStorage;
  } catch (e) {
    /* Storage refused (a sandbox, a privacy mode): a BroadcastChannel can still do. */
  }
  if (!json || !(Channel || ls)) {
    return false;
  }

  /* True the first time an event ID is seen (among the last hundred). */
  function fresh(id) {
    for (var i = 0; i < recent.length; i++) {
      if (recent[i] == id) {
        return false;
      }
    }
    recent = [id].concat(recent.slice(0, 99));
    return true;
  }

  function post(message) {
    message.t = term;
    message.f = tab;
    message.s = es.readyState;
    message.i = es._p.id;
    message.a = +new Date(); /* the lease's time; and no two storage writes are the same */
    message = json.stringify(message);
    if (bc) {
      bc.postMessage(message);
    }
    if (!bc || !locks && ls) {
      ls.setItem(key, message);
    }
  }

  function take() {
    term++;
    leader = tab;
    lead = true;
    es._post = function (type, init) {
      if (init) {
        fresh(init.lastEventId);
        post({e: type, d: init.data});
      } else {
        post({e: type});
      }
    };
    post({});
    es._go();
  }

  function stepDown() {
    if (lead) {
      lead = false;
      es._post = null;
      es._stop();
      release();
    }
  }

  function elect(options) {
    heard = +new Date();
    locks.request(key, options, function () {
      if (!es._unshare.done) {
        take();
        return new window.Promise(function (resolve) {
          release = resolve;
        });
      }
    }).then(null, stepDown); /* stolen */
  }

  function got(text) {
    var m;
    try {
      m = json.parse(text);
    } catch (e) {
      return;
    }
    if (!m || es._unshare.done || m.f == tab || m.t < term || m.t == term && m.f < leader) {
      return;
    }
    stepDown();
    term = m.t;
    leader = m.f;
    /* Goodbye: without locks to queue for, the lease is taken after a random 0 to 2 s. */
    heard = +new Date() - (m.b && !locks ? 3000 - 2000 * Math.random() : 0);
    es._p.id = m.i;
    if (m.e && "d" in m) {
      if (!m.i || fresh(m.i)) {
        es._fire(m.e, {data: m.d, lastEventId: m.i, origin: es._origin});
      }
    } else if (!m.b && (m.s != es.readyState || m.e == "error")) {
      /* The leader's state: "open" once; "error" at each failure, as the leader saw it. */
      es.readyState = m.s;
      es._fire(m.s == OPEN ? "open" : "error");
    }
    if (es.readyState == CLOSED) {
      es._unshare();
    }
  }

  function tick() {
    var now = +new Date();
    timer = setTimeout(tick, 1000);
    /* This page's own timer came late (a throttled hidden tab, a sleeping machine): the
       leader's silence proves nothing yet. */
    if (now - ticked > 2000) {
      heard = now;
    }
    ticked = now;
    if (lead) {
      post({});
    } else if (now - heard > 3000) {
      if (locks) {
        elect({steal: true});
      } else {
        take();
      }
    }
  }

  function bye() {
    if (lead) {
      post({b: 1});
      stepDown();
    }
  }

  es._unshare = function () {
    var me = es._unshare;
    if (!me.done) {
      me.done = true;
      clearTimeout(timer);
      bye();
      if (bc) {
        bc.close();
      }
    }
  };

  if (window.addEventListener) {
    /* The page goes (closed, or into the back-forward cache): hand over before its requests
       are cut, which would look like a failure. It stays a follower if it comes back. */
    window.addEventListener("pagehide", bye, false);
  }
  if (Channel) {
    bc = new Channel(key);
    bc.onmessage = function (e) {
      got(e.data);
    };
  } else if (window.addEventListener) {
    window.addEventListener("storage", function (e) {
      if (e.key == key) {
        got(e.newValue);
      }
    }, false);
  } else {
    /* IE8: the event, on document, names no key; it fires in the page that wrote, too. */
    window.document.attachEvent("onstorage", function () {
      got(ls.getItem(key));
    });
  }
  setTimeout(function () {
    var lease;
    if (locks) {
      elect({});
    } else {
      try {
        lease = json.parse(ls.getItem(key));
      } catch (e) {
        /* none yet */
      }
      if (!lease || lease.b || +new Date() - lease.a > 3000) {
        take();
      }
    }
    tick();
  }, 0);
  return true;
}
