"""What the gateway keeps in Redis, shared by the gateway and its publishers (no gevent here).

Per channel `C` and key prefix `P`:
- pub/sub channel `P` + `C`: live messages, JSON; the gateway's carry `stream_id`;
- stream `P` + `sse-gateway:history:` + `C`: the history, one entry per event, field `m`
  holding the message JSON without `stream_id` (the entry's own id is the event id).

`PUBLISH_SCRIPT` appends to the history and publishes in one atomic step, so no subscriber
can see an event that history lacks, or the reverse. Any language can run it with EVAL:
KEYS[1] = history key, ARGV = pub/sub channel, message JSON object, max length, max age (ms).
It returns `[event id, number of gateway processes that received it]`.
"""

from typing import Any, Dict, List, Optional, Tuple

from .ids import ZERO, EventId, HistoryBounds, parse_id

HISTORY_KEY = "sse-gateway:history:"

PUBLISH_SCRIPT = """
local key, maxlen, age = KEYS[1], tonumber(ARGV[3]), tonumber(ARGV[4])
local id = redis.call('XADD', key, '*', 'm', ARGV[2])
-- Redis records only XDEL in max-deleted-entry-id, not trimming; resume needs to know what
-- was trimmed, so the script trims exactly and records the largest trimmed id itself.
local trimmed = nil
local excess = redis.call('XLEN', key) - maxlen
if excess > 0 then
  local doomed = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)
  trimmed = doomed[#doomed][1]
  redis.call('XTRIM', key, 'MAXLEN', maxlen)
end
local now = redis.call('TIME')
local oldest = string.format('%d-0', tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - age)
local expired = redis.call('XREVRANGE', key, '(' .. oldest, '-', 'COUNT', 1)
if #expired > 0 then
  trimmed = expired[1][1]
  redis.call('XTRIM', key, 'MINID', oldest)
end
if trimmed then
  redis.call('XSETID', key, id, 'MAXDELETEDID', trimmed)
end
redis.call('PEXPIRE', key, age)
local receivers = redis.call('PUBLISH', ARGV[1], '{"stream_id":"' .. id .. '",' .. string.sub(ARGV[2], 2))
return {id, receivers}
"""


def history_key(prefix: str, channel: str) -> str:
    return f"{prefix}{HISTORY_KEY}{channel}"


def publish_args(
    prefix: str, channel: str, message_json: str, max_length: int, max_age_ms: int
) -> Tuple[List[str], List[Any]]:
    """KEYS and ARGV for PUBLISH_SCRIPT."""
    return [history_key(prefix, channel)], [prefix + channel, message_json, max_length, max_age_ms]


def parse_publish_reply(reply: List[Any]) -> Tuple[EventId, int]:
    raw_id, receivers = reply
    return parse_stream_id(raw_id), int(receivers)


def parse_stream_id(raw: Any) -> EventId:
    event_id = parse_id(_text(raw))
    if event_id is None:
        raise ValueError(f"not a stream id: {raw!r}")
    return event_id


def bounds_from_xinfo(info: Optional[Dict[Any, Any]]) -> HistoryBounds:
    """HistoryBounds from redis-py's XINFO STREAM reply (None when the key does not exist)."""
    if not info:
        return HistoryBounds(exists=False)
    first_entry = info.get("first-entry")
    return HistoryBounds(
        exists=True,
        first=_id_or_zero(first_entry[0] if first_entry else None),
        last=_id_or_zero(info.get("last-generated-id")),
        max_deleted=_id_or_zero(info.get("max-deleted-entry-id")),
    )


def entry_payload(fields: Dict[Any, Any]) -> Optional[bytes]:
    value = fields.get(b"m", fields.get("m"))
    if value is None:
        return None
    return value if isinstance(value, bytes) else str(value).encode("utf-8")


def _id_or_zero(value: Any) -> EventId:
    if value is None:
        return ZERO
    return parse_id(_text(value)) or ZERO


def _text(value: Any) -> str:
    return value.decode("ascii") if isinstance(value, bytes) else str(value)
