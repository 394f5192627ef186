"""The gateway's settings: one table drives the CLI options, the environment variables and the docs."""

import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, Optional, Tuple

from .brokers.endpoints import RedisEndpoint, parse_addresses
from .forwarded import parse_networks

ENV_PREFIX = "SSE_GATEWAY_"
_COOKIE_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,128}")


@dataclass(frozen=True)
class Config:
    host: str = "127.0.0.1"
    port: int = 8080
    redis_url: Optional[str] = None
    redis_sentinel: Optional[str] = None  # HOST:PORT[,HOST:PORT...]
    redis_sentinel_master: Optional[str] = None
    redis_sentinel_password: Optional[str] = field(default=None, repr=False)  # a secret
    prefix: str = ""
    publish_tokens: Tuple[str, ...] = ()
    heartbeat: float = 15.0
    retry: int = 3000
    max_message_size: int = 65536
    max_publish_batch_size: int = 1024 * 1024
    max_pending: int = 1000
    max_buffered_bytes: int = 64 * 1024 * 1024
    max_channels: int = 16
    poll_timeout: float = 25.0
    max_batch: int = 100
    rotate_bytes: int = 128 * 1024
    rotate_seconds: float = 55.0
    cors_origins: Tuple[str, ...] = ()
    publish_cors_origins: Tuple[str, ...] = ()
    trusted_proxies: Tuple[str, ...] = ()
    history_length: int = 1000
    history_age: float = 3600.0
    recent_events: int = 1000
    recent_bytes: int = 1024 * 1024
    unsubscribe_grace: float = 5.0
    shutdown_timeout: float = 5.0
    max_connections: int = 0  # 0: the file-descriptor limit less a reserve
    max_head_size: int = 16 * 1024
    header_timeout: float = 10.0
    idle_timeout: float = 75.0
    workers: int = 1
    log_level: str = "info"
    log_format: str = "text"
    presence_interval: float = 2.0
    demo: bool = False
    private_channels: Tuple[str, ...] = ()
    subscribe_key: Optional[str] = field(default=None, repr=False)  # a secret
    subscribe_public_key: Optional[str] = None
    token_audience: Optional[str] = None
    token_issuer: Optional[str] = None
    token_cookie: str = "sse_gateway_token"
    auth_url: Optional[str] = None
    auth_timeout: float = 3.0
    auth_cache_seconds: float = 30.0

    def __post_init__(self) -> None:
        problems = []
        if not 0 < self.heartbeat < 45:
            problems.append("heartbeat must be above 0 and below 45 seconds "
                            "(polyfills treat 45 s of silence as a dead connection)")
        for name in ("max_message_size", "max_publish_batch_size", "max_pending",
                     "max_buffered_bytes", "max_channels", "history_length", "max_batch",
                     "rotate_bytes"):
            if getattr(self, name) < 1:
                problems.append(f"{name.replace('_', '-')} must be at least 1")
        if not 0 < self.poll_timeout <= 300:
            problems.append("poll-timeout must be above 0 and at most 300 seconds")
        if self.rotate_seconds <= 0:
            problems.append("rotate-seconds must be above 0")
        for origin in self.cors_origins + self.publish_cors_origins:
            if "://" not in origin or origin.endswith("/"):
                problems.append(f"CORS origin {origin!r} must look like https://example.com")
        try:
            parse_networks(self.trusted_proxies)
        except ValueError as error:
            problems.append(str(error))
        if self.max_connections < 0:
            problems.append("max-connections must not be negative (0: from the descriptor limit)")
        if self.max_head_size < 1024:
            problems.append("max-head-size must be at least 1024 bytes")
        for name in ("header_timeout", "idle_timeout"):
            if getattr(self, name) <= 0:
                problems.append(f"{name.replace('_', '-')} must be above 0")
        if self.history_age <= 0:
            problems.append("history-age must be above 0")
        for name in ("recent_events", "recent_bytes"):
            if getattr(self, name) < 0:
                problems.append(f"{name.replace('_', '-')} must not be negative (0: none)")
        if not 0 <= self.unsubscribe_grace <= 3600:
            problems.append("unsubscribe-grace must be 0 to 3600 seconds")
        if self.retry < 0:
            problems.append("retry must not be negative")
        if not 0 <= self.port <= 65535:
            problems.append("port must be 0-65535")
        if self.workers < 1:
            problems.append("workers must be at least 1")
        try:
            redis = self.redis
        except ValueError as error:
            problems.append(str(error))
            redis = None
        if self.workers > 1 and redis is None:
            problems.append("workers above 1 need --redis-url (or --redis-sentinel): the "
                            "embedded broker lives in one process, and the workers must "
                            "share events and history")
        problems += _auth_problems(self)
        if self.log_format not in ("text", "json"):
            problems.append("log-format must be text or json")
        if not 0 < self.presence_interval <= 60:
            problems.append("presence-interval must be above 0 and at most 60 seconds")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def redis(self) -> Optional[RedisEndpoint]:
        """Where the Redis broker connects; None for the embedded broker. Raises ValueError
        for settings that do not go together."""
        if not (self.redis_url or self.redis_sentinel or self.redis_sentinel_master
                or self.redis_sentinel_password):
            return None
        try:
            sentinels = parse_addresses(self.redis_sentinel) if self.redis_sentinel else ()
        except ValueError as error:
            raise ValueError(f"redis-sentinel: {error}") from None
        return RedisEndpoint(self.redis_url or "redis://", sentinels,
                             self.redis_sentinel_master, self.redis_sentinel_password)


def _auth_problems(config: Config) -> List[str]:
    from .auth.keys import check_secret, load_public_key
    from .auth.policy import check_pattern

    problems = []
    for pattern in config.private_channels:
        try:
            check_pattern(pattern)
        except ValueError as error:
            problems.append(f"private-channel: {error}")
    for check, value in ((check_secret, config.subscribe_key),
                         (load_public_key, config.subscribe_public_key)):
        if value is not None:
            try:
                check(value)
            except ValueError as error:
                problems.append(str(error))
    if config.private_channels and not (config.subscribe_key or config.subscribe_public_key
                                        or config.auth_url):
        problems.append("private channels need a way to authorize subscribers: "
                        "--subscribe-key, --subscribe-public-key or --auth-url")
    if config.auth_url is not None and not config.auth_url.startswith(("http://", "https://")):
        problems.append("auth-url must be an http:// or https:// URL")
    if not 0 < config.auth_timeout <= 60:
        problems.append("auth-timeout must be above 0 and at most 60 seconds")
    if config.auth_cache_seconds < 0:
        problems.append("auth-cache-seconds must not be negative (0: no cache)")
    if not _COOKIE_NAME.fullmatch(config.token_cookie):
        problems.append("token-cookie must be a cookie name (RFC 6265: a token)")
    return problems


@dataclass(frozen=True)
class Option:
    name: str  # Config field
    help: str
    flag: str = ""
    repeatable: bool = False
    switch: bool = False
    metavar: Optional[str] = None
    parse: Callable[[str], Any] = str

    @property
    def cli(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return ENV_PREFIX + (self.flag or self.name).lstrip("-").replace("-", "_").upper()


OPTIONS: List[Option] = [
    Option("host", "address to listen on", metavar="ADDR"),
    Option("port", "port to listen on", parse=int),
    Option("redis_url", "Redis URL (redis://host:port/db); without it the embedded broker is used",
           metavar="URL"),
    Option("redis_sentinel", "sentinels to ask where the Redis master is, instead of an address "
           "in --redis-url (which then gives only its password, database and TLS: "
           "redis://:PASSWORD@/0); the gateway follows a failover", metavar="HOST:PORT[,...]"),
    Option("redis_sentinel_master", "the name the sentinels monitor the master under",
           metavar="NAME"),
    Option("redis_sentinel_password", "the sentinels' own password (their requirepass), if "
           "they have one", metavar="PASSWORD"),
    Option("prefix", "prefix of the Redis pub/sub channels and keys"),
    Option("publish_tokens", "bearer token accepted by POST /publish (repeatable; env: "
           "comma-separated); without any, publishing is allowed from loopback only",
           flag="--publish-token", repeatable=True, metavar="TOKEN"),
    Option("heartbeat", "seconds between keep-alive comments on every stream", parse=float),
    Option("retry", "reconnection delay hint sent to clients, in milliseconds", parse=int),
    Option("max_message_size", "largest accepted publish body, in bytes (and event of a "
           "batch)", parse=int),
    Option("max_publish_batch_size", "largest accepted batch publish body (POST /publish/), "
           "in bytes", parse=int),
    Option("max_pending", "events a subscriber may fall behind before it is disconnected",
           parse=int),
    Option("max_buffered_bytes", "bytes the process may hold for slow subscribers in all; "
           "over it, those holding the most are disconnected", parse=int),
    Option("max_channels", "most channels one request may subscribe to", parse=int),
    Option("poll_timeout", "longest time a long-poll is held, in seconds (clients may ask "
           "for less with ?timeout=)", parse=float),
    Option("max_batch", "most events in one long-poll answer", parse=int),
    Option("rotate_bytes", "bytes after which a padded (XHR/XDomainRequest) stream is ended "
           "for the client to reconnect", parse=int),
    Option("rotate_seconds", "seconds after which a padded stream is ended likewise",
           parse=float),
    Option("cors_origins", "origin allowed to subscribe with credentials (repeatable; env: "
           "comma-separated); without any, every origin may subscribe without credentials",
           flag="--cors-origin", repeatable=True, metavar="ORIGIN"),
    Option("publish_cors_origins", "origin whose pages may publish from the browser "
           "(repeatable); without any, the publish endpoint sends no CORS headers",
           flag="--publish-cors-origin", repeatable=True, metavar="ORIGIN"),
    Option("trusted_proxies", "proxy address or network whose X-Forwarded-For / X-Real-IP is "
           "believed (repeatable; env: comma-separated)", flag="--trusted-proxy",
           repeatable=True, metavar="ADDR"),
    Option("history_length", "events kept per channel for resume", parse=int),
    Option("history_age", "seconds an event is kept for resume", parse=float),
    Option("recent_events", "latest events each subscribed channel keeps in memory (at most "
           "--history-length) to answer resumes and polls without Redis; 0: none", parse=int),
    Option("recent_bytes", "bytes of encoded events each subscribed channel keeps in memory, "
           "at most; 0: none", parse=int),
    Option("unsubscribe_grace", "seconds a channel stays subscribed after its last local "
           "subscriber left, for those who come back (long-polls); 0: unsubscribe at once",
           parse=float),
    Option("shutdown_timeout", "seconds allowed for a graceful shutdown", parse=float),
    Option("max_connections", "most client connections one process holds open, streams "
           "included; a client beyond them is refused at once (0: the file-descriptor limit "
           "less a reserve of max(128, limit/16))", parse=int),
    Option("max_head_size", "largest request head (request line and headers), in bytes; "
           "larger gets 431 (414 for a request line alone)", parse=int),
    Option("header_timeout", "seconds a client has to send a request head (and again a "
           "request body) before the connection is closed", parse=float),
    Option("idle_timeout", "seconds a kept-alive connection may wait for its next request "
           "(keep it above a proxy's upstream keepalive_timeout, 60 s in nginx)", parse=float),
    Option("workers", "gateway processes sharing the port, e.g. one per core (above 1 needs "
           "--redis-url)", parse=int),
    Option("log_level", "debug, info, warning or error", metavar="LEVEL"),
    Option("log_format", "text (one line per record, for people) or json (one JSON object "
           "per line, for log collectors)", metavar="FORMAT"),
    Option("presence_interval", "seconds between writes of this process's subscriber counts "
           "to Redis, for GET /channels; a process that dies drops out of the counts within "
           "three of them", parse=float),
    Option("demo", "serve the demo chat page at /", switch=True),
    Option("private_channels", "channels that need authorization to subscribe, as shell-style "
           "patterns such as user.* (repeatable; env: comma-separated; * makes every channel "
           "private)", flag="--private-channel", repeatable=True, metavar="PATTERN"),
    Option("subscribe_key", "secret that signs tokens (HS256, 32 bytes at least)",
           metavar="SECRET"),
    Option("subscribe_public_key", "PEM file of the public key that verifies tokens (RS256, "
           "ES256 or EdDSA, by the key's type)", metavar="FILE"),
    Option("token_audience", "the `aud` claim tokens must carry", metavar="AUD"),
    Option("token_issuer", "the `iss` claim tokens must carry", metavar="ISS"),
    Option("token_cookie", "cookie that carries a subscriber's token", metavar="NAME"),
    Option("auth_url", "the application's URL that authorizes a subscriber without a valid "
           "token (POST, the channels in a JSON body, the client's Cookie and Authorization)",
           metavar="URL"),
    Option("auth_timeout", "seconds the application has to answer --auth-url", parse=float),
    Option("auth_cache_seconds", "seconds an answer of --auth-url is kept, per credentials and "
           "channels (0: not kept)", parse=float),
]


def defaults() -> Dict[str, Any]:
    return {f.name: f.default for f in fields(Config)}


def from_environment(environ=os.environ) -> Dict[str, Any]:
    """Settings given as SSE_GATEWAY_* variables; raises ValueError naming a bad one."""
    values: Dict[str, Any] = {}
    for option in OPTIONS:
        raw = environ.get(option.env)
        if raw is None or raw == "":
            continue
        try:
            if option.switch:
                values[option.name] = _parse_bool(raw)
            elif option.repeatable:
                values[option.name] = tuple(p.strip() for p in raw.split(",") if p.strip())
            else:
                values[option.name] = option.parse(raw)
        except ValueError:
            raise ValueError(f"{option.env}={raw!r} is not a valid value") from None
    return values


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise ValueError(raw)


__all__ = ["Config", "OPTIONS", "Option", "defaults", "from_environment"]
