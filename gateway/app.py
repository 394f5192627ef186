"""The Flask application: routes, request parsing, errors as JSON. Thin glue over the hub."""

import hmac
import json
import logging
from importlib import resources
from typing import List, Optional

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .assets import load_bundle
from .brokers import Broker, BrokerUnavailable
from .config import Config
from .cors import publish_policy, subscribe_policy
from .forwarded import is_loopback, parse_networks, resolve
from .hub import Hub
from .ids import format_id
from .message import InvalidMessage, build_message, check_channel, from_publish_body
from .transports import CALLBACK, Session, StreamOptions, encode_json, encode_jsonp, event_stream, poll

log = logging.getLogger(__name__)

#: The WSGI environ key under which the server may hand a stream its connection.
CONNECTION_KEY = "gateway.connection"
LAST_EVENT_ID_PARAMS = ("lastEventId", "last_event_id", "evs_last_event_id")
# Old IE caches GET responses unless told otherwise in every way it understands.
_UNCACHEABLE = {
    "Cache-Control": "no-cache, no-store",
    "Pragma": "no-cache",
    "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
}
_SUBSCRIBE_ENDPOINTS = ("events", "poll_events")
SHORT_CACHE = 300  # seconds: how soon a new release reaches pages that use the plain URL


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail


def error_response(status: int, error: str, detail: str) -> Response:
    response = jsonify(error=error, detail=detail)
    response.status_code = status
    return response


def create_app(config: Config, hub: Hub, broker: Broker) -> Flask:
    app = Flask(__name__)
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    proxies = parse_networks(config.trusted_proxies)
    subscribe_cors = subscribe_policy(config.cors_origins)
    publish_cors = publish_policy(config.publish_cors_origins) if config.publish_cors_origins else None

    @app.after_request
    def _common_headers(response: Response) -> Response:
        endpoint = request.endpoint
        policy = subscribe_cors if endpoint in _SUBSCRIBE_ENDPOINTS else None
        if endpoint == "publish":
            policy = publish_cors
        if policy is not None:
            origin = request.headers.get("Origin")
            extra = policy.preflight(origin) if request.method == "OPTIONS" else policy.headers(origin)
            if extra.pop("Vary", None):
                response.vary.add("Origin")
            response.headers.update(extra)
        if "Cache-Control" not in response.headers:
            response.headers.update(_UNCACHEABLE)
        return response

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return error_response(error.status, error.error, error.detail)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        detail = error.description or ""
        response = error_response(error.code or 500, (error.name or "error").lower(), detail)
        if error.code == 405 and hasattr(error, "valid_methods") and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def _unexpected(error: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        return error_response(500, "internal server error", "the gateway failed; see its log")

    @app.get("/events")
    @app.get("/events/<channel>")
    def events(channel: Optional[str] = None):
        channels = _channels(channel, config.max_channels)
        padded = _wants_padding()
        options = StreamOptions(
            retry_ms=config.retry,
            heartbeat=config.heartbeat,
            padded=padded,
            rotate_bytes=config.rotate_bytes if padded else 0,
            rotate_seconds=config.rotate_seconds if padded else 0.0,
        )
        session, backlog = _open_session(channels)
        return Response(
            event_stream(session, backlog, options, request.environ.get(CONNECTION_KEY)),
            content_type="text/event-stream; charset=utf-8",
            headers={**_UNCACHEABLE, "X-Accel-Buffering": "no"},
            direct_passthrough=True,
        )

    @app.get("/poll")
    @app.get("/poll/<channel>")
    def poll_events(channel: Optional[str] = None):
        channels = _channels(channel, config.max_channels)
        callback = request.args.get("callback")
        if callback is not None and not CALLBACK.fullmatch(callback):
            raise ApiError(400, "invalid callback",
                           "callback must match ^[A-Za-z_$][A-Za-z0-9_$.]{0,63}$")
        hold = _number_arg("timeout", config.poll_timeout, config.poll_timeout)
        batch = int(_number_arg("batch", config.max_batch, config.max_batch, integer=True))
        session, backlog = _open_session(channels)
        body = poll(session, backlog, hold, batch, config.retry)
        if callback is None:
            return Response(encode_json(body), content_type="application/json; charset=utf-8")
        return Response(encode_jsonp(callback, body),
                        content_type="application/javascript; charset=utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})

    def _open_session(channels: List[str]):
        session = Session(hub, channels, config.max_pending)
        try:
            backlog = session.open(_last_event_id())
        except BrokerUnavailable as error:
            raise ApiError(503, "broker unavailable", str(error)) from None
        log.debug("%s subscribed to %s", resolve(request.remote_addr or "", request.headers,
                                                 proxies).address, ",".join(channels))
        return session, backlog

    @app.post("/publish/<channel>")
    def publish(channel: str):
        _authorize_publisher(config.publish_tokens, proxies)
        message = _read_message(_checked(channel), config.max_message_size)
        try:
            result = broker.publish(message)
        except BrokerUnavailable as error:
            raise ApiError(503, "broker unavailable", f"{error}; nothing was published") from None
        return jsonify(channel=channel, id=format_id(result.event_id), receivers=result.receivers)

    @app.get("/healthz")
    def healthz():
        body = {
            "broker": broker.name,
            "subscribers": hub.subscriber_count,
            "channels": hub.channel_count,
            "dropped_slow": hub.dropped_slow,
        }
        try:
            broker.check()
        except BrokerUnavailable as error:
            return jsonify(status="unavailable", detail=str(error), **body), 503
        return jsonify(status="ok", **body)

    _static_routes(app)

    if config.demo:
        demo_page = resources.files(__package__).joinpath("demo.html").read_bytes()

        @app.get("/")
        def demo():
            return Response(demo_page, content_type="text/html; charset=utf-8")

    return app


def _static_routes(app: Flask) -> None:
    """The polyfill bundle: a short-cached URL for script tags, and an immutable hashed one."""
    try:
        bundle = load_bundle()
    except (OSError, ValueError) as error:
        log.error("the polyfill bundle is not available (%s); /static answers 503", error)
        bundle = None
    else:
        log.info("polyfill bundle: %d bytes, %d gzipped, at /static/eventsource.%s.js",
                  len(bundle.body), len(bundle.gzipped), bundle.digest)

    def serve(cache_control: str) -> Response:
        if bundle is None:
            raise ApiError(503, "unavailable", "the polyfill bundle could not be built; see the log")
        gzipped = request.accept_encodings["gzip"] > 0
        # Each encoding is its own representation, so each gets its own strong ETag.
        etag = bundle.etag[:-1] + '-gzip"' if gzipped else bundle.etag
        if etag in request.headers.get("If-None-Match", ""):
            response = Response(status=304)
        elif gzipped:
            response = Response(bundle.gzipped)
            response.headers["Content-Encoding"] = "gzip"
        else:
            response = Response(bundle.body)
        response.content_type = "application/javascript; charset=utf-8"
        response.headers["ETag"] = etag
        response.headers["Cache-Control"] = cache_control
        response.vary.add("Accept-Encoding")
        return response

    @app.get("/static/eventsource.js")
    def polyfill():
        return serve(f"public, max-age={SHORT_CACHE}")

    @app.get("/static/eventsource.<digest>.js")
    def polyfill_hashed(digest: str):
        if bundle is not None and digest != bundle.digest:
            raise ApiError(404, "not found", "no such version of the bundle; load "
                           "/static/eventsource.js or the hashed URL it was published under")
        return serve("public, max-age=31536000, immutable")


def _checked(channel: str) -> str:
    try:
        return check_channel(channel)
    except InvalidMessage as error:
        raise ApiError(400, "invalid channel", str(error)) from None


def _channels(path_channel: Optional[str], limit: int) -> List[str]:
    names = [path_channel] if path_channel is not None else request.args.getlist("channel")
    if not names:
        raise ApiError(400, "no channel", "name a channel: /events/<channel> or ?channel=a&channel=b")
    if len(names) > limit:
        raise ApiError(400, "too many channels", f"at most {limit} channels per request")
    unique = list(dict.fromkeys(_checked(name) for name in names))
    return unique


def _number_arg(name: str, default: float, maximum: float, integer: bool = False) -> float:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw) if integer else float(raw)
    except ValueError:
        value = -1
    low = 1 if integer else 0
    if not low <= value <= maximum:
        raise ApiError(400, f"invalid {name}",
                       f"{name} must be a {'whole ' if integer else ''}number from {low} to {maximum:g}")
    return value


def _last_event_id() -> Optional[str]:
    value = request.headers.get("Last-Event-ID")
    if value is None:
        for name in LAST_EVENT_ID_PARAMS:
            value = request.args.get(name)
            if value is not None:
                break
    return value or None


def _wants_padding() -> bool:
    args = request.args
    return (
        args.get("transport") == "stream"
        or args.get("padding", "").lower() in ("1", "true")
        or "evs_preamble" in args
    )


def _authorize_publisher(tokens, proxies) -> None:
    if tokens:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            error = ApiError(401, "unauthorized", "send 'Authorization: Bearer <publish token>'")
            raise error
        # Compare with every token, so the time taken does not tell which one nearly matched.
        matches = [hmac.compare_digest(token.strip().encode(), t.encode()) for t in tokens]
        if not any(matches):
            raise ApiError(403, "forbidden", "the publish token is not valid")
        return
    # A proxy on this host forwards requests from anywhere: only the original client counts.
    if not is_loopback(resolve(request.remote_addr or "", request.headers, proxies)):
        raise ApiError(403, "forbidden", "no publish token is configured, so publishing is "
                       "allowed from loopback addresses only; set --publish-token")


def _read_body(limit: int) -> bytes:
    too_large = ApiError(413, "request entity too large",
                         f"the body is larger than the maximum message size of {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    # Read one byte more than allowed: a chunked body has no length to check beforehand.
    body = request.stream.read(limit + 1)
    if len(body) > limit:
        raise too_large
    return body


def _read_message(channel: str, limit: int):
    mimetype = request.mimetype
    if mimetype not in ("application/json", "text/plain"):
        raise ApiError(415, "unsupported media type",
                       "send application/json (a message object) or text/plain (the data)")
    raw = _read_body(limit)
    if mimetype == "application/json":
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError) as error:
            raise ApiError(400, "invalid json", f"the body is not valid JSON: {error}") from None
        try:
            return from_publish_body(channel, body)
        except InvalidMessage as error:
            raise ApiError(400, "invalid message", str(error)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "invalid text", "a text/plain body must be UTF-8") from None
    args = request.args
    retry = args.get("retry")
    try:
        return build_message(channel, text, args.get("event"), args.get("id"),
                             int(retry) if retry is not None else None)
    except (InvalidMessage, ValueError) as error:
        raise ApiError(400, "invalid message", str(error)) from None
