"""How bytes reach one client: the event stream (native or padded) and, later, long-polling."""

from .poll import CALLBACK, encode_json, encode_jsonp, poll
from .session import RESET_EVENT, Session
from .stream import StreamOptions, event_stream

__all__ = ["CALLBACK", "RESET_EVENT", "Session", "StreamOptions", "encode_json", "encode_jsonp",
           "event_stream", "poll"]
