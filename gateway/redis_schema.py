"""What the gateway keeps in Redis, shared by the gateway and its publishers (no gevent here).

Per channel `C` and key prefix `P`:
- stream `P` + `sse-gateway:history:` + `C`: the history, one entry per event, field `m`
  holding the message JSON (the entry's own id is the event id);
- pub/sub channel `P` + `sse-gateway/live/` + `C`: the gateway's own live events, each
  `<event id> <message JSON>`, published by `PUBLISH_SCRIPT` only;
- pub/sub channel `P` + `C`: raw messages (`redis-cli PUBLISH`, flask-sse publishers), which
  have no id and no history; whatever they carry, they never move a channel's position.

No channel name contains `/`, so no channel's raw pub/sub name is another's live one.

On a Redis Cluster (`--redis-cluster`) a channel's history stream and live channel must be
in one hash slot, so that the script, which writes both, runs on one shard. There the channel
is the hash tag of both names: `P` + `sse-gateway:history:{` + `C` + `}` and `P` +
`sse-gateway/live/{` + `C` + `}`, a sharded pub/sub channel (SSUBSCRIBE; the script sends it
with SPUBLISH). Channel names never contain braces, and the prefix must not either (Redis
hashes the first `{...}` of a name). A publisher in another language computes the same two
names and sends the EVAL or EVALSHA to the node that owns the slot (any cluster client does,
routing by KEYS[1]); the events of one batch must all be of one slot. Raw messages keep the
classic pub/sub name `P` + `C` (a cluster forwards a classic PUBLISH to every node).
Single-Redis names are unchanged.

`PUBLISH_SCRIPT` checks the message, then appends it to the history and publishes it live in
one atomic step, so no subscriber can see an event that history lacks, or the reverse. Any
language can run it with EVAL: KEYS[1] = history key, ARGV = live channel, message JSON object,
max length, max age (ms). It returns `[event id, number of gateway processes that received it]`,
or refuses with an error reply that starts with `INVALID` and stores nothing.

The same script publishes a batch, still in one atomic step: KEYS[1..n] the history key of each
event, ARGV the live channel and message of each event in turn, then max length and max age;
it returns `[id 1, receivers 1, id 2, receivers 2, ...]`, in the events' order, or refuses the
whole batch (`INVALID item <i>: ...`, counted from 0) and stores none of it.
"""

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from .ids import ZERO, EventId, HistoryBounds, parse_id

HISTORY_KEY = "sse-gateway:history:"
_PART_MAX = 2**64 - 1  # as ids.parse_id: both parts of a stream id are unsigned 64-bit
LIVE_CHANNEL = "sse-gateway/live/"
REFUSED = "INVALID"
CHECKED = "checked"

# What the script cannot check is checked again when the gateway reads it (message.py):
# UTF-8 of the raw bytes (a Lua pattern scan costs about 60 ns a byte on Redis' one thread,
# so 4 ms for a 64 KB message) and a `retry` written as a float (cjson reads 3000.0 as 3000).
PUBLISH_SCRIPT = r"""
local n = #KEYS
-- A caller that checked its messages by the gateway's own rules (message.py, stricter than
-- this script's) says so in a last argument, and the messages are not decoded again here.
local checked = #ARGV == 2 * n + 3 and ARGV[2 * n + 3] == 'checked'
if n == 0 or (#ARGV ~= 2 * n + 2 and not checked) then
  return redis.error_reply('INVALID give KEYS[1..n] and ARGV live channel and message for each '
    .. 'key, then max length and max age')
end
local maxlen, age = tonumber(ARGV[2 * n + 1]), tonumber(ARGV[2 * n + 2])
local function finite(value)
  if type(value) == 'number' then
    return value == value and value ~= math.huge and value ~= -math.huge
  elseif type(value) == 'table' then
    for _, item in pairs(value) do
      if not finite(item) then return false end
    end
  end
  return true
end
local sharded = {}
-- Why message i cannot be stored, or nil.
local function problem(key, live, message)
  -- One channel's names: <P>sse-gateway:history:<C> and <P>sse-gateway/live/<C>, C without '/'
  -- (or {C} in both, on a Redis Cluster).
  local channel = string.match(live, '[^/]*$')
  local prefix = string.sub(live, 1, #live - #channel - 17)
  if string.sub(live, #prefix + 1, #prefix + 17) ~= 'sse-gateway/live/'
      or key ~= prefix .. 'sse-gateway:history:' .. channel then
    return 'KEYS[1] and ARGV[1] must be <prefix>sse-gateway:history:<channel> and '
      .. '<prefix>sse-gateway/live/<channel>'
  end
  -- On a Redis Cluster the channel is the names' hash tag, {C}: both share one slot, and the
  -- event goes by sharded pub/sub (SPUBLISH) to the subscribers of that slot's shard only.
  if string.find(channel, '^{.*}$') then
    channel = string.sub(channel, 2, -2)
    sharded[live] = true
  end
  if #channel > 128 or not string.find(channel, '^[%w_.:%-]+$') then
    return 'invalid channel name: use 1-128 of A-Z a-z 0-9 _ . : -'
  end
  if checked then
    return nil
  end
  -- cjson refuses invalid JSON, nesting beyond 1000 and \u escapes of lone surrogates.
  local ok, body = pcall(cjson.decode, message)
  if not ok then
    return 'the message is not JSON: ' .. tostring(body)
  end
  if type(body) ~= 'table' or not string.find(message, '^%s*{') then
    return 'the message must be a JSON object with a string data field'
  end
  if not finite(body) then
    return 'NaN and Infinity are not JSON numbers'
  end
  if type(body.data) ~= 'string' then
    return "'data' is required and must be a string"
  end
  for _, name in ipairs({'type', 'event', 'id'}) do
    local value = body[name]
    if value ~= nil and value ~= cjson.null
        and (type(value) ~= 'string' or string.find(value, '[\r\n%z]')) then
      return "'" .. name .. "' must be a string without CR, LF or NUL"
    end
  end
  local retry = body.retry
  if retry ~= nil and retry ~= cjson.null and (type(retry) ~= 'number'
      or not (retry >= 0 and retry <= 86400000) or retry % 1 ~= 0) then
    return "'retry' must be an integer number of milliseconds, 0 to 86400000"
  end
  return nil
end
-- Every message is checked before any is stored: a batch is stored whole or not at all.
for i = 1, n do
  local why = problem(KEYS[i], ARGV[2 * i - 1], ARGV[2 * i])
  if why then
    return redis.error_reply('INVALID ' .. (n > 1 and ('item ' .. (i - 1) .. ': ') or '') .. why)
  end
end
local reply, last, order = {}, {}, {}
for i = 1, n do
  local key, live, message = KEYS[i], ARGV[2 * i - 1], ARGV[2 * i]
  local id = redis.call('XADD', key, '*', 'm', message)
  reply[2 * i - 1] = id
  reply[2 * i] = redis.call(sharded[live] and 'SPUBLISH' or 'PUBLISH', live, id .. ' ' .. message)
  if not last[key] then order[#order + 1] = key end
  last[key] = id
end
-- Trimmed once per channel, after its events are in. Redis records only XDEL in
-- max-deleted-entry-id, not trimming; resume needs to know what was trimmed, so the script
-- trims exactly and records the largest trimmed id itself.
local now = redis.call('TIME')
local oldest_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - age
local oldest = string.format('%d-0', oldest_ms)
for _, key in ipairs(order) do
  local trimmed = nil
  local excess = redis.call('XLEN', key) - maxlen
  if excess > 0 then
    -- The entries over the length: the last of them is the largest trimmed.
    trimmed = redis.call('XRANGE', key, '-', '+', 'COUNT', excess)[excess][1]
    redis.call('XTRIM', key, 'MAXLEN', maxlen)
  end
  -- Whether the first entry left has expired, read from the front: the reply is empty when
  -- it has not (the usual case, and no message is copied), and only then is the last expired
  -- entry looked for (a reverse range that starts before every entry walks the whole stream).
  if oldest_ms > 0 and redis.call('XRANGE', key, '-', '(' .. oldest, 'COUNT', 1)[1] then
    trimmed = redis.call('XREVRANGE', key, '(' .. oldest, '-', 'COUNT', 1)[1][1]
    redis.call('XTRIM', key, 'MINID', oldest)
  end
  if trimmed then
    redis.call('XSETID', key, last[key], 'MAXDELETEDID', trimmed)
  end
  redis.call('PEXPIRE', key, age)
end
return reply
"""

# Records, after a loss that nothing else recorded (a failover to a replica that had not
# received the last writes), that the history lost the entries up to ARGV[1]: as its largest
# deleted id, so that a resume from before it is told of the loss, and as its last id, so
# that no later event is given an id at or below one that subscribers may have seen.
# KEYS[1] = history key; returns 1, or 0 when there is no such stream.
LOST_SCRIPT = r"""
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local fields = {}
for i = 1, #info, 2 do
  fields[info[i]] = info[i + 1]
end
local function later(a, b)
  local ams, aseq = string.match(a, '^(%d+)-(%d+)$')
  local bms, bseq = string.match(b, '^(%d+)-(%d+)$')
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams > bms or (ams == bms and aseq > bseq)
end
local lost = ARGV[1]
local last, deleted = fields['last-generated-id'], fields['max-deleted-entry-id']
if later(lost, last) then last = lost end
if later(lost, deleted) then deleted = lost end
redis.call('XSETID', KEYS[1], last, 'MAXDELETEDID', deleted)
return 1
"""


def history_key(prefix: str, channel: str, cluster: bool = False) -> str:
    """The channel's history stream; `cluster`: with the channel as hash tag (see above)."""
    return f"{prefix}{HISTORY_KEY}{{{channel}}}" if cluster else f"{prefix}{HISTORY_KEY}{channel}"


def live_channel(prefix: str, channel: str, cluster: bool = False) -> str:
    """The channel's live pub/sub name; `cluster`: a sharded one, with the channel as hash tag."""
    return f"{prefix}{LIVE_CHANNEL}{{{channel}}}" if cluster else f"{prefix}{LIVE_CHANNEL}{channel}"


def publish_args(
    prefix: str, channel: str, message_json: str, max_length: int, max_age_ms: int,
    cluster: bool = False,
) -> Tuple[List[str], List[Any]]:
    """KEYS and ARGV for PUBLISH_SCRIPT."""
    return ([history_key(prefix, channel, cluster)],
            [live_channel(prefix, channel, cluster), message_json, max_length, max_age_ms])


def publish_many_args(
    prefix: str, messages: Sequence[Tuple[str, Union[str, bytes]]], max_length: int,
    max_age_ms: int,
    checked: bool = False,
    cluster: bool = False,
) -> Tuple[List[str], List[Any]]:
    """KEYS and ARGV for PUBLISH_SCRIPT with several events: `(channel, message JSON)` each.

    `checked`: the messages were built by message.py, so the script need not decode them.
    `cluster`: the names of a Redis Cluster; all the events must then be of one hash slot.
    """
    if cluster:
        keys = [f"{prefix}{HISTORY_KEY}{{{channel}}}" for channel, _ in messages]
        lives = [f"{prefix}{LIVE_CHANNEL}{{{channel}}}" for channel, _ in messages]
    else:
        keys = [f"{prefix}{HISTORY_KEY}{channel}" for channel, _ in messages]
        lives = [f"{prefix}{LIVE_CHANNEL}{channel}" for channel, _ in messages]
    args: List[Any] = []
    for live, (_, message_json) in zip(lives, messages):
        args.append(live)
        args.append(message_json)
    args += [max_length, max_age_ms]
    if checked:
        args.append(CHECKED)
    return keys, args


def refusal(error: Exception) -> Optional[str]:
    """Why the script refused a message, if `error` (its error reply) is a refusal."""
    text = str(error)
    return text[len(REFUSED) + 1:] if text.startswith(REFUSED + " ") else None


def split_live(payload: bytes) -> Tuple[EventId, bytes]:
    """The event id and the message of a live payload; ValueError if it has no valid id."""
    head, _, message = payload.partition(b" ")
    event_id = _bytes_id(head)
    if event_id is None:
        raise ValueError(f"a live message must start with an event id, not {head[:40]!r}")
    return event_id, message


def parse_publish_reply(reply: List[Any]) -> Tuple[EventId, int]:
    raw_id, receivers = reply
    return parse_stream_id(raw_id), int(receivers)


def parse_publish_many_reply(reply: List[Any]) -> List[Tuple[EventId, int]]:
    return [(parse_stream_id(reply[i]), int(reply[i + 1])) for i in range(0, len(reply), 2)]


def parse_stream_id(raw: Any) -> EventId:
    event_id = _bytes_id(raw) if isinstance(raw, bytes) else parse_id(_text(raw))
    if event_id is None:
        raise ValueError(f"not a stream id: {raw!r}")
    return event_id


def _bytes_id(raw: bytes) -> Optional[EventId]:
    """`ids.parse_id` for bytes, without decoding them first (it runs once per live message)."""
    ms, dash, seq = raw.partition(b"-")
    # bytes.isdigit is true for ASCII digits only; int() alone would take "+1", " 1", "1_0".
    if not (dash and ms.isdigit() and seq.isdigit() and len(ms) <= 20 and len(seq) <= 20):
        return None
    event_id = int(ms), int(seq)
    return event_id if event_id[0] <= _PART_MAX and event_id[1] <= _PART_MAX else None


def bounds_from_xinfo(info: Optional[Dict[Any, Any]]) -> HistoryBounds:
    """HistoryBounds from redis-py's XINFO STREAM reply (None when the key does not exist)."""
    if not info:
        return HistoryBounds(exists=False)
    if b"last-generated-id" in info:  # unparsed (redis-py's cluster transactions): bytes keys
        info = {key.decode("ascii"): value for key, value in info.items()}
    first_entry = info.get("first-entry")
    return HistoryBounds(
        exists=True,
        first=_id_or_zero(first_entry[0] if first_entry else None),
        last=_id_or_zero(info.get("last-generated-id")),
        max_deleted=_id_or_zero(info.get("max-deleted-entry-id")),
    )


def entry_payload(fields: Union[Dict[Any, Any], List[Any]]) -> Optional[bytes]:
    """An entry's message; `fields` as redis-py parses them, or the flat list Redis sends."""
    if isinstance(fields, list):
        fields = dict(zip(fields[::2], fields[1::2]))
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
