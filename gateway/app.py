"""The web application: the bare-WSGI event-stream and publish endpoints in front of a Flask app
for the rest (long-poll, health, the polyfill bundle, the demo, and the operations routes of
`operations`). Errors are JSON."""

import logging
from importlib import resources
from typing import Optional
from urllib.parse import urlsplit

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from . import subscribe
from .assets import load_bundle
from .auth import answers
from .auth.authorizer import Authorizer, AuthUnavailable, Refused
from .brokers import Broker, BrokerUnavailable
from .config import Config
from .cors import subscribe_policy
from .events_endpoint import EventsEndpoint
from .forwarded import parse_networks, resolve
from .hub import Hub
from .operations import Operations
from .publish_endpoint import PublishEndpoint
from .subscribe import UNCACHEABLE, ApiError
from .transports import CALLBACK, PollQueue, encode_json, encode_jsonp, poll
from .transports.poll import unavailable

log = logging.getLogger(__name__)

__all__ = ["create_app"]

SHORT_CACHE = 300  # seconds: how soon a new release reaches pages that use the plain URL


def error_response(status: int, error: str, detail: str) -> Response:
    return Response(ApiError(status, error, detail).body(), status=status,
                    content_type="application/json")


def create_app(config: Config, hub: Hub, broker: Broker, operations: Operations):
    """The WSGI application: /events and /publish/ served bare, everything else by Flask."""
    authorizer = Authorizer.from_config(config)
    publish = PublishEndpoint(config, broker, authorizer, operations.metrics)
    flask_app = create_flask_app(config, hub, broker, authorizer, operations, publish)
    events = EventsEndpoint(config, hub, subscribe_policy(config.cors_origins), authorizer,
                            operations.metrics)

    def application(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if events.handles(path):
            return events(environ, start_response)
        if publish.handles(path):
            return publish(environ, start_response)
        return flask_app(environ, start_response)

    return application


def create_flask_app(config: Config, hub: Hub, broker: Broker, authorizer: Authorizer,
                     operations: Operations, publish: PublishEndpoint) -> Flask:
    app = Flask(__name__)
    app.json.ensure_ascii = False
    app.json.sort_keys = False
    proxies = parse_networks(config.trusted_proxies)
    subscribe_cors = subscribe_policy(config.cors_origins)

    @app.after_request
    def _common_headers(response: Response) -> Response:
        endpoint = request.endpoint
        policy = subscribe_cors if endpoint == "poll_events" else None
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
        with operations.metrics.polling(jsonp=callback is not None):
            try:
                grant = authorizer.check_subscribe(channels, request.environ, args)
                session, backlog = subscribe.open_session(
                    hub, PollQueue(channels, config.max_pending), cursor)
            except Refused as refused:
                status, content_type, refusal = answers.poll_refusal(refused, callback)
                return Response(refusal, status=status, content_type=content_type)
            except (BrokerUnavailable, AuthUnavailable):
                body = unavailable(cursor, hold, subscribe.outage_retry(config.retry))
            else:
                # The session is attached, and `poll` detaches it whatever happens.
                body = answers.end_poll(
                    poll(session, backlog, grant.hold(hold), batch, config.retry), grant)
        if callback is None:
            return Response(encode_json(body), content_type="application/json; charset=utf-8")
        return Response(encode_jsonp(callback, body),
                        content_type="application/javascript; charset=utf-8",
                        headers={"X-Content-Type-Options": "nosniff"})

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
            "refused": publish.refused + broker.refused,
            "skipped": broker.skipped,
            "listener_restarts": broker.listener_restarts,
        }
        if problem is not None:
            return jsonify(status="unavailable", detail=problem, **body), 503
        return jsonify(status="ok", **body)

    _static_routes(app)
    operations.register(app, lambda: publish.authorize_static(request.environ),
                        lambda: publish.refused)

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
