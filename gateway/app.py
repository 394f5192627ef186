"""The Flask application: routes, request parsing, errors as JSON. Thin glue over the hub."""

import hmac
import ipaddress
import json
import logging
from importlib import resources
from typing import List, Optional

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .brokers import Broker, BrokerUnavailable
from .config import Config
from .hub import Hub
from .ids import format_id
from .message import InvalidMessage, build_message, check_channel, from_publish_body
from .transports import Session, StreamOptions, event_stream

log = logging.getLogger(__name__)

LAST_EVENT_ID_PARAMS = ("lastEventId", "last_event_id", "evs_last_event_id")
_FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")
_STREAM_HEADERS = {
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


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
    app.config["MAX_CONTENT_LENGTH"] = config.max_message_size
    app.json.ensure_ascii = False
    app.json.sort_keys = False

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError):
        return error_response(error.status, error.error, error.detail)

    @app.errorhandler(HTTPException)
    def _http_error(error: HTTPException):
        detail = error.description or ""
        if error.code == 413:
            detail = f"the body is larger than the maximum message size of {config.max_message_size} bytes"
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
            rotate_bytes=128 * 1024 if padded else 0,
        )
        session = Session(hub, channels, config.max_pending)
        try:
            backlog = session.open(_last_event_id())
        except BrokerUnavailable as error:
            raise ApiError(503, "broker unavailable", str(error)) from None
        log.debug("subscriber connected to %s from %s", ",".join(channels), request.remote_addr)
        return Response(
            event_stream(session, backlog, options),
            content_type="text/event-stream; charset=utf-8",
            headers=_STREAM_HEADERS,
            direct_passthrough=True,
        )

    @app.post("/publish/<channel>")
    def publish(channel: str):
        _authorize_publisher(config.publish_tokens)
        message = _read_message(_checked(channel))
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

    if config.demo:
        demo_page = resources.files(__package__).joinpath("demo.html").read_bytes()

        @app.get("/")
        def demo():
            return Response(demo_page, content_type="text/html; charset=utf-8")

    return app


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


def _authorize_publisher(tokens) -> None:
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
    if not _is_local_request():
        raise ApiError(403, "forbidden", "no publish token is configured, so publishing is "
                       "allowed from loopback addresses only; set --publish-token")


def _is_local_request() -> bool:
    # A proxy on this host forwards requests from anywhere: forwarded ones are never local.
    if any(name in request.headers for name in _FORWARDING_HEADERS):
        return False
    try:
        return ipaddress.ip_address(request.remote_addr or "").is_loopback
    except ValueError:
        return False


def _read_message(channel: str):
    mimetype = request.mimetype
    if mimetype == "application/json":
        try:
            body = json.loads(request.get_data(cache=False))
        except ValueError as error:
            raise ApiError(400, "invalid json", f"the body is not valid JSON: {error}") from None
        try:
            return from_publish_body(channel, body)
        except InvalidMessage as error:
            raise ApiError(400, "invalid message", str(error)) from None
    if mimetype == "text/plain":
        try:
            text = request.get_data(cache=False).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "invalid text", "a text/plain body must be UTF-8") from None
        args = request.args
        retry = args.get("retry")
        try:
            return build_message(channel, text, args.get("event"), args.get("id"),
                                 int(retry) if retry is not None else None)
        except (InvalidMessage, ValueError) as error:
            raise ApiError(400, "invalid message", str(error)) from None
    raise ApiError(415, "unsupported media type",
                   "send application/json (a message object) or text/plain (the data)")
