"""Cross-origin rules: which origins may subscribe or publish, and the headers that say so.

Without an allowlist, any origin may subscribe, without credentials (`*`). With one, only the
listed origins get CORS headers, and they may send credentials (cookies).
"""

from typing import Dict, Optional, Sequence

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
