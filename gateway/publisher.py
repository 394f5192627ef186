"""Publishing from any Python program (Flask, Django, a script), with no gevent needed.

    from gateway import Publisher
    Publisher("redis://127.0.0.1:6379/0").publish("chat", {"q": 1}, event="new_answer")
    Publisher("redis://127.0.0.1:6379/0").publish_many(
        [{"channel": f"user.{n}", "data": "hi"} for n in range(1000)])

A `redis://` (or `rediss://`, `unix://`) URL publishes straight into Redis with the gateway's
atomic history-and-publish script; an `http(s)://` URL posts to a running gateway. Under Redis
Sentinel, name the sentinels and the master; the URL then gives only the master's password,
database and TLS, and every publish goes to whichever server the sentinels name master now:

    Publisher("redis://:PASSWORD@/0", sentinels=["10.0.0.1:26379", "10.0.0.2:26379"],
              master="mymaster").publish("chat", "hi")
"""

import json
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

from . import redis_schema
from .batch import InvalidItem, item_message
from .brokers.endpoints import RedisEndpoint, parse_addresses
from .ids import format_id
from .message import InvalidMessage, Message, build_message, check_channel

#: Events per script call (each call is one atomic step, run whole by Redis) and per HTTP batch.
CHUNK_EVENTS = 500
#: Most bytes of events in one HTTP batch: under the gateway's default batch limit (1 MiB).
CHUNK_BYTES = 512 * 1024

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
DEFAULT_URL = "http://127.0.0.1:8080"


class PublishError(Exception):
    """The event was not published; the text says why. For `publish_many`, `published` holds
    the results of the events published before the failure (the first ones, in order)."""

    def __init__(self, text: str, published: Sequence[Dict[str, Any]] = ()) -> None:
        super().__init__(text)
        self.published = list(published)


class Publisher:
    def __init__(
        self,
        url: Optional[str] = None,
        prefix: str = "",
        token: Optional[str] = None,
        history_length: int = 1000,
        history_age: float = 3600.0,
        timeout: float = 5.0,
        *,
        sentinels: Union[str, Sequence[Union[str, Tuple[str, int]]]] = (),
        master: Optional[str] = None,
        sentinel_password: Optional[str] = None,
        cluster: bool = False,
        max_message_size: int = 65536,
    ) -> None:
        """`url`: by default the gateway at http://127.0.0.1:8080 (`redis://` under Sentinel).
        `prefix`, `history_length`, `history_age` and `max_message_size` must match the
        gateway's settings (an event whose JSON is larger is refused here: the gateway would
        not deliver it).

        `sentinels` (`"host:port,host:port"`, or a sequence of `"host:port"` or pairs) and
        `master`: publish to the master the sentinels name, asked again on every new
        connection, so publishing follows a failover. A publish is never sent twice: one
        whose reply a failover cut off raises PublishError (it may have been stored or not),
        and the next one goes to the new master. `url` is then `redis://` or
        `rediss://` without an address, e.g. `redis://:PASSWORD@/0`.

        `cluster`: the `redis://` URL names nodes of a Redis Cluster, comma-separated.
        """
        if sentinels or master or sentinel_password:
            url = url or "redis://"
            if isinstance(sentinels, str):
                sentinels = [sentinels]
            addresses = tuple(pair for item in sentinels for pair in (
                parse_addresses(item) if isinstance(item, str) else [(item[0], int(item[1]))]))
            endpoint = RedisEndpoint(url, addresses, master, sentinel_password)
        else:
            url = url or DEFAULT_URL
            endpoint = (RedisEndpoint(url, cluster=cluster) if url.startswith(_REDIS_SCHEMES)
                        else None)
        self.url = url
        self._prefix = prefix
        self._token = token
        self._timeout = timeout
        self._limits = (history_length, int(history_age * 1000))
        self._max_message_size = max_message_size
        self._script = None
        self._cluster = cluster
        if endpoint is not None:
            import redis

            try:
                client = endpoint.client(socket_connect_timeout=timeout, socket_timeout=timeout)
            except redis.RedisError as error:  # a cluster's nodes are asked at once
                from .cluster_nodes import credentials_refused

                refusal = credentials_refused(url, timeout)
                if refusal is not None:
                    raise PublishError(f"the Redis Cluster refused the credentials of the URL "
                                       f"({refusal})") from None
                raise PublishError(f"no node of the Redis Cluster answered: {error}") from None
            self._client = client
            self._script = client.register_script(redis_schema.PUBLISH_SCRIPT)
            self._redis_error = (redis.RedisError, redis.exceptions.RedisClusterException)
            self._redis_refusal = redis.ResponseError
            self._no_script = redis.exceptions.NoScriptError
        elif not url.startswith(("http://", "https://")):
            raise ValueError(f"unsupported URL {url!r}: use redis://, rediss://, unix:// or http(s)://")

    def publish(
        self,
        channel: str,
        data: Any,
        event: Optional[str] = None,
        id: Optional[str] = None,
        retry: Optional[int] = None,
    ) -> Dict[str, Any]:
        """Publish one event; returns `{"channel", "id", "receivers"}`.

        Raises ValueError for an invalid channel or field, PublishError when not delivered.
        """
        try:
            check_channel(channel)
            message = build_message(channel, data, event, id, retry)
        except InvalidMessage as error:
            raise ValueError(str(error)) from None
        payload = self._checked_json(message, "")
        if self._script is not None:
            return self._publish_redis(message, payload)
        return self._publish_http(channel, payload)

    def publish_many(self, events: Iterable[Mapping[str, Any]]) -> List[Dict[str, Any]]:
        """Publish many events, in order: each a mapping with `channel` and `data`, and
        optionally `event` (or `type`), `id` and `retry`, as in the gateway's batch format.
        Returns `{"channel", "id", "receivers"}` for each (over http://, without `receivers`).

        Every event is checked before any is sent: a bad one raises ValueError naming its
        index (`item 3: ...`), and nothing is published. They go in chunks of CHUNK_EVENTS,
        each one atomic step like `publish` (over redis://, all chunks in one round trip):
        should one fail, PublishError carries the results of the chunks published before it.
        """
        messages, payloads = [], []
        for index, event in enumerate(events):
            try:
                messages.append(item_message(index, dict(event)))
            except InvalidItem as error:
                raise ValueError(str(error)) from None
            payloads.append(self._checked_json(messages[-1], f"item {index}: "))
        if self._script is not None:
            return self._publish_many_redis(messages, payloads)
        return self._publish_many_http(messages, payloads)

    def _checked_json(self, message: Message, where: str) -> str:
        """The message's JSON, as it is published; ValueError if the gateway would refuse it."""
        payload = message.to_json()
        size = len(payload.encode("utf-8"))
        if size > self._max_message_size:
            raise ValueError(f"{where}the event's JSON is {size} bytes, more than max_message_size "
                             f"({self._max_message_size}, the gateway's --max-message-size)")
        return payload

    def _publish_many_redis(self, messages: List[Message],
                            payloads: List[str]) -> List[Dict[str, Any]]:
        if self._cluster:
            return self._publish_many_cluster(messages, payloads)
        starts = range(0, len(messages), CHUNK_EVENTS)
        chunks = [messages[i:i + CHUNK_EVENTS] for i in starts]
        items = [[(m.channel, payload) for m, payload in zip(chunk, payloads[i:])]
                 for i, chunk in zip(starts, chunks)]
        replies: List[Any] = [None] * len(chunks)
        todo = list(range(len(chunks)))
        for attempt in range(2):
            try:
                with self._client.pipeline(transaction=False) as pipe:
                    for number in todo:
                        keys, args = redis_schema.publish_many_args(
                            self._prefix, items[number], *self._limits, checked=True,
                            cluster=self._cluster)
                        pipe.evalsha(self._script.sha, len(keys), *keys, *args)
                    for number, reply in zip(todo, pipe.execute(raise_on_error=False)):
                        replies[number] = reply
            except self._redis_error as error:
                raise PublishError(f"Redis did not take the events: {error}",
                                   self._results(chunks, replies)) from None
            # Redis forgot the script (it restarted, or SCRIPT FLUSH): load it, send those again.
            todo = [n for n in todo if isinstance(replies[n], self._no_script)]
            if not todo or attempt:
                break
            self._client.script_load(redis_schema.PUBLISH_SCRIPT)
        for number, reply in enumerate(replies):
            if isinstance(reply, Exception):
                raise PublishError(f"Redis did not take the events from {number * CHUNK_EVENTS} "
                                   f"on: {reply}", self._results(chunks[:number], replies))
        return self._results(chunks, replies)

    def _publish_many_cluster(self, messages: List[Message],
                              payloads: List[str]) -> List[Dict[str, Any]]:
        """As on one Redis, but a chunk holds the events of one hash slot (the script runs on
        one shard): atomic per slot. Should a chunk fail, PublishError carries the results of
        the chunks published before it, in their order (not the events')."""
        from redis.crc import key_slot

        by_slot: Dict[int, List[int]] = {}
        for index, message in enumerate(messages):
            key = redis_schema.history_key(self._prefix, message.channel, cluster=True)
            by_slot.setdefault(key_slot(key.encode("utf-8")), []).append(index)
        order = [index for indices in by_slot.values() for index in indices]
        results: List[Dict[str, Any]] = [{} for _ in messages]
        published = 0
        for indices in by_slot.values():
            for start in range(0, len(indices), CHUNK_EVENTS):
                chunk = indices[start:start + CHUNK_EVENTS]
                keys, args = redis_schema.publish_many_args(
                    self._prefix, [(messages[i].channel, payloads[i]) for i in chunk],
                    *self._limits, checked=True, cluster=True)
                try:
                    reply = self._script(keys=keys, args=args)
                except self._redis_error as error:
                    raise PublishError(f"Redis did not take the events: {error}",
                                       [results[i] for i in order[:published]]) from None
                for index, (event_id, receivers) in zip(
                        chunk, redis_schema.parse_publish_many_reply(reply)):
                    results[index] = {"channel": messages[index].channel,
                                      "id": format_id(event_id), "receivers": receivers}
                published += len(chunk)
        return results

    @staticmethod
    def _results(chunks: List[List[Message]], replies: List[Any]) -> List[Dict[str, Any]]:
        results = []
        for chunk, reply in zip(chunks, replies):
            if reply is None or isinstance(reply, Exception):
                break
            for message, (event_id, receivers) in zip(
                    chunk, redis_schema.parse_publish_many_reply(reply)):
                results.append({"channel": message.channel, "id": format_id(event_id),
                                "receivers": receivers})
        return results

    def _publish_many_http(self, messages: List[Message],
                           payloads: List[str]) -> List[Dict[str, Any]]:
        results: List[Dict[str, Any]] = []
        lines: List[bytes] = []
        size = 0
        for number, (message, payload) in enumerate(zip(messages, payloads)):
            line = ('{"channel":"%s",%s\n' % (message.channel, payload[1:])).encode("utf-8")
            if lines and (len(lines) == CHUNK_EVENTS or size + len(line) > CHUNK_BYTES):
                results += self._post_batch(b"".join(lines), messages[number - len(lines):number],
                                            results)
                lines, size = [], 0
            lines.append(line)
            size += len(line)
        if lines:
            results += self._post_batch(b"".join(lines), messages[len(messages) - len(lines):],
                                        results)
        return results

    def _post_batch(self, body: bytes, messages: List[Message],
                    published: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        try:
            answer = self._post("/publish/", body, "application/x-ndjson")
        except PublishError as error:
            raise PublishError(str(error), published) from None
        return [{"channel": message.channel, "id": event_id}
                for message, event_id in zip(messages, answer["ids"])]

    def _publish_redis(self, message: Message, payload: str) -> Dict[str, Any]:
        keys, args = redis_schema.publish_args(self._prefix, message.channel, payload,
                                               *self._limits, cluster=self._cluster)
        try:
            reply = self._script(keys=keys, args=args)
        except self._redis_refusal as error:
            why = redis_schema.refusal(error)
            if why is not None:
                raise ValueError(why) from None
            raise PublishError(f"Redis did not take the event: {error}") from None
        except self._redis_error as error:
            raise PublishError(f"Redis did not take the event: {error}") from None
        event_id, receivers = redis_schema.parse_publish_reply(reply)
        return {"channel": message.channel, "id": format_id(event_id), "receivers": receivers}

    def _publish_http(self, channel: str, body: str) -> Dict[str, Any]:
        return self._post(f"/publish/{channel}", body.encode("utf-8"), "application/json")

    def _post(self, path: str, body: bytes, content_type: str) -> Dict[str, Any]:
        # Imported here: urllib pulls in ssl, which must not load before gevent patches it.
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            f"{self.url.rstrip('/')}{path}",
            data=body,
            headers={"Content-Type": content_type},
            method="POST",
        )
        if self._token:
            request.add_header("Authorization", f"Bearer {self._token}")
        try:
            with urllib.request.urlopen(request, timeout=self._timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            raise PublishError(f"the gateway answered {error.code}: {_detail(error)}") from None
        except (urllib.error.URLError, OSError) as error:
            raise PublishError(f"could not reach the gateway at {self.url}: {error}") from None


def _detail(error) -> str:
    try:
        body = json.loads(error.read())
        return f"{body.get('error')}: {body.get('detail')}"
    except ValueError:
        return error.reason
