"""How bytes reach one client: the event stream (native or padded) and, later, long-polling."""

from .session import RESET_EVENT, Session
from .stream import StreamOptions, event_stream

__all__ = ["RESET_EVENT", "Session", "StreamOptions", "event_stream"]
