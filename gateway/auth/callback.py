"""`--auth-url`: asking the application whether a client may subscribe to private channels.

The gateway POSTs `{"channels": [...], "address": ..., "origin": ..., "token": ...}` with the
client's `Cookie` and `Authorization` headers. A 2xx allows, and its JSON body may narrow the
channels and give a lifetime (`{"channels": ["user.42"], "ttl": 300}`); 401 refuses as
"unauthorized", any other status below 500 as "forbidden". A 5xx, a timeout, a refused
connection or an answer that is not understood is the application's trouble, not the
client's: `CallbackUnavailable`, and the client is asked to come back later.

Answers are cached per (credentials, origin, channels) for `cache_seconds` (less when their
ttl is shorter), and a question already being asked is not asked twice: the requests wait for
the one answer. Only the request's own greenlet waits; the call is bounded by `timeout`, and
at most `concurrency` calls are in flight, the others waiting their turn within their timeout.
"""

import hashlib
import json
import logging
import time
from typing import Dict, NamedTuple, Optional, Sequence, Tuple

import gevent
import gevent.event
import urllib3

log = logging.getLogger(__name__)

MAX_ANSWER = 64 * 1024  # bytes of an answer's body
MAX_ENTRIES = 10_000  # cached answers; the oldest go first
LOG_EVERY = 10.0  # seconds between two warnings about the callback


class CallbackUnavailable(Exception):
    """The application did not answer in time, or not in a way the gateway understands."""


class Answer(NamedTuple):
    status: int  # 200 (allowed), 401 or 403
    channels: Optional[Tuple[str, ...]]  # the names or patterns allowed; None: all asked
    expires: Optional[float]  # seconds since the epoch; None: no limit from the application


class AuthCallback:
    def __init__(self, url: str, timeout: float, cache_seconds: float,
                 concurrency: int = 64) -> None:
        self.url = url
        self._timeout = timeout
        self._cache_seconds = cache_seconds
        self._cache: Dict[bytes, Tuple[float, Answer]] = {}
        self._asking: Dict[bytes, gevent.event.AsyncResult] = {}
        self._pool = urllib3.PoolManager(
            maxsize=concurrency, block=True, retries=False,
            timeout=urllib3.Timeout(connect=timeout, read=timeout))
        self._last_warning = -LOG_EVERY
        self._unlogged = 0
        self.calls = 0  # requests made to the application

    def ask(self, channels: Sequence[str], address: str, origin: Optional[str],
            cookie: Optional[str], authorization: Optional[str], token: Optional[str]) -> Answer:
        """The application's answer for these channels and credentials (cached, or asked)."""
        key = _key(channels, origin, cookie, authorization, token)
        cached = self._cache.get(key)
        now = time.monotonic()
        if cached is not None:
            if cached[0] > now:
                return cached[1]
            del self._cache[key]
        asking = self._asking.get(key)
        if asking is not None:
            return asking.get()  # raises what the call raised
        asking = self._asking[key] = gevent.event.AsyncResult()
        try:
            answer = self._call(channels, address, origin, cookie, authorization, token)
        except CallbackUnavailable as error:
            asking.set_exception(error)
            raise
        finally:
            del self._asking[key]
        self._remember(key, answer)
        asking.set(answer)
        return answer

    def _remember(self, key: bytes, answer: Answer) -> None:
        lifetime = self._cache_seconds
        if answer.expires is not None:
            lifetime = min(lifetime, answer.expires - time.time())
        if lifetime <= 0:
            return
        while len(self._cache) >= MAX_ENTRIES:
            del self._cache[next(iter(self._cache))]
        self._cache[key] = (time.monotonic() + lifetime, answer)

    def _call(self, channels: Sequence[str], address: str, origin: Optional[str],
              cookie: Optional[str], authorization: Optional[str],
              token: Optional[str]) -> Answer:
        question = {"channels": list(channels), "address": address, "origin": origin}
        if token is not None:
            question["token"] = token
        headers = {"Content-Type": "application/json", "User-Agent": "sse-gateway"}
        if cookie is not None:
            headers["Cookie"] = cookie
        if authorization is not None:
            headers["Authorization"] = authorization
        self.calls += 1
        response = None
        reusable = False
        # The timeout bounds the whole call: waiting for a connection, connecting, the answer.
        with gevent.Timeout(self._timeout, CallbackUnavailable(
                f"the auth callback did not answer within {self._timeout:g} s")):
            try:
                response = self._pool.request(
                    "POST", self.url, body=json.dumps(question).encode("utf-8"),
                    headers=headers, redirect=False, preload_content=False)
                body = response.read(MAX_ANSWER + 1)
                reusable = len(body) <= MAX_ANSWER
            except CallbackUnavailable as error:
                self._warn(str(error))
                raise
            except (urllib3.exceptions.HTTPError, OSError) as error:
                self._warn(f"the auth callback failed: {type(error).__name__}")
                raise CallbackUnavailable("the auth callback failed") from None
            finally:
                if response is not None:
                    if not reusable:  # not read to its end: the connection cannot be reused
                        response.close()
                    response.release_conn()
        try:
            return _answer(response.status, body)
        except ValueError as error:
            self._warn(f"the auth callback's answer was not understood: {error}")
            raise CallbackUnavailable("the auth callback's answer was not understood") from None

    def _warn(self, what: str) -> None:
        # A down application fails every client's call: one warning per LOG_EVERY seconds.
        now = time.monotonic()
        if now - self._last_warning < LOG_EVERY:
            self._unlogged += 1
            return
        more = f" (and {self._unlogged} more since the last warning)" if self._unlogged else ""
        log.warning("%s%s; subscribers to private channels are asked to come back later",
                    what, more)
        self._last_warning = now
        self._unlogged = 0


def _key(channels: Sequence[str], origin: Optional[str], cookie: Optional[str],
         authorization: Optional[str], token: Optional[str]) -> bytes:
    # A digest, so the cache holds no credentials; NUL cannot occur in a header value.
    parts = [origin, cookie, authorization, token, *channels]
    return hashlib.sha256("\0".join(p if p is not None else "\1" for p in parts)
                          .encode("utf-8", "surrogateescape")).digest()


def _answer(status: int, body: bytes) -> Answer:
    """An Answer from the application's response; ValueError for one not understood."""
    if status >= 500:
        raise ValueError(f"status {status}")
    if not 200 <= status < 300:
        return Answer(401 if status == 401 else 403, None, None)
    if len(body) > MAX_ANSWER:
        raise ValueError(f"a body over {MAX_ANSWER} bytes")
    if not body.strip():
        return Answer(200, None, None)
    try:
        value = json.loads(body)
    except ValueError:
        raise ValueError("the body is not JSON") from None
    if not isinstance(value, dict):
        raise ValueError("the body is not a JSON object")
    allowed = value.get("channels")
    if allowed is not None and (not isinstance(allowed, list)
                                or not all(isinstance(c, str) for c in allowed)):
        raise ValueError("'channels' is not a list of channel names")
    ttl = value.get("ttl")
    if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float))
                            or not 0 < ttl < 10**9):
        raise ValueError("'ttl' is not a number of seconds above 0")
    return Answer(200, tuple(allowed) if allowed is not None else None,
                  time.time() + ttl if ttl is not None else None)
