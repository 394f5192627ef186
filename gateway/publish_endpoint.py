"""POST /publish/<channel> and POST /publish/ (a batch): the publish endpoint, as bare WSGI.

A publish is the gateway's most frequent request after a delivery, so it costs only its own
steps: no routing table, request or response objects, contexts or JSON response machinery.
Every request goes through the same steps, in this order, each able to refuse it:

1. the page's origin (`_check_origin`): a page may publish only from a listed origin;
2. the publisher's authorization (`_authorize`): a signed publish token (whose channels are
   checked once the body has named them), a static token, or loopback when none is set;
3. the body (`_read_one`, `_read_batch`): its type, size and every message in it, checked by
   message.py's rule (batch.py for a batch), so that nothing invalid reaches the broker;
4. the broker (`answer`, `_publish_batch`): the message, or the whole batch, in one atomic
   step. A single publish is answered by a `Deferred` (http/seam.py): the broker has it, and
   the server may run the requests pipelined behind it before its result is waited for, so
   that their publishes go to Redis together.

Answers are JSON, errors `{"error", "detail"}` (a batch's bad item adds its `index`), with the
publish CORS policy's headers and never cacheable.
"""

import hmac
import json
import logging
from http import HTTPStatus
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple, TypeVar
from urllib.parse import unquote_to_bytes

from . import batch
from .auth.authorizer import Authorizer, PublishGrant, Refused
from .brokers import Broker, BrokerUnavailable, PublishResult
from .config import Config
from .cors import CorsPolicy, own_origin, page_may_publish, publish_policy
from .forwarded import FORWARDING_HEADERS, environ_client, is_loopback, parse_networks, resolve
from .http.seam import Deferred
from .ids import format_id
from .message import (
    InvalidJson,
    InvalidMessage,
    Message,
    build_message,
    decode_text,
    from_publish_body,
    parse_json,
)
from .metrics import Metrics
from .subscribe import UNCACHEABLE, ApiError, checked_channel

log = logging.getLogger(__name__)

PREFIX = "/publish/"
ALLOW = "POST, OPTIONS"
BATCH_TYPES = ("application/x-ndjson", "application/json")
_FORWARDING_KEYS = tuple("HTTP_" + name.upper().replace("-", "_") for name in FORWARDING_HEADERS)
_PEERS_KEPT = 1024
_UNCACHEABLE = list(UNCACHEABLE.items())
_Result = TypeVar("_Result")


class ItemError(ApiError):
    """A batch refused for one of its items: the body names the item's index too."""

    def __init__(self, status: int, item: batch.InvalidItem) -> None:
        super().__init__(status, item.kind, str(item))
        self.index = item.index

    def body(self) -> bytes:
        return json.dumps({"error": self.error, "detail": self.detail, "index": self.index},
                          ensure_ascii=False).encode("utf-8")


class _Answer(Deferred):
    """A single publish's response: the broker has the message, its result comes later."""

    __slots__ = ("_endpoint", "_wait", "_channel", "_start_response", "_headers", "_settled")

    def __init__(self, endpoint: "PublishEndpoint", wait: Callable[[], PublishResult],
                 channel: str, start_response: Callable, headers: List[Tuple[str, str]]) -> None:
        self._endpoint = endpoint
        self._wait = wait
        self._channel = channel
        self._start_response = start_response
        self._headers = headers
        self._settled = False

    def __iter__(self) -> Iterator[bytes]:
        self._settled = True
        return iter(self._endpoint.answer(self._wait, self._channel, self._start_response,
                                          self._headers))

    def close(self) -> None:
        # Unsent (the client left): the broker publishes it all the same, and the counts
        # must say how that went.
        if not self._settled:
            self._settled = True
            try:
                self._endpoint.settle(self._wait)
            except ApiError:
                pass


class PublishEndpoint:
    def __init__(self, config: Config, broker: Broker, authorizer: Authorizer,
                 metrics: Metrics) -> None:
        self._config = config
        self._broker = broker
        self._auth = authorizer
        self._metrics = metrics
        self._proxies = parse_networks(config.trusted_proxies)
        self._origins = frozenset(config.publish_cors_origins)
        self._cors: Optional[CorsPolicy] = (publish_policy(config.publish_cors_origins)
                                            if config.publish_cors_origins else None)
        self._tokens = tuple(token.encode() for token in config.publish_tokens)
        self.refused = 0  # requests refused for what they sent (the broker counts its own)
        self._local_peers: Dict[str, bool] = {}

    @staticmethod
    def handles(path: str) -> bool:
        return path.startswith(PREFIX)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        method = environ["REQUEST_METHOD"]
        headers = self._headers(environ, method)
        try:
            channel = environ["PATH_INFO"][len(PREFIX):]
            if "/" in channel:
                raise ApiError(404, "not found", "The requested URL was not found on the server. "
                               "If you entered the URL manually please check your spelling and "
                               "try again.")
            if method == "OPTIONS":
                start_response("200 OK", headers + [("Allow", ALLOW), ("Content-Length", "0")])
                return []
            if method != "POST":
                raise ApiError(405, "method not allowed",
                               "The method is not allowed for the requested URL.")
            self._check_origin(environ)
            grant = self._authorize(environ)
            messages = self._read(environ, channel)
            if grant is not None:
                grant.check({message.channel for message in messages})
            if channel:
                return _Answer(self, self._broker.publish_later(messages[0]), channel,
                               start_response, headers)
            body = self._publish_batch(messages)
        except Refused as refused:
            self._metrics.refused_auth("publish", refused.status)
            return _error(start_response, ApiError(refused.status, refused.error, refused.detail),
                          headers)
        except ApiError as error:
            if error.status in (401, 403):
                self._metrics.refused_auth("publish", error.status)
            return _error(start_response, error, headers)
        except Exception:
            log.exception("unhandled error on %s %s", method, environ.get("PATH_INFO", "")[:200])
            error = ApiError(500, "internal server error", "the gateway failed; see its log")
            return _error(start_response, error, headers)
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body))), *headers])
        return [body]

    def _headers(self, environ: dict, method: str) -> List[Tuple[str, str]]:
        """The headers of every answer (never changed by the caller: it copies them)."""
        if self._cors is None:
            return _UNCACHEABLE
        origin = environ.get("HTTP_ORIGIN")
        extra = self._cors.preflight(origin) if method == "OPTIONS" else self._cors.headers(origin)
        return _UNCACHEABLE + list(extra.items())

    # -- the steps ----------------------------------------------------------------------------

    def _check_origin(self, environ: dict) -> None:
        # Tokens or not: a page must not publish unless its origin is listed, or the page is
        # the demo that the gateway itself serves.
        origin = environ.get("HTTP_ORIGIN")
        if origin is None:
            return
        own = own_origin(environ["wsgi.url_scheme"], _host(environ)) if self._config.demo else None
        if not page_may_publish(origin, self._origins, own):
            raise ApiError(403, "forbidden", f"pages of origin {origin[:200]!r} may not publish; "
                           "list the origin with --publish-cors-origin")

    def _authorize(self, environ: dict) -> Optional[PublishGrant]:
        """A signed token's grant, or None when the static rules let the request through."""
        grant = self._auth.publish_grant(environ)
        if grant is None:
            self.authorize_static(environ)
        return grant

    def authorize_static(self, environ: dict) -> None:
        """A --publish-token as the bearer, or a loopback client when none is set: the rule
        for publishing without a signed token, and for the operator's routes."""
        if self._tokens:
            scheme, _, token = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <publish token>'")
            sent = token.strip().encode()
            # Compare with every token, so the time taken does not tell which one nearly matched.
            matches = [hmac.compare_digest(sent, known) for known in self._tokens]
            if not any(matches):
                raise ApiError(403, "forbidden", "the publish token is not valid")
            return
        # A proxy on this host forwards requests from anywhere: only the original client counts.
        if not self._from_loopback(environ):
            raise ApiError(403, "forbidden", "no publish token is configured, so publishing is "
                           "allowed from loopback addresses only; set --publish-token")

    def _from_loopback(self, environ: dict) -> bool:
        peer = environ.get("REMOTE_ADDR") or ""
        for key in _FORWARDING_KEYS:
            if environ.get(key):
                return is_loopback(environ_client(environ, self._proxies))
        # No forwarding headers: the peer alone decides, and peers are few (local publishers).
        local = self._local_peers.get(peer)
        if local is None:
            if len(self._local_peers) >= _PEERS_KEPT:
                self._local_peers.clear()
            local = self._local_peers[peer] = is_loopback(resolve(peer, {}, self._proxies))
        return local

    def _read(self, environ: dict, channel: str) -> List[Message]:
        """The messages the body carries; every refusal here is counted in /healthz."""
        try:
            if channel:
                return [self._read_one(environ, checked_channel(channel))]
            return self._read_batch(environ)
        except ApiError:
            self.refused += 1
            raise

    def answer(self, wait: Callable[[], PublishResult], channel: str, start_response: Callable,
               headers: List[Tuple[str, str]]) -> List[bytes]:
        """The response to a single publish, once the broker has its result."""
        try:
            result = self.settle(wait)
        except ApiError as error:
            return _error(start_response, error, headers)
        body = (b'{"channel":"%s","id":"%s","receivers":%d}\n'
                % (channel.encode(), format_id(result.event_id).encode(), result.receivers))
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(body))), *headers])
        return [body]

    def settle(self, wait: Callable[[], PublishResult]) -> PublishResult:
        """A single publish's result, counted; ApiError for a refusal or a failure."""
        try:
            result = self._broker_step(wait)
        except ApiError:
            raise
        except Exception:
            log.exception("unhandled error publishing a message")
            raise ApiError(500, "internal server error", "the gateway failed; see its log") from None
        self._metrics.published += 1
        return result

    def _publish_batch(self, messages: Sequence[Message]) -> bytes:
        """The broker's step for a batch, and the answer's body."""
        results = self._broker_step(lambda: self._broker.publish_many(messages)) if messages else []
        self._metrics.published += len(results)
        ids = ",".join(f'"{format_id(result.event_id)}"' for result in results)
        return f'{{"count":{len(results)},"ids":[{ids}]}}\n'.encode()

    def _broker_step(self, step: Callable[[], _Result]) -> _Result:
        try:
            return step()
        except BrokerUnavailable as error:
            raise ApiError(503, "broker unavailable", f"{error}; nothing was published") from None
        except InvalidMessage as error:  # refused by the Redis script
            self.refused += 1
            raise ApiError(400, "invalid message", str(error)) from None

    # -- bodies -------------------------------------------------------------------------------

    def _read_one(self, environ: dict, channel: str) -> Message:
        mimetype = _mimetype(environ)
        if mimetype not in ("application/json", "text/plain"):
            raise ApiError(415, "unsupported media type",
                           "send application/json (a message object) or text/plain (the data)")
        args = strict_query(environ.get("QUERY_STRING", ""))
        limit = self._config.max_message_size
        raw = _read_body(environ, limit, f"the maximum message size of {limit} bytes")
        if mimetype == "application/json":
            try:
                return from_publish_body(channel, parse_json(raw))
            except InvalidJson as error:
                raise ApiError(400, "invalid json", str(error)) from None
            except InvalidMessage as error:
                raise ApiError(400, "invalid message", str(error)) from None
        try:
            text = decode_text(raw, "a text/plain body")
        except InvalidMessage as error:
            raise ApiError(400, "invalid text", str(error)) from None
        retry = args.get("retry")
        if retry is not None and not (retry.isascii() and retry.isdigit()):
            raise ApiError(400, "invalid message",
                           "'retry' must be an integer number of milliseconds, 0 to 86400000")
        try:
            return build_message(channel, text, args.get("event"), args.get("id"),
                                 int(retry) if retry is not None else None)
        except InvalidMessage as error:
            raise ApiError(400, "invalid message", str(error)) from None

    def _read_batch(self, environ: dict) -> List[Message]:
        mimetype = _mimetype(environ)
        if mimetype not in BATCH_TYPES:
            raise ApiError(415, "unsupported media type", "send a batch as application/x-ndjson "
                           "(a message object per line) or application/json (an array of them), "
                           "each object naming its 'channel'")
        limit = self._config.max_publish_batch_size
        raw = _read_body(environ, limit, f"the maximum batch size of {limit} bytes")
        parse = batch.parse_ndjson if mimetype == "application/x-ndjson" else batch.parse_array
        try:
            return parse(raw, self._config.max_message_size)
        except batch.InvalidItem as error:
            if error.too_large:
                raise ItemError(413, error) from None
            raise ItemError(400, error) from None
        except InvalidMessage as error:
            raise ApiError(400, "invalid json", str(error)) from None


def _read_body(environ: dict, limit: int, what: str) -> bytes:
    length = environ.get("CONTENT_LENGTH")
    if length and length.isdigit() and int(length) > limit:
        raise _too_large(what)
    # Read one byte more than allowed: the length alone need not be trusted to bound it.
    try:
        body = environ["wsgi.input"].read(limit + 1)
    except OSError:
        raise ApiError(400, "bad request", "the request body did not arrive in full") from None
    if len(body) > limit:
        raise _too_large(what)
    return body


def _too_large(what: str) -> ApiError:
    return ApiError(413, "request entity too large", f"the body is larger than {what}")


def _mimetype(environ: dict) -> str:
    return environ.get("CONTENT_TYPE", "").split(";", 1)[0].strip().lower()


def _host(environ: dict) -> str:
    host = environ.get("HTTP_HOST")
    if host:
        return host
    port = environ.get("SERVER_PORT", "80")
    return environ.get("SERVER_NAME", "") + ("" if port == "80" else f":{port}")


def strict_query(query: str) -> Dict[str, str]:
    """The query's first value of each name, percent-escapes decoded as UTF-8 strictly: a
    parameter that is not UTF-8 is refused rather than published with U+FFFD in its place."""
    values: Dict[str, str] = {}
    for part in query.encode("latin-1").split(b"&"):
        if not part:
            continue
        raw_name, _, raw_value = part.partition(b"=")
        name_bytes = unquote_to_bytes(raw_name.replace(b"+", b" "))
        name = name_bytes.decode("utf-8", errors="backslashreplace")
        try:
            name_bytes.decode("utf-8")
            value = unquote_to_bytes(raw_value.replace(b"+", b" ")).decode("utf-8")
        except UnicodeDecodeError as error:
            raise ApiError(400, "invalid query", f"the query parameter {name!r} is not UTF-8: "
                           f"{error.reason} at byte {error.start}") from None
        values.setdefault(name, value)
    return values


def _error(start_response: Callable, error: ApiError, headers: List[Tuple[str, str]]) -> List[bytes]:
    body = error.body()
    extra = [("Allow", ALLOW)] if error.status == 405 else []
    if error.status == 413:
        # A client that sent too much is answered and the connection closed: a body left
        # unread could not be told from the next request.
        extra.append(("Connection", "close"))
    start_response(f"{error.status} {HTTPStatus(error.status).phrase}",
                   [("Content-Type", "application/json"), ("Content-Length", str(len(body))),
                    *headers, *extra])
    return [body]
