"""What a subscribe request asks for, read from its query and headers without any web framework.

Shared by the event-stream and long-poll endpoints (both bare WSGI), as is the rule for
answering while the broker is down.
"""

import json
import logging
import random
import re
from typing import Dict, List, Optional, Protocol, Tuple
from urllib.parse import unquote_plus

from .hub import Hub, Subscriber
from .message import InvalidMessage, Message, check_channel
from .transports import Session

log = logging.getLogger(__name__)

LAST_EVENT_ID_PARAMS = ("lastEventId", "last_event_id", "evs_last_event_id")
# Old IE caches GET responses unless told otherwise in every way it understands.
UNCACHEABLE = {
    "Cache-Control": "no-cache, no-store",
    "Pragma": "no-cache",
    "Expires": "Thu, 01 Jan 1970 00:00:00 GMT",
}
# The least reconnection delay asked for while the broker is down, whatever --retry says.
OUTAGE_MIN_RETRY = 1000
# Numbers in a query, as a client's number-to-text writes them (JavaScript's included): ASCII
# digits, a fraction, an exponent; never Python's extras (`1_0`, spaces, other scripts' digits).
_WHOLE = re.compile(r"[0-9]{1,18}")
_DECIMAL = re.compile(r"[0-9]{1,18}(\.[0-9]{1,18})?([eE][+-]?[0-9]{1,3})?")


class Args(Protocol):
    """A multi-valued query mapping, as werkzeug's MultiDict."""

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]: ...

    def getlist(self, key: str) -> List[str]: ...

    def __contains__(self, key: object) -> bool: ...


class Query:
    """A query string's parameters, as `Args`: cheaper to build than werkzeug's MultiDict."""

    __slots__ = ("_values",)

    def __init__(self, query: str) -> None:
        self._values: Dict[str, List[str]] = {}
        # As parse_qsl(query, keep_blank_values=True), at a fraction of its cost (a long-poll
        # reads a query per answer): escapes are decoded only where there are any.
        for part in query.split("&") if query else ():
            if not part:
                continue
            name, _, value = part.partition("=")
            if "%" in part or "+" in part:
                name, value = unquote_plus(name), unquote_plus(value)
            self._values.setdefault(name, []).append(value)

    def get(self, key: str, default: Optional[str] = None) -> Optional[str]:
        values = self._values.get(key)
        return values[0] if values else default

    def getlist(self, key: str) -> List[str]:
        return list(self._values.get(key, ()))

    def __contains__(self, key: object) -> bool:
        return key in self._values


class ApiError(Exception):
    """A request the client must fix (or a service that cannot serve): status and JSON body."""

    def __init__(self, status: int, error: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.error, self.detail = status, error, detail

    def body(self) -> bytes:
        return json.dumps({"error": self.error, "detail": self.detail},
                          ensure_ascii=False).encode("utf-8")


def checked_channel(name: str) -> str:
    try:
        return check_channel(name)
    except InvalidMessage as error:
        raise ApiError(400, "invalid channel", str(error)) from None


def channels(path_channel: Optional[str], args: Args, limit: int) -> List[str]:
    names = [path_channel] if path_channel is not None else args.getlist("channel")
    if not names:
        raise ApiError(400, "no channel", "name a channel: /events/<channel> or ?channel=a&channel=b")
    if len(names) > limit:
        raise ApiError(400, "too many channels", f"at most {limit} channels per request")
    return list(dict.fromkeys(checked_channel(name) for name in names))


def last_event_id(header: Optional[str], args: Args) -> Optional[str]:
    """The header (what browsers send) wins over the query (what polyfills send)."""
    value = header
    if value is None:
        for name in LAST_EVENT_ID_PARAMS:
            value = args.get(name)
            if value is not None:
                break
    return value or None


def wants_padding(args: Args) -> bool:
    return (
        args.get("transport") == "stream"
        or (args.get("padding") or "").lower() in ("1", "true")
        or "evs_preamble" in args
    )


def number_arg(args: Args, name: str, default: float, maximum: float,
               integer: bool = False) -> float:
    raw = args.get(name)
    if raw is None:
        return default
    value = -1.0
    if (_WHOLE if integer else _DECIMAL).fullmatch(raw):
        value = int(raw) if integer else float(raw)
    low = 1 if integer else 0
    if not low <= value <= maximum:
        kind = "whole number" if integer else "number"
        raise ApiError(400, f"invalid {name}", f"{name} must be a {kind} from {low} to {maximum:g}")
    return value


def open_session(hub: Hub, subscriber: Subscriber, cursor: Optional[str],
                 limit: Optional[int] = None) -> Tuple[Session, List[Message]]:
    """Attach a new session and read its backlog (at most `limit` events of each channel's
    history).

    Raises BrokerUnavailable, with nothing left attached, when the broker cannot serve; the
    caller then answers with a retry hint (`outage_retry`), never with an error status.
    """
    session = Session(hub, subscriber)
    return session, session.open(cursor, limit)


def outage_retry(retry_ms: int) -> int:
    """The reconnection delay, in ms, to ask of a client turned away while the broker is down.

    At random from the --retry delay (at least OUTAGE_MIN_RETRY) to twice that: clients turned
    away together then come back spread out, not all at once, and more so at every round.
    """
    base = max(retry_ms, OUTAGE_MIN_RETRY)
    return base + random.randint(0, base)
