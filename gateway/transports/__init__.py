"""How bytes reach one client: the event stream (native or padded) and long-polling."""

from .poll import CALLBACK, PollQueue, encode_json, encode_jsonp, poll
from .session import RESET_EVENT, Session
from .stream import EventStream, StreamOptions, StreamResponse

__all__ = ["CALLBACK", "RESET_EVENT", "EventStream", "PollQueue", "Session", "StreamOptions",
           "StreamResponse", "encode_json", "encode_jsonp", "poll"]
