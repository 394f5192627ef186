"""Publishing from any Python program (Flask, Django, a script), with no gevent needed.

    from gateway import Publisher
    Publisher("redis://127.0.0.1:6379/0").publish("chat", {"q": 1}, event="new_answer")

A `redis://` (or `rediss://`, `unix://`) URL publishes straight into Redis with the gateway's
atomic history-and-publish script; an `http(s)://` URL posts to a running gateway.
"""

import json
from typing import Any, Dict, Optional

from . import redis_schema
from .ids import format_id
from .message import InvalidMessage, build_message, check_channel

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


class PublishError(Exception):
    """The event was not published; the text says why."""


class Publisher:
    def __init__(
        self,
        url: str = "http://127.0.0.1:8080",
        prefix: str = "",
        token: Optional[str] = None,
        history_length: int = 1000,
        history_age: float = 3600.0,
        timeout: float = 5.0,
    ) -> None:
        """`prefix`, `history_length` and `history_age` must match the gateway's settings."""
        self.url = url
        self._prefix = prefix
        self._token = token
        self._timeout = timeout
        self._limits = (history_length, int(history_age * 1000))
        self._script = None
        if url.startswith(_REDIS_SCHEMES):
            import redis

            client = redis.Redis.from_url(url, socket_connect_timeout=timeout,
                                          socket_timeout=timeout)
            self._script = client.register_script(redis_schema.PUBLISH_SCRIPT)
            self._redis_error = redis.RedisError
            self._redis_refusal = redis.ResponseError
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
        if self._script is not None:
            return self._publish_redis(message)
        return self._publish_http(channel, message.to_json())

    def _publish_redis(self, message) -> Dict[str, Any]:
        keys, args = redis_schema.publish_args(self._prefix, message.channel, message.to_json(),
                                               *self._limits)
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
        # Imported here: urllib pulls in ssl, which must not load before gevent patches it.
        import urllib.error
        import urllib.request

        request = urllib.request.Request(
            f"{self.url.rstrip('/')}/publish/{channel}",
            data=body.encode("utf-8"),
            headers={"Content-Type": "application/json"},
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
