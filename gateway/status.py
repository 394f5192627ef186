"""The live status page (GET /status), fed by the gateway's own event stream.

While someone watches, each gateway process publishes its figures every second as a `figures`
event on the status channel, through its broker like any event; the page subscribes to that
channel with EventSource (or the polyfill) and charts the sum over processes.

The status channel's name is a secret: `sse-gateway.status.` and 128 random bits, shown only
by the guarded page. Gateways on one Redis share one name (the first to start stores it,
`<prefix>sse-gateway:status-channel`); the embedded broker's process makes its own.
"""

import json
import logging
import secrets
import time
from importlib import resources
from typing import Any, Callable, Dict, Optional

from redis.exceptions import RedisError

from .assets import BuiltAsset, load_status_bundle, load_status_css
from .brokers import Broker, BrokerUnavailable, RedisEndpoint
from .message import InvalidMessage, build_message

log = logging.getLogger(__name__)

CHANNEL_KEY = "sse-gateway:status-channel"
EVENT = "figures"


def new_channel() -> str:
    return "sse-gateway.status." + secrets.token_hex(16)


def shared_channel(redis: RedisEndpoint, prefix: str) -> str:
    """The status channel of every gateway on this Redis: stored by the first to ask."""
    client = redis.client(socket_timeout=2, socket_connect_timeout=2)
    try:
        client.set(prefix + CHANNEL_KEY, new_channel(), nx=True)
        name = client.get(prefix + CHANNEL_KEY)
    finally:
        client.close()
    if name is None:
        raise RedisError("the status channel's name vanished")
    return name.decode("ascii")


class StatusFeed:
    """Publishes this process's figures on the status channel, when someone watches it."""

    def __init__(self, broker: Broker, figures: Callable[[], Dict[str, Any]],
                 resolve: Callable[[], str]) -> None:
        self._broker = broker
        self._figures = figures
        self._resolve = resolve
        self.channel: Optional[str] = None

    def resolve(self) -> Optional[str]:
        """The channel's name, once it can be had (with Redis, once Redis answers)."""
        if self.channel is None:
            try:
                self.channel = self._resolve()
            except (RedisError, OSError, UnicodeDecodeError) as error:
                log.debug("the status channel's name is not known yet: %s", error)
        return self.channel

    def publish(self) -> None:
        channel = self.resolve()
        if channel is None:
            return
        data = json.dumps({**self._figures(), "time": int(time.time() * 1000)},
                          separators=(",", ":"))
        try:
            self._broker.publish(build_message(channel, data, EVENT))
        except (BrokerUnavailable, InvalidMessage) as error:
            log.debug("figures not published: %s", error)


class StatusPage:
    """The page and its script: uPlot and the page's code, one bundle with a hashed URL."""

    def __init__(self) -> None:
        self.script: Optional[BuiltAsset] = None
        self._template = ""
        try:
            self.script = load_status_bundle()
            css = load_status_css()
        except (OSError, ValueError) as error:
            log.error("the status page's script is not available (%s); /status answers 503",
                      error)
            return
        template = resources.files(__package__).joinpath("status.html").read_text("utf-8")
        self._template = (template.replace("{{uplot_css}}", css)
                          .replace("{{script}}", f"/status/status.{self.script.digest}.js"))

    def html(self, channel: str) -> bytes:
        config = json.dumps({"events": f"/events/{channel}"}).replace("</", "<\\/")
        return self._template.replace("{{config}}", config).encode("utf-8")
