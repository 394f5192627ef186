"""The `sse-gateway` command: `serve` runs the gateway, `publish` sends events, `token`
mints a signed token."""

import argparse
import json
import logging
import sys
from typing import List, Optional

from .config import OPTIONS, Config, defaults, from_environment


def _serve_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "serve", help="run the gateway",
        description="Run the gateway. Every option can also be set with the environment "
                    "variable shown; the command line wins.",
    )
    base = defaults()
    for option in OPTIONS:
        default = base[option.name]
        shown = ", ".join(default) if isinstance(default, tuple) else default
        help_text = f"{option.help} (env {option.env}; default: {shown!s})"
        if option.switch:
            parser.add_argument(option.cli, dest=option.name, action="store_const", const=True,
                                default=None, help=help_text)
        elif option.repeatable:
            parser.add_argument(option.cli, dest=option.name, action="append", default=None,
                                metavar=option.metavar, help=help_text)
        else:
            parser.add_argument(option.cli, dest=option.name, type=option.parse, default=None,
                                metavar=option.metavar, help=help_text)


def _publish_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "publish", help="publish events",
        description="Publish an event through Redis (--redis-url) or a running gateway (--url); "
                    "several DATA arguments publish several events, in order, in one batch.",
    )
    parser.add_argument("channel")
    parser.add_argument("data", nargs="+",
                        help="the event's data (a string; with --json, a JSON value)")
    parser.add_argument("--event", help="event type (the client's addEventListener name)")
    parser.add_argument("--id", dest="source_id", help="your own id for the event")
    parser.add_argument("--retry", type=int, help="reconnection delay hint in milliseconds")
    parser.add_argument("--json", action="store_true", help="parse DATA as JSON")
    parser.add_argument("--redis-url", help="publish through Redis (env SSE_GATEWAY_REDIS_URL)")
    parser.add_argument("--redis-sentinel", metavar="HOST:PORT[,...]",
                        help="publish to the master these sentinels name (--redis-url then "
                             "gives only its password and database: redis://:PASSWORD@/0; "
                             "env SSE_GATEWAY_REDIS_SENTINEL)")
    parser.add_argument("--redis-sentinel-master", metavar="NAME",
                        help="the master's name at the sentinels "
                             "(env SSE_GATEWAY_REDIS_SENTINEL_MASTER)")
    parser.add_argument("--redis-sentinel-password", metavar="PASSWORD",
                        help="the sentinels' own password "
                             "(env SSE_GATEWAY_REDIS_SENTINEL_PASSWORD)")
    parser.add_argument("--prefix", help="Redis key prefix (env SSE_GATEWAY_PREFIX)")
    parser.add_argument("--redis-cluster", action="store_true", default=None,
                        help="--redis-url names nodes of a Redis Cluster, comma-separated "
                             "(env SSE_GATEWAY_REDIS_CLUSTER=1)")
    parser.add_argument("--url", default="http://127.0.0.1:8080",
                        help="gateway to publish through when no Redis URL is given "
                             "(default: http://127.0.0.1:8080)")
    parser.add_argument("--publish-token", help="bearer token for the gateway "
                                                "(env SSE_GATEWAY_PUBLISH_TOKEN)")


def _build_assets_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "build-assets", help="build the EventSource polyfill bundle ahead of time",
        description="Minify the polyfill's sources (static_js/src/ of a source checkout) into "
                    "DIR/eventsource.min.js (default: the package's static/ folder, which the "
                    "gateway serves from when it is up to date).",
    )
    parser.add_argument("dir", nargs="?", help="output directory")


def _token_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "token", help="mint a signed token for subscribing or publishing",
        description="Print a token signed with the gateway's --subscribe-key secret (HS256; "
                    "env SSE_GATEWAY_SUBSCRIBE_KEY) or with --private-key (the PEM private key "
                    "whose public key the gateway verifies with).",
    )
    parser.add_argument("--subscribe", action="append", default=[], metavar="PATTERN",
                        help="channel name or pattern the holder may subscribe to (repeatable)")
    parser.add_argument("--publish", action="append", default=[], metavar="PATTERN",
                        help="channel name or pattern the holder may publish on (repeatable)")
    parser.add_argument("--ttl", type=float, default=3600, help="lifetime in seconds "
                                                                 "(default: 3600)")
    parser.add_argument("--subscribe-key", metavar="SECRET",
                        help="HS256 secret (env SSE_GATEWAY_SUBSCRIBE_KEY)")
    parser.add_argument("--private-key", metavar="FILE", help="PEM private key file")
    parser.add_argument("--audience", help="the `aud` claim (env SSE_GATEWAY_TOKEN_AUDIENCE)")
    parser.add_argument("--issuer", help="the `iss` claim (env SSE_GATEWAY_TOKEN_ISSUER)")
    parser.add_argument("--subject", help="the `sub` claim, e.g. the user's id")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sse-gateway",
                                     description="A Server-Sent Events push gateway.")
    subparsers = parser.add_subparsers(dest="command", required=True)
    _serve_parser(subparsers)
    _publish_parser(subparsers)
    _build_assets_parser(subparsers)
    _token_parser(subparsers)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(parser, args)
    if args.command == "build-assets":
        return _build_assets(args)
    if args.command == "token":
        return _token(parser, args)
    return _publish(parser, args)


def _token(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import os

    from .tokens import mint

    if not args.subscribe and not args.publish:
        parser.error("name the channels: --subscribe PATTERN and/or --publish PATTERN")
    key = args.subscribe_key or os.environ.get("SSE_GATEWAY_SUBSCRIBE_KEY")
    if args.private_key:
        try:
            with open(args.private_key, "rb") as handle:
                key = handle.read()
        except OSError as error:
            parser.error(f"--private-key {args.private_key!r} cannot be read: {error.strerror}")
    if not key:
        parser.error("give --subscribe-key (or SSE_GATEWAY_SUBSCRIBE_KEY) or --private-key")
    try:
        token = mint(key, subscribe=args.subscribe, publish=args.publish, ttl=args.ttl,
                     audience=args.audience or os.environ.get("SSE_GATEWAY_TOKEN_AUDIENCE"),
                     issuer=args.issuer or os.environ.get("SSE_GATEWAY_TOKEN_ISSUER"),
                     subject=args.subject)
    except ValueError as error:
        parser.error(str(error))
    print(token)
    return 0


def _build_assets(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .assets import PREBUILT, SRC_DIR, build_assets

    if not SRC_DIR.is_dir():
        # An installed package has no sources, and needs none: its bundle is built already.
        print(f"sse-gateway build-assets: no polyfill sources in {SRC_DIR}: this command builds "
              "the bundle in a source checkout of sse-gateway; run it there (an installed "
              "package ships the bundle built)", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    path = build_assets(Path(args.dir) if args.dir else PREBUILT.parent)
    print(path)
    return 0


def _serve(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    try:
        values = {**defaults(), **from_environment()}
        values.update({o.name: getattr(args, o.name) for o in OPTIONS
                       if getattr(args, o.name) is not None})
        for option in OPTIONS:
            if option.repeatable:
                values[option.name] = tuple(values[option.name])
        config = Config(**values)
    except ValueError as error:
        parser.error(str(error))
    level = getattr(logging, config.log_level.upper(), None)
    if not isinstance(level, int):
        parser.error(f"unknown log level {config.log_level!r}")
    from . import logs

    secrets = logs.secrets_of(config.publish_tokens, config.redis_url)
    logs.configure(level, config.log_format, config.workers,
                   secrets + (config.redis.secrets if config.redis else []))
    from .brokers import BrokerRefused
    from .listener import ListenError

    try:
        if config.workers > 1:
            from .supervisor import supervise

            return supervise(config, _run_worker)
        _run(config, reuse_port=False)
    except (ListenError, BrokerRefused) as error:
        print(f"sse-gateway serve: {error}", file=sys.stderr)
        return 1
    return 0


def _run(config: Config, reuse_port: bool) -> None:
    # Patch before redis-py and the server create sockets, so every wait yields to gevent.
    from gevent import monkey

    monkey.patch_all()
    from .server import serve

    serve(config, reuse_port)


def _run_worker(config: Config) -> None:
    _run(config, reuse_port=True)


def _publish(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    import os

    from .publisher import Publisher, PublishError

    data = args.data
    if args.json:
        try:
            data = [json.loads(value) for value in data]
        except ValueError as error:
            parser.error(f"DATA is not valid JSON: {error}")
    def setting(name: str) -> Optional[str]:
        return getattr(args, name) or os.environ.get("SSE_GATEWAY_" + name.upper()) or None

    redis_url = setting("redis_url")
    prefix = args.prefix if args.prefix is not None else os.environ.get("SSE_GATEWAY_PREFIX", "")
    token = args.publish_token or os.environ.get("SSE_GATEWAY_PUBLISH_TOKEN", "").split(",")[0]
    sentinel = {"sentinels": setting("redis_sentinel") or (),
                "master": setting("redis_sentinel_master"),
                "sentinel_password": setting("redis_sentinel_password")}
    cluster = args.redis_cluster or os.environ.get("SSE_GATEWAY_REDIS_CLUSTER", "").lower() in (
        "1", "true", "yes", "on")
    try:
        if any(sentinel.values()):
            publisher = Publisher(redis_url, prefix=prefix, **sentinel)
        else:
            publisher = Publisher(redis_url or args.url, prefix=prefix, token=token or None,
                                  cluster=cluster and bool(redis_url))
    except PublishError as error:
        print(f"sse-gateway publish: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        parser.error(str(error))
    fields = {"event": args.event, "id": args.source_id, "retry": args.retry}
    fields = {name: value for name, value in fields.items() if value is not None}
    try:
        if len(data) == 1:
            results = [publisher.publish(args.channel, data[0], event=args.event,
                                         id=args.source_id, retry=args.retry)]
        else:
            results = publisher.publish_many(
                [{"channel": args.channel, "data": value, **fields} for value in data])
    except PublishError as error:
        print(f"sse-gateway publish: {error}", file=sys.stderr)
        return 1
    except ValueError as error:
        print(f"sse-gateway publish: {error}", file=sys.stderr)
        return 2
    for result in results:
        print(json.dumps(result))
    return 0
