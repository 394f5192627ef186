"""Cross-origin rules: which origins may subscribe or publish, and the headers that say so.

Without an allowlist, any origin may subscribe, without credentials (`*`). With one, only the
listed origins get CORS headers, and they may send credentials (cookies).

Publishing is refused outright to a page of any origin not listed: CORS headers only decide
whether a page may read the answer, and a "simple" request (a POST of text/plain) is sent
without asking first.
"""

import ipaddress
from typing import Collection, Dict, Optional, Sequence
from urllib.parse import urlsplit

SUBSCRIBE_METHODS = "GET, OPTIONS"
SUBSCRIBE_HEADERS = "Last-Event-ID, Cache-Control, X-Requested-With"
PUBLISH_METHODS = "POST, OPTIONS"
PUBLISH_HEADERS = "Content-Type, Authorization"
PREFLIGHT_MAX_AGE = "86400"


class CorsPolicy:
    def __init__(self, origins: Sequence[str], allow_any: bool, methods: str,
                 headers: str) -> None:
        self._origins = frozenset(origin.rstrip("/") for origin in origins)
        self._allow_any = allow_any and not self._origins
        self._methods = methods
        self._headers = headers

    def headers(self, origin: Optional[str]) -> Dict[str, str]:
        """Headers for a response to a request from `origin` (the Origin header, if any)."""
        if self._allow_any:
            return {"Access-Control-Allow-Origin": "*"}
        result = {"Vary": "Origin"}
        if origin is not None and origin in self._origins:
            result["Access-Control-Allow-Origin"] = origin
            result["Access-Control-Allow-Credentials"] = "true"
        return result

    def preflight(self, origin: Optional[str]) -> Dict[str, str]:
        result = self.headers(origin)
        if "Access-Control-Allow-Origin" in result:
            result["Access-Control-Allow-Methods"] = self._methods
            result["Access-Control-Allow-Headers"] = self._headers
            result["Access-Control-Max-Age"] = PREFLIGHT_MAX_AGE
        return result


def subscribe_policy(origins: Sequence[str]) -> CorsPolicy:
    return CorsPolicy(origins, True, SUBSCRIBE_METHODS, SUBSCRIBE_HEADERS)


def publish_policy(origins: Sequence[str]) -> CorsPolicy:
    return CorsPolicy(origins, False, PUBLISH_METHODS, PUBLISH_HEADERS)


def page_may_publish(origin: Optional[str], allowed: Collection[str],
                     own: Optional[str] = None) -> bool:
    """Whether a publish request with this Origin header may go on.

    Browsers name the page's origin on every POST, so a request without one comes from no page
    (a server, curl). A page's request must come from an allowed origin, or from `own`.
    """
    return origin is None or origin in allowed or (own is not None and origin == own)


def own_origin(scheme: str, host: str) -> Optional[str]:
    """The origin a request was sent to, from its scheme and Host header; None unless the host
    is an IP address or localhost. A page of a DNS name can have that name resolve to the
    gateway (DNS rebinding) and so appear to be the gateway's own."""
    origin = f"{scheme}://{host}".lower()
    try:
        name = urlsplit(origin).hostname or ""
    except ValueError:
        return None
    if name == "localhost":
        return origin
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return None
    return origin
