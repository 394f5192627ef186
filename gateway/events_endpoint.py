"""GET /events: the event-stream endpoint, as a bare WSGI application.

Thousands of clients hold this endpoint open, and they all reconnect at once when a gateway
restarts, so a connection here costs only what it needs: no routing table, request or response
objects, or contexts; the query is parsed only when there is one.

While the broker is down, a subscriber gets a 200 stream that asks it to come back later and
ends (`_unavailable`): any other status would make an EventSource give up for good.
"""

import logging
from typing import Callable, Iterable, List, Optional, Tuple

from . import endpoint, subscribe, wire
from .auth import answers
from .auth.authorizer import Authorizer, AuthUnavailable, Refused
from .brokers import BrokerUnavailable
from .config import Config
from .cors import CorsPolicy
from .hub import Hub
from .metrics import Metrics
from .subscribe import ApiError
from .transports import EventStream, StreamOptions, StreamResponse
from .transports.stream import PADDING

log = logging.getLogger(__name__)

PREFIX = "/events"
ALLOW = "GET, OPTIONS"


class EventsEndpoint:
    def __init__(self, config: Config, hub: Hub, cors: CorsPolicy, auth: Authorizer,
                 metrics: Metrics) -> None:
        self._config = config
        self._hub = hub
        self._cors = cors
        self._auth = auth
        self._metrics = metrics
        self._base_headers = [*subscribe.UNCACHEABLE.items(), ("X-Accel-Buffering", "no")]
        self._options = StreamOptions(retry_ms=config.retry, heartbeat=config.heartbeat)
        self._padded_options = StreamOptions(
            retry_ms=config.retry, heartbeat=config.heartbeat, padded=True,
            rotate_bytes=config.rotate_bytes, rotate_seconds=config.rotate_seconds)
        # A rotated stream ends its response and then its connection.
        self._rotated_headers = [("Connection", "close")]

    @staticmethod
    def handles(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        headers = self._base_headers + endpoint.cors_headers(self._cors, method,
                                                             environ.get("HTTP_ORIGIN"))
        try:
            if method == "OPTIONS":
                start_response("200 OK", headers + [("Allow", ALLOW), ("Content-Length", "0")])
                return []
            if method != "GET":
                raise ApiError(405, "method not allowed", "subscribe with GET")
            return self._stream(environ, start_response, headers)
        except ApiError as error:
            return endpoint.error(start_response, error, headers, ALLOW)
        except BrokerUnavailable:
            return self._unavailable(environ, start_response, headers)
        except Refused as refused:
            self._metrics.refused_auth("events", refused.status)
            padded = subscribe.wants_padding(subscribe.Query(environ.get("QUERY_STRING", "")))
            return answers.respond_refusal(start_response, refused, padded, headers)
        except AuthUnavailable:
            return self._unavailable(environ, start_response, headers, "authorization unavailable")
        except Exception:
            log.exception("unhandled error on GET %s", environ.get("PATH_INFO"))
            error = ApiError(500, "internal server error", "the gateway failed; see its log")
            return endpoint.error(start_response, error, headers, ALLOW)

    def _stream(self, environ: dict, start_response: Callable,
                headers: List[Tuple[str, str]]) -> Iterable[bytes]:
        config = self._config
        path_channel = _path_channel(environ["PATH_INFO"])
        args = subscribe.Query(environ.get("QUERY_STRING", ""))
        names = subscribe.channels(path_channel, args, config.max_channels)
        padded = subscribe.wants_padding(args)
        cursor = subscribe.last_event_id(environ.get("HTTP_LAST_EVENT_ID"), args)
        grant = self._auth.check_subscribe(names, environ, args)
        stream = EventStream(names, config.max_pending,
                             self._padded_options if padded else self._options)
        session, backlog = subscribe.open_session(self._hub, stream, cursor)
        try:
            answers.limit_stream(stream, grant)
            log.debug("%s subscribed to %s", environ.get("REMOTE_ADDR"), ",".join(names))
            stream.start(session, backlog)
            # The server adds Date, and the framing, to the head it hands the stream.
            start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"),
                                      *headers, *(self._rotated_headers if padded else ())])
        except BaseException:
            stream.close()  # attached: it must leave the hub, or it stays there for good
            raise
        return StreamResponse(stream)

    def _unavailable(self, environ: dict, start_response: Callable,
                     headers: List[Tuple[str, str]], what: str = "broker unavailable"
                     ) -> List[bytes]:
        """The broker (or the application that authorizes) is down: a stream with a retry hint
        and a comment that says why, then its end.

        WHATWG HTML: a 200 event stream that ends makes the browser "reestablish the connection"
        after the reconnection time, which a `retry:` line sets as soon as it is read; any other
        status makes it "fail the connection", for good. No blank line, so nothing is dispatched,
        and no `id:` line: the client's last event id cannot change, and its next connection
        resumes from it.
        """
        retry = subscribe.outage_retry(self._config.retry)
        padded = subscribe.wants_padding(subscribe.Query(environ.get("QUERY_STRING", "")))
        body = (PADDING if padded else b"") + wire.encode_turn_away(
            retry, f"{what}; reconnect in {retry} ms")
        log.debug("%s turned away: %s", environ.get("REMOTE_ADDR"), what)
        # The client comes back no sooner than the retry time: keeping the connection open for
        # it would only hold a socket and a greenlet meanwhile.
        start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"),
                                  ("Content-Length", str(len(body))), *headers,
                                  ("Connection", "close")])
        return [body]


def _path_channel(path: str) -> Optional[str]:
    if path == PREFIX:
        return None
    name = path[len(PREFIX) + 1:]
    if "/" in name:
        raise ApiError(404, "not found", f"no such path: {path[:200]}")
    return name

