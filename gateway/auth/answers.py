"""What a client sees of authorization, on each transport: refusals, and a grant's expiry.

- A native stream or a JSON long-poll is refused with its status, 401 or 403, and a JSON body.
- The padded stream (XHR and XDomainRequest) and a JSONP long-poll carry the refusal in a 200
  body, since XDomainRequest and script tags cannot see a status and would only retry: the
  event `gateway-refused` (data: the JSON body), or the JSON body passed to the callback.
- A grant that expires ends its stream with the event `gateway-auth-expired`, and a long-poll
  held until then answers with that event last.
"""

import json
from http import HTTPStatus
from typing import Any, Callable, Dict, List, Optional, Tuple

from .. import wire
from ..transports.poll import encode_json, encode_jsonp
from .authorizer import Grant, Refused

EXPIRED_EVENT = "gateway-auth-expired"
REFUSED_EVENT = "gateway-refused"


def _data(value: Dict[str, Any]) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def expired_data(grant: Grant) -> str:
    return _data({"channels": list(grant.channels), "reason": "expired"})


def expired_frame(grant: Grant) -> bytes:
    """The event that ends a stream whose grant expired; no id, so the cursor stays."""
    return wire.encode_event(expired_data(grant), event=EXPIRED_EVENT)


def limit_stream(stream, grant: Grant) -> None:
    """End `stream` (a transports.EventStream) with the expiry event when `grant` expires."""
    left = grant.seconds_left()
    if left is not None:
        stream.expire_after(left, expired_frame(grant))


def end_poll(body: Dict[str, Any], grant: Grant) -> Dict[str, Any]:
    """A long-poll answer, with the expiry event last when the grant has expired."""
    if grant.expired():
        body["events"].append({"event": EXPIRED_EVENT, "data": expired_data(grant)})
    return body


def stream_refusal(refused: Refused, padded: bool) -> Tuple[str, List[Tuple[str, str]], bytes]:
    """Status, headers (its content type) and body of a refused stream request."""
    if not padded:
        return _status(refused.status), [("Content-Type", "application/json")], _json(refused)
    body = wire.encode_event(_data(refused.body()), event=REFUSED_EVENT)
    return "200 OK", [("Content-Type", "text/event-stream; charset=utf-8")], body


def poll_refusal(refused: Refused, callback: Optional[str]) -> Tuple[int, str, bytes]:
    """Status, content type and body of a refused long-poll (JSONP when `callback` is given,
    which must be a valid callback name)."""
    if callback is None:
        return refused.status, "application/json", _json(refused)
    return 200, "application/javascript; charset=utf-8", encode_jsonp(callback, refused.body())


def respond_refusal(start_response: Callable, refused: Refused, padded: bool,
                    headers: List[Tuple[str, str]]) -> List[bytes]:
    """A refused stream request, answered by a bare WSGI endpoint; `headers` are its usual
    headers (caching, CORS). The connection closes after it, like any other refusal."""
    status, content_type, body = stream_refusal(refused, padded)
    start_response(status, [*content_type, ("Content-Length", str(len(body))), *headers,
                            ("Connection", "close")])
    return [body]


def _json(refused: Refused) -> bytes:
    body = refused.body()
    del body["status"]
    return encode_json(body)


def _status(code: int) -> str:
    return f"{code} {HTTPStatus(code).phrase}"


__all__ = ["EXPIRED_EVENT", "REFUSED_EVENT", "end_poll", "expired_frame", "limit_stream",
           "poll_refusal", "respond_refusal", "stream_refusal"]
