"""Long-polling, as JSON or JSONP: one response per batch of events, the cursor to send next.

A poll answers at once when events after the client's cursor exist (at most `batch` of them),
else holds until one arrives or the hold time ends. The cursor in the answer covers exactly the
events in it, so the next poll resumes after them: nothing lost, nothing twice.
"""

import json
import re
import time
from typing import Any, Dict, List

from ..message import Message
from .session import Session

CALLBACK = re.compile(r"[A-Za-z_$][\w$.]{0,63}", re.ASCII)


def poll(session: Session, backlog: List[Message], hold: float, batch: int,
         retry_ms: int) -> Dict[str, Any]:
    """Wait for events (at most `hold` seconds) and return the response body."""
    subscriber = session.subscriber
    deadline = time.monotonic() + hold
    try:
        events = _take(session, backlog, batch)
        while not events and not subscriber.closed:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not subscriber.wait(remaining):
                break
            events = _take(session, subscriber.drain(), batch)
        return {"events": events, "lastEventId": session.cursor(), "retry": retry_ms}
    finally:
        session.close()


def _take(session: Session, messages: List[Message], batch: int) -> List[Dict[str, Any]]:
    events = []
    for message in messages:
        if len(events) >= batch:
            break  # the cursor stops before the rest: the next poll gets them from history
        if session.accept(message):
            item = message.to_dict()
            item["id"] = session.cursor(message.source_id)
            events.append(item)
    return events


def encode_json(body: Dict[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def encode_jsonp(callback: str, body: Dict[str, Any]) -> bytes:
    """`callback` must match CALLBACK. ASCII-only JSON: U+2028/2029 break old JS parsers."""
    if not CALLBACK.fullmatch(callback):
        raise ValueError("invalid callback name")
    # The leading comment keeps the response from starting with attacker-chosen bytes.
    return f"/**/{callback}({json.dumps(body, separators=(',', ':'))});".encode("ascii")
