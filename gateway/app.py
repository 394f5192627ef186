"""The web application: the bare-WSGI event-stream endpoint in front of a Flask app for the rest
(long-poll, publish, health, the polyfill bundle, the demo). Errors are JSON."""

import hmac
import logging
from importlib import resources
from typing import Dict, Optional
from urllib.parse import unquote_to_bytes, urlsplit

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from . import subscribe
from .assets import load_bundle
from .brokers import Broker, BrokerUnavailable
from .config import Config
from .cors import own_origin, page_may_publish, publish_policy, subscribe_policy
from .events_endpoint import EventsEndpoint
from .forwarded import is_loopback, parse_networks, resolve
from .hub import Hub
from .ids import format_id
from .message import InvalidJson, InvalidMessage, build_message, decode_text, from_publish_body, parse_json
from .subscribe import UNCACHEABLE, ApiError
from .transports import CALLBACK, PollQueue, encode_json, encode_jsonp, poll
from .transports.poll import unavailable

log = logging.getLogger(__name__)

__all__ = ["create_app"]

SHORT_CACHE = 300  # seconds: how soon a new release reaches pages that use the plain URL


def error_response(status: int, error: str, detail: str) -> Response:
    return Response(ApiError(status, error, detail).body(), status=status,
                    content_type="application/json")


def create_app(config: Config, hub: Hub, broker: Broker):
    """The WSGI application: /events served bare, everything else by Flask."""
    flask_app = create_flask_app(config, hub, broker)
    events = EventsEndpoint(config, hub, subscribe_policy(config.cors_origins))

    def application(environ, start_response):
        if events.handles(environ.get("PATH_INFO", "")):
            return events(environ, start_response)
        return flask_app(environ, start_response)

    return application


def create_flask_app(config: Config, hub: Hub, broker: Broker) -> Flask:
    app = Flask(__name__)
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    proxies = parse_networks(config.trusted_proxies)
    subscribe_cors = subscribe_policy(config.cors_origins)
    publish_cors = publish_policy(config.publish_cors_origins) if config.publish_cors_origins else None
    publish_origins = frozenset(config.publish_cors_origins)
    refused = 0  # publish requests refused for what they sent (the broker counts its own)

    @app.after_request
    def _common_headers(response: Response) -> Response:
        endpoint = request.endpoint
        policy = subscribe_cors if endpoint == "poll_events" else None
        if endpoint == "publish":
            policy = publish_cors
        if policy is not None:
            origin = request.headers.get("Origin")
            extra = policy.preflight(origin) if request.method == "OPTIONS" else policy.headers(origin)
            if extra.pop("Vary", None):
                response.vary.add("Origin")
            response.headers.update(extra)
        if "Cache-Control" not in response.headers:
            response.headers.update(UNCACHEABLE)
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

    @app.get("/poll")
    @app.get("/poll/<channel>")
    def poll_events(channel: Optional[str] = None):
        args = request.args
        channels = subscribe.channels(channel, args, config.max_channels)
        callback = args.get("callback")
        if callback is not None and not CALLBACK.fullmatch(callback):
            raise ApiError(400, "invalid callback",
                           f"callback must be a plain identifier, ^{CALLBACK.pattern}$")
        if callback is not None and config.cors_origins:
            _check_jsonp_referer(config.cors_origins)
        hold = subscribe.number_arg(args, "timeout", config.poll_timeout, config.poll_timeout)
        batch = int(subscribe.number_arg(args, "batch", config.max_batch, config.max_batch,
                                         integer=True))
        cursor = subscribe.last_event_id(request.headers.get("Last-Event-ID"), args)
        log.debug("%s polls %s", resolve(request.remote_addr or "", request.headers,
                                         proxies).address, ",".join(channels))
        try:
            session, backlog = subscribe.open_session(
                hub, PollQueue(channels, config.max_pending), cursor)
        except BrokerUnavailable:
            body = unavailable(cursor, hold, subscribe.outage_retry(config.retry))
        else:
            # The session is attached, and `poll` detaches it whatever happens.
            body = poll(session, backlog, hold, batch, config.retry)
        if callback is None:
            return Response(encode_json(body), content_type="application/json; charset=utf-8")
        return Response(encode_jsonp(callback, body),
                        content_type="application/javascript; charset=utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})

    @app.post("/publish/<channel>")
    def publish(channel: str):
        nonlocal refused
        _check_publish_origin(publish_origins, config.demo)
        _authorize_publisher(config.publish_tokens, proxies)
        try:
            message = _read_message(subscribe.checked_channel(channel), config.max_message_size)
            result = broker.publish(message)
        except BrokerUnavailable as error:
            raise ApiError(503, "broker unavailable", f"{error}; nothing was published") from None
        except InvalidMessage as error:  # refused by the Redis script
            refused += 1
            raise ApiError(400, "invalid message", str(error)) from None
        except ApiError:
            refused += 1
            raise
        return jsonify(channel=channel, id=format_id(result.event_id), receivers=result.receivers)

    @app.get("/healthz")
    def healthz():
        try:
            broker.check()
            problem = None
        except BrokerUnavailable as error:
            problem = str(error)
        body = {
            "broker": broker.name,
            "subscribers": hub.subscriber_count,
            "channels": hub.channel_count,
            "idle_channels": hub.idle_channel_count,
            "dropped_slow": hub.dropped_slow,
            "dropped_memory": hub.dropped_memory,
            "buffered_bytes": hub.buffered_bytes,
            "recent_bytes": hub.recent_bytes,
            "history_from_memory": hub.history_from_memory,
            "history_from_broker": hub.history_from_broker,
            "refused": refused + broker.refused,
            "skipped": broker.skipped,
            "listener_restarts": broker.listener_restarts,
        }
        if problem is not None:
            return jsonify(status="unavailable", detail=problem, **body), 503
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


def _check_jsonp_referer(origins) -> None:
    # A script tag ignores CORS and carries cookies: with an allowlist, JSONP must not let other
    # sites read what only the listed origins may. Script requests name their page in Referer.
    page = urlsplit(request.headers.get("Referer", ""))
    origin = f"{page.scheme}://{page.netloc}" if page.scheme and page.netloc else None
    if origin not in origins:
        raise ApiError(403, "forbidden", "JSONP is allowed only from the --cors-origin origins, "
                       "named by the request's Referer")


def _check_publish_origin(allowed, demo: bool) -> None:
    # Tokens or not: a page must not publish unless its origin is listed, or the page is the
    # demo that the gateway itself serves.
    origin = request.headers.get("Origin")
    own = own_origin(request.scheme, request.host) if demo else None
    if not page_may_publish(origin, allowed, own):
        raise ApiError(403, "forbidden", f"pages of origin {origin[:200]!r} may not publish; "
                       "list the origin with --publish-cors-origin")


def _authorize_publisher(tokens, proxies) -> None:
    if tokens:
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise ApiError(401, "unauthorized", "send 'Authorization: Bearer <publish token>'")
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
    args = _strict_query(request.query_string)
    raw = _read_body(limit)
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


def _strict_query(query: bytes) -> Dict[str, str]:
    """The query's first value of each name, percent-escapes decoded as UTF-8 strictly.

    werkzeug's `request.args` would put U+FFFD for what is not UTF-8, and publish that.
    """
    values: Dict[str, str] = {}
    for part in query.split(b"&"):
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
