"""What the bare-WSGI subscribe endpoints (/events, /poll) answer alike: CORS headers, errors."""

from http import HTTPStatus
from typing import Callable, Dict, List, Optional, Tuple

from .cors import CorsPolicy
from .subscribe import ApiError

Headers = List[Tuple[str, str]]


def cors_headers(cors: CorsPolicy, method: str, origin: Optional[str]) -> Headers:
    """The CORS headers of an answer: a preflight's for OPTIONS, else a plain response's."""
    return list((cors.preflight(origin) if method == "OPTIONS" else cors.headers(origin)).items())


def status_line(code: int) -> str:
    """A WSGI status: `200 OK`."""
    line = _STATUS_LINES.get(code)
    if line is None:
        line = _STATUS_LINES[code] = f"{code} {HTTPStatus(code).phrase}"
    return line


_STATUS_LINES: Dict[int, str] = {}  # an HTTPStatus lookup on every answer costs a little


def error(start_response: Callable, error: ApiError, headers: Headers, allow: str) -> List[bytes]:
    """`error` as its JSON body, with `headers`; a 405 says the methods `allow`ed."""
    body = error.body()
    extra = [("Allow", allow)] if error.status == 405 else []
    start_response(status_line(error.status), [
        ("Content-Type", "application/json"), ("Content-Length", str(len(body))), *headers, *extra])
    return [body]
