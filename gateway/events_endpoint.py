"""GET /events: the event-stream endpoint, as a bare WSGI application.

Thousands of clients hold this endpoint open, and they all reconnect at once when a gateway
restarts, so a connection here costs only what it needs: no routing table, request or response
objects, or contexts; the query is parsed only when there is one.
"""

import logging
from http import HTTPStatus
from typing import Callable, Iterable, List, Optional, Tuple
from urllib.parse import parse_qsl

from werkzeug.datastructures import MultiDict

from . import subscribe
from .config import Config
from .cors import CorsPolicy
from .hub import Hub
from .subscribe import ApiError
from .transports import StreamOptions, event_stream

log = logging.getLogger(__name__)

#: The WSGI environ key under which the server may hand a stream its connection.
CONNECTION_KEY = "gateway.connection"
PREFIX = "/events"
_EMPTY: MultiDict = MultiDict()


class EventsEndpoint:
    def __init__(self, config: Config, hub: Hub, cors: CorsPolicy) -> None:
        self._config = config
        self._hub = hub
        self._cors = cors
        self._base_headers = [*subscribe.UNCACHEABLE.items(), ("X-Accel-Buffering", "no")]

    @staticmethod
    def handles(path: str) -> bool:
        return path == PREFIX or path.startswith(PREFIX + "/")

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        origin = environ.get("HTTP_ORIGIN")
        cors = self._cors.preflight(origin) if method == "OPTIONS" else self._cors.headers(origin)
        headers = self._base_headers + list(cors.items())
        try:
            if method == "OPTIONS":
                start_response("200 OK", headers + [("Allow", "GET, OPTIONS"), ("Content-Length", "0")])
                return []
            if method != "GET":
                raise ApiError(405, "method not allowed", "subscribe with GET")
            return self._stream(environ, start_response, headers)
        except ApiError as error:
            return _error(start_response, error, headers)
        except Exception:
            log.exception("unhandled error on GET %s", environ.get("PATH_INFO"))
            error = ApiError(500, "internal server error", "the gateway failed; see its log")
            return _error(start_response, error, headers)

    def _stream(self, environ: dict, start_response: Callable,
                headers: List[Tuple[str, str]]) -> Iterable[bytes]:
        config = self._config
        path_channel = _path_channel(environ["PATH_INFO"])
        query = environ.get("QUERY_STRING")
        args = MultiDict(parse_qsl(query, keep_blank_values=True)) if query else _EMPTY
        names = subscribe.channels(path_channel, args, config.max_channels)
        padded = subscribe.wants_padding(args)
        cursor = subscribe.last_event_id(environ.get("HTTP_LAST_EVENT_ID"), args)
        session, backlog = subscribe.open_session(self._hub, names, config.max_pending, cursor)
        log.debug("%s subscribed to %s", environ.get("REMOTE_ADDR"), ",".join(names))
        options = StreamOptions(
            retry_ms=config.retry,
            heartbeat=config.heartbeat,
            padded=padded,
            rotate_bytes=config.rotate_bytes if padded else 0,
            rotate_seconds=config.rotate_seconds if padded else 0.0,
        )
        start_response("200 OK", [("Content-Type", "text/event-stream; charset=utf-8"), *headers])
        return event_stream(session, backlog, options, environ.get(CONNECTION_KEY))


def _path_channel(path: str) -> Optional[str]:
    if path == PREFIX:
        return None
    name = path[len(PREFIX) + 1:]
    if "/" in name:
        raise ApiError(404, "not found", f"no such path: {path[:200]}")
    return name


def _error(start_response: Callable, error: ApiError, headers: List[Tuple[str, str]]) -> List[bytes]:
    body = error.body()
    status = f"{error.status} {HTTPStatus(error.status).phrase}"
    extra = [("Allow", "GET, OPTIONS")] if error.status == 405 else []
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                            *headers, *extra])
    return [body]
