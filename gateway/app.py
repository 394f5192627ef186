"""The web application: the bare-WSGI event-stream, long-poll and publish endpoints in front of a
Flask app for the rest (health, the polyfill bundle, the demo, and the operations routes of
`operations`). Errors are JSON."""

import logging
from importlib import resources

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from .assets import load_bundle
from .auth.authorizer import Authorizer
from .brokers import Broker, BrokerUnavailable
from .config import Config
from .cors import subscribe_policy
from .events_endpoint import EventsEndpoint
from .forwarded import parse_networks
from .hub import Hub
from .operations import Operations
from .poll_endpoint import PollEndpoint
from .publish_endpoint import PublishEndpoint
from .subscribe import UNCACHEABLE, ApiError

log = logging.getLogger(__name__)

__all__ = ["create_app"]

SHORT_CACHE = 300  # seconds: how soon a new release reaches pages that use the plain URL


def error_response(status: int, error: str, detail: str) -> Response:
    return Response(ApiError(status, error, detail).body(), status=status,
                    content_type="application/json")


def create_app(config: Config, hub: Hub, broker: Broker, operations: Operations):
    """The WSGI application: /events, /poll and /publish/ served bare, everything else by Flask."""
    authorizer = Authorizer.from_config(config)
    publish = PublishEndpoint(config, broker, authorizer, operations.metrics)
    flask_app = create_flask_app(config, hub, broker, operations, publish)
    cors = subscribe_policy(config.cors_origins)
    events = EventsEndpoint(config, hub, cors, authorizer, operations.metrics)
    polls = PollEndpoint(config, hub, cors, authorizer, operations.metrics,
                         parse_networks(config.trusted_proxies))

    def application(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if events.handles(path):
            return events(environ, start_response)
        if polls.handles(path):
            return polls(environ, start_response)
        if publish.handles(path):
            return publish(environ, start_response)
        return flask_app(environ, start_response)

    return application


def create_flask_app(config: Config, hub: Hub, broker: Broker, operations: Operations,
                     publish: PublishEndpoint) -> Flask:
    app = Flask(__name__)
    app.json.ensure_ascii = False
    app.json.sort_keys = False

    @app.after_request
    def _common_headers(response: Response) -> Response:
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
