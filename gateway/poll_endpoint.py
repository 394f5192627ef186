"""GET /poll and /poll/<channel>: long-polling, as JSON (XHR) or JSONP (script tags), served as
a bare WSGI application.

A long-poll client makes a request for every answer, so a request here costs only what it
needs, as on /events: no routing table, request or response objects, or contexts. What a
request asks for is read in one place (`read_request`), then authorized in one
(`Authorizer.check_subscribe`), before anything is attached.

A poll with no expiry, whose request the server lets answer from the event loop
(`http.seam.Direct`), is held there with no greenlet (`transports.poll.DirectAnswer`) and
answered with the bytes its greenlet would have sent: the whole response to the same events is
made once for every poll it answers with the same callback, Origin and Date. The polls that
follow on its connection are served in the event loop too (`serve_now`), as long as they need
nothing that could wait: public channels, history in memory.

While the broker (or the application that authorizes) is down, a poll gets a 200 answer with
no events, its own cursor and a retry hint (`transports.poll.unavailable`): never an error
status.
"""

import logging
from functools import partial
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import urlsplit

from . import endpoint, subscribe
from .auth import answers
from .auth.authorizer import PUBLIC, Authorizer, AuthUnavailable, Grant, Refused
from .brokers import BrokerUnavailable
from .config import Config
from .cors import CorsPolicy
from .forwarded import Network, environ_client
from .http import h1
from .http.seam import DIRECT, Direct
from .hub import Hub
from .metrics import Metrics
from .subscribe import UNCACHEABLE, ApiError
from .transports import CALLBACK, PollQueue, Session, encode_json, encode_jsonp
from .transports.poll import Answer, DirectAnswer, Taken, collect, unavailable

log = logging.getLogger(__name__)

PREFIX = "/poll"
ALLOW = "GET, HEAD, OPTIONS"
JSON = [("Content-Type", "application/json; charset=utf-8")]
JSONP = [("Content-Type", "application/javascript; charset=utf-8"),
         ("X-Content-Type-Options", "nosniff")]
_NOT_ALLOWED = ApiError(405, "method not allowed", "The method is not allowed for the requested URL.")
METRICS_ENDPOINT = "poll_events"  # what /metrics calls this endpoint's refusals
ORIGINS_KEPT = 256  # Origin headers whose response headers are kept made
# Responses of polls answered from the event loop kept made (by events, cursor, callback,
# Origin and Date), and their most bytes.
VARIANTS_KEPT = 256
RESPONSE_BYTES_KEPT = 4 << 20


class PollRequest(NamedTuple):
    """What a poll asks for, checked: its channels, JSONP callback (None for JSON), hold time
    in seconds, largest batch, cursor (None for a first poll), and its query's arguments."""

    channels: List[str]
    callback: Optional[str]
    hold: float
    batch: int
    cursor: Optional[str]
    args: subscribe.Query


def read_request(environ: dict, config: Config) -> PollRequest:
    """The poll a request asks for; ApiError (400, or 403 for JSONP from an unlisted page)."""
    args = subscribe.Query(environ.get("QUERY_STRING", ""))
    channels = subscribe.channels(_path_channel(environ["PATH_INFO"]), args, config.max_channels)
    callback = args.get("callback")
    if callback is not None and not CALLBACK.fullmatch(callback):
        raise ApiError(400, "invalid callback",
                       f"callback must be a plain identifier, ^{CALLBACK.pattern}$")
    if callback is not None and config.cors_origins:
        check_jsonp_referer(environ.get("HTTP_REFERER"), config.cors_origins)
    hold = subscribe.number_arg(args, "timeout", config.poll_timeout, config.poll_timeout)
    batch = int(subscribe.number_arg(args, "batch", config.max_batch, config.max_batch,
                                     integer=True))
    cursor = subscribe.last_event_id(environ.get("HTTP_LAST_EVENT_ID"), args)
    return PollRequest(channels, callback, hold, batch, cursor, args)


def _jsonp_callback(environ: dict) -> Optional[str]:
    """The request's JSONP callback name, if it names a valid one."""
    callback = subscribe.Query(environ.get("QUERY_STRING", "")).get("callback")
    return callback if callback is not None and CALLBACK.fullmatch(callback) else None


def check_jsonp_referer(referer: Optional[str], origins: Sequence[str]) -> None:
    """A script tag ignores CORS and carries cookies: with an allowlist, JSONP must not let
    other sites read what only the listed origins may. Script requests name their page in
    Referer."""
    page = urlsplit(referer or "")
    origin = f"{page.scheme}://{page.netloc}" if page.scheme and page.netloc else None
    if origin not in origins:
        raise ApiError(403, "forbidden", "JSONP is allowed only from the --cors-origin origins, "
                       "named by the request's Referer")


class PollEndpoint:
    def __init__(self, config: Config, hub: Hub, cors: CorsPolicy, auth: Authorizer,
                 metrics: Metrics, proxies: Sequence[Network]) -> None:
        self._config = config
        self._hub = hub
        self._cors = cors
        self._auth = auth
        self._metrics = metrics
        self._proxies = proxies
        self._uncacheable = list(UNCACHEABLE.items())
        # Per Origin header: a poll's CORS and cache headers (the same for every answer).
        self._poll_headers: Dict[Optional[str], endpoint.Headers] = {}
        self._responses = _DirectResponses(config.retry)

    @staticmethod
    def handles(path: str) -> bool:
        """`/poll`, or `/poll/` and one path segment."""
        if path == PREFIX:
            return True
        start = len(PREFIX) + 1
        return path.startswith(PREFIX + "/") and len(path) > start and "/" not in path[start:]

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        if method not in ("GET", "HEAD", "OPTIONS"):
            return endpoint.error(start_response, _NOT_ALLOWED, self._uncacheable, ALLOW)
        origin = environ.get("HTTP_ORIGIN")
        if method == "OPTIONS":
            headers = endpoint.cors_headers(self._cors, method, origin) + self._uncacheable
            start_response("200 OK", headers + [("Allow", ALLOW), ("Content-Length", "0")])
            return []
        headers = self._headers_for(origin)
        try:
            request = read_request(environ, self._config)
            status, kind, body = self._answer(environ, request, origin, headers)
            if kind is None:
                return body  # sent through the request's Direct
        except ApiError as error:
            self._count_refusal(error.status)
            callback = _jsonp_callback(environ)
            if callback is not None and 400 <= error.status < 500:
                # A script tag sees no status, only that it failed: it would retry forever.
                # The error, passed to the callback, ends the connection for good instead.
                body = encode_jsonp(callback, {"error": error.error, "detail": error.detail,
                                               "status": error.status})
                start_response("200 OK", [*JSONP, ("Content-Length", str(len(body))),
                                          *headers])
                return [body]
            return endpoint.error(start_response, error, headers, ALLOW)
        except Exception:
            log.exception("unhandled error on %s %s", method, environ.get("PATH_INFO"))
            error = ApiError(500, "internal server error", "the gateway failed; see its log")
            return endpoint.error(start_response, error, headers, ALLOW)
        self._count_refusal(status)
        start_response(endpoint.status_line(status),
                       [*kind, ("Content-Length", str(len(body))), *headers])
        return [body]

    def _headers_for(self, origin: Optional[str]) -> endpoint.Headers:
        """The CORS and cache headers of a GET or HEAD from `origin` (not to be changed)."""
        headers = self._poll_headers.get(origin)
        if headers is None:
            if len(self._poll_headers) >= ORIGINS_KEPT:  # any client can send any Origin
                self._poll_headers.clear()
            headers = self._poll_headers[origin] = (
                endpoint.cors_headers(self._cors, "GET", origin) + self._uncacheable)
        return headers

    def _answer(self, environ: dict, request: PollRequest, origin: Optional[str],
                headers: endpoint.Headers) -> Tuple[int, Optional[endpoint.Headers], Any]:
        """The answer's status, Content-Type header and body; no header and a `Sent` or
        `HELD` body for an answer sent, or to be sent, from the event loop."""
        config = self._config
        self._log_poll(environ, request)
        with self._metrics.polling(jsonp=request.callback is not None):
            try:
                grant = self._auth.check_subscribe(request.channels, environ, request.args)
                # A poll answers with at most `batch` events: it reads no more history.
                session, backlog = subscribe.open_session(
                    self._hub, PollQueue(request.channels, config.max_pending), request.cursor,
                    request.batch)
            except Refused as refused:
                status, content_type, body = answers.poll_refusal(refused, request.callback)
                return status, [("Content-Type", content_type)], body
            except (BrokerUnavailable, AuthUnavailable):
                grant = PUBLIC
                answer = unavailable(request.cursor, request.hold,
                                     subscribe.outage_retry(config.retry))
            else:
                # The session is attached, and `collect` (or `DirectAnswer.start`) detaches it
                # whatever happens.
                hold = grant.hold(request.hold)
                direct = environ.get(DIRECT)
                if direct is not None and grant.expires is None and direct.usable():
                    direct.follow(self.serve_now)
                    return 200, None, self._direct_answer(direct, request, origin).start(
                        session, backlog, hold, request.batch)
                answer = collect(session, backlog, hold, request.batch, config.retry)
                # A hold cut at the expiry that ran out ended at the expiry, even when the
                # loop's timer fired a little before the wall clock reached it.
                if hold < request.hold and not answer.events:
                    return (200, *_encoded(answer, grant, request.callback, expired=True))
        return (200, *_encoded(answer, grant, request.callback))

    def serve_now(self, environ: dict) -> Any:
        """In the event loop, a poll that follows one answered there on its connection
        (`seam.Direct.follow`): answered or held, as `__call__` would; None to leave it to
        `__call__` (anything but a valid poll of public channels whose history is in memory)."""
        if not self.handles(environ["PATH_INFO"]):
            return None
        try:
            request = read_request(environ, self._config)
        except ApiError:
            return None
        if not self._auth.public(request.channels):
            return None
        session = Session(self._hub, PollQueue(request.channels, self._config.max_pending))
        backlog = session.open_now(request.cursor, request.batch)
        if backlog is None:
            return None
        try:
            self._log_poll(environ, request)
            until = None
            awaited = self._hub.own_on_the_way(request.channels) if backlog else None
            if awaited:
                # Publishes acknowledged here are on their way, missing from the backlog: the
                # answer waits for them, as they would be in a read of Redis.
                until = partial(self._hub.dispatched, awaited)
            direct = self._direct_answer(environ[DIRECT], request, environ.get("HTTP_ORIGIN"))
            return direct.start(session, backlog, request.hold, request.batch, until)
        except BaseException:
            session.close()
            raise

    def _direct_answer(self, direct: Direct, request: PollRequest,
                       origin: Optional[str]) -> DirectAnswer:
        """How the poll is answered from the event loop, counted open until it is."""
        counted = self._metrics.polling(jsonp=request.callback is not None).start()
        return DirectAnswer(direct, self._responses.maker(
            request.callback, origin, self._headers_for(origin)), counted.close)

    def _count_refusal(self, status: int) -> None:
        if status in (401, 403):
            self._metrics.refused_auth(METRICS_ENDPOINT, status)

    def _log_poll(self, environ: dict, request: PollRequest) -> None:
        if log.isEnabledFor(logging.DEBUG):
            client = environ_client(environ, self._proxies).address
            log.debug("%s polls %s", client, ",".join(request.channels))


class _DirectResponses:
    """The whole responses of polls answered from the event loop, as the greenlet's path would
    have sent them (`__call__`, and wsgi.py's framing): one per set of events, cursor, callback,
    Origin and Date, made by the first poll that needs it (a bounded cache: the polls answered
    with the same events are answered in the same turn of the loop)."""

    __slots__ = ("retry", "_made", "_bytes")

    def __init__(self, retry_ms: int) -> None:
        self.retry = retry_ms
        # key -> (the events, whose ids are in the key and must not be reused while it lives;
        # the status, the body's length, the response)
        self._made: Dict[tuple, Tuple[List[Taken], str, int, bytes]] = {}
        self._bytes = 0

    def maker(self, callback: Optional[str], origin: Optional[str],
              headers: endpoint.Headers) -> Callable[[List[Taken], str, str],
                                                     Tuple[str, int, bytes]]:
        """What makes a poll's response, given the events taken, the cursor after them and the
        Date: (status, body length, the response's bytes)."""
        return lambda events, cursor, date: self.response(events, cursor, date, callback,
                                                          origin, headers)

    def response(self, events: List[Taken], cursor: str, date: str, callback: Optional[str],
                 origin: Optional[str], headers: endpoint.Headers) -> Tuple[str, int, bytes]:
        key = (*[(id(message), event_cursor) for message, event_cursor in events],
               cursor, callback, origin, date)
        made = self._made.get(key)
        if made is None:
            answer = Answer(events, cursor, self.retry)
            kind, body = (JSON, answer.json()) if callback is None else (
                JSONP, answer.jsonp(callback))
            response = h1.response_head("200 OK", [*kind, ("Content-Length", str(len(body))),
                                                   *headers, ("Date", date)]) + body
            if len(self._made) >= VARIANTS_KEPT or self._bytes > RESPONSE_BYTES_KEPT:
                self._made, self._bytes = {}, 0
            made = self._made[key] = (events, "200 OK", len(body), response)
            self._bytes += len(response)
        return made[1:]


def _encoded(answer: Answer, grant: Grant, callback: Optional[str],
             expired: bool = False) -> Tuple[endpoint.Headers, bytes]:
    if expired or grant.expired():  # the expiry event goes last, in the body as a dict
        body = answers.end_poll(answer.to_dict(), grant)
        if callback is None:
            return JSON, encode_json(body)
        return JSONP, encode_jsonp(callback, body)
    if callback is None:
        return JSON, answer.json()
    return JSONP, answer.jsonp(callback)


def _path_channel(path: str) -> Optional[str]:
    if path == PREFIX:
        return None
    name = path[len(PREFIX) + 1:]
    # PEP 3333's PATH_INFO is bytes as latin-1; a channel name is read as UTF-8, as werkzeug does.
    return name if name.isascii() else name.encode("latin-1").decode("utf-8", "replace")
