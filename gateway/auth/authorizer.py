"""The one question every endpoint asks: may this request subscribe to (or publish on) these
channels, and until when?

`Authorizer.check_subscribe` returns a `Grant` (with its expiry, if any) or raises `Refused`
(401: no usable credentials; 403: credentials that do not cover a channel) or
`AuthUnavailable` (the application behind `--auth-url` did not answer: the client must come
back later). A request that names no private channel costs one regular-expression match per
channel and nothing else.

Credentials, in order: `Authorization: Bearer <token>`, the cookie named by `--token-cookie`,
the query parameter `token`. The first one present is the token; a signed token that does not
cover every private channel, or none at all, leaves the decision to the application when
`--auth-url` is set.
"""

import time
from typing import Iterable, Mapping, NamedTuple, Optional, Sequence, Tuple

from ..forwarded import Network, environ_client, parse_networks
from .callback import AuthCallback, CallbackUnavailable
from .policy import PrivateChannels, uncovered
from .tokens import NotAJwt, TokenError, TokenVerifier

QUERY_PARAM = "token"
_HEADER, _COOKIE, _QUERY = "Authorization header", "cookie", f"query parameter {QUERY_PARAM!r}"


class Grant(NamedTuple):
    """What a request may do: its private channels, until `expires` (seconds since the epoch;
    None for no limit)."""

    channels: Tuple[str, ...]
    expires: Optional[float]

    def seconds_left(self) -> Optional[float]:
        return None if self.expires is None else max(0.0, self.expires - time.time())

    def hold(self, seconds: float) -> float:
        """A long-poll's hold, cut at the expiry."""
        left = self.seconds_left()
        return seconds if left is None else min(seconds, left)

    def expired(self) -> bool:
        return self.expires is not None and time.time() >= self.expires


PUBLIC = Grant((), None)


class Refused(Exception):
    """401 or 403, with what to tell the client (never a credential)."""

    def __init__(self, status: int, detail: str, channel: Optional[str] = None,
                 expired: bool = False) -> None:
        super().__init__(detail)
        self.status = status
        self.error = "unauthorized" if status == 401 else "forbidden"
        self.detail = detail
        self.channel = channel
        self.expired = expired

    def body(self) -> dict:
        body = {"error": self.error, "detail": self.detail, "status": self.status}
        if self.channel is not None:
            body["channel"] = self.channel
        return body


class AuthUnavailable(Exception):
    """The application could not be asked: not the client's fault, so it comes back later."""


class Authorizer:
    def __init__(self, private: PrivateChannels, verifier: Optional[TokenVerifier] = None,
                 callback: Optional[AuthCallback] = None, cookie: str = "sse_gateway_token",
                 proxies: Sequence[Network] = ()) -> None:
        self.private = private
        self.verifier = verifier if verifier else None
        self.callback = callback
        self._cookie = cookie
        self._proxies = proxies

    @classmethod
    def from_config(cls, config) -> "Authorizer":
        """From settings that config.Config has checked."""
        verifier = TokenVerifier(config.subscribe_key, config.subscribe_public_key,
                                 config.token_audience, config.token_issuer)
        callback = (AuthCallback(config.auth_url, config.auth_timeout, config.auth_cache_seconds)
                    if config.auth_url else None)
        return cls(PrivateChannels(config.private_channels), verifier, callback, config.token_cookie,
                   parse_networks(config.trusted_proxies))

    def public(self, channels: Sequence[str]) -> bool:
        """Whether anyone may subscribe to `channels` (`check_subscribe` grants PUBLIC)."""
        return not self.private.private(channels)

    def check_subscribe(self, channels: Sequence[str], environ: Mapping[str, str],
                        query) -> Grant:
        """May the request whose WSGI `environ` and query arguments (`query.get`) these are
        subscribe to `channels`? A Grant, or Refused, or AuthUnavailable."""
        private = self.private.private(channels)
        if not private:
            return PUBLIC
        token, carrier = self._token(environ, query)
        left, expires, refusal = private, None, None
        if token is not None and self.verifier is not None:
            try:
                claims = self.verifier.verify(token)
            except TokenError as error:
                refusal = Refused(401, f"the token ({carrier}): {error}", private[0],
                                  expired=error.expired)
            else:
                left, expires = uncovered(claims.subscribe, private), claims.expires
                if not left:
                    return Grant(tuple(private), expires)
                refusal = Refused(403, f"the token does not allow channel {left[0]!r}", left[0])
        cookie, authorization = environ.get("HTTP_COOKIE"), environ.get("HTTP_AUTHORIZATION")
        if self.callback is None or (token is None and cookie is None and authorization is None):
            raise refusal or Refused(401, f"channel {private[0]!r} is private: send a token "
                                     f"(Authorization: Bearer, the {self._cookie!r} cookie or the "
                                     f"query parameter {QUERY_PARAM!r})", private[0])
        try:
            answer = self.callback.ask(left, self._address(environ), environ.get("HTTP_ORIGIN"),
                                       cookie, authorization, token if carrier == _QUERY else None)
        except CallbackUnavailable as error:
            raise AuthUnavailable(str(error)) from None
        if answer.status != 200:
            raise Refused(answer.status, f"the application refused channel {left[0]!r}", left[0])
        refused = uncovered(answer.channels, left) if answer.channels is not None else []
        if refused:
            raise Refused(403, f"the application does not allow channel {refused[0]!r}",
                          refused[0])
        if answer.expires is not None:
            expires = answer.expires if expires is None else min(expires, answer.expires)
        return Grant(tuple(private), expires)

    def publish_grant(self, environ: Mapping[str, str]) -> Optional["PublishGrant"]:
        """The bearer's signed token with its `publish` claim; None when the bearer is no
        signed token (the static --publish-token rules apply); Refused (403) for a signed token
        that is not valid. Which channels it covers is checked once they are known
        (`PublishGrant.check`): a batch names them in its body."""
        if self.verifier is None:
            return None
        token = _bearer(environ.get("HTTP_AUTHORIZATION"))
        if token is None:
            return None
        try:
            claims = self.verifier.verify(token)
        except NotAJwt:
            return None
        except TokenError as error:
            raise Refused(403, f"the publish token: {error}") from None
        return PublishGrant(claims.publish)

    def _token(self, environ: Mapping[str, str], query) -> Tuple[Optional[str], str]:
        token = _bearer(environ.get("HTTP_AUTHORIZATION"))
        if token is not None:
            return token, _HEADER
        token = _cookie(environ.get("HTTP_COOKIE"), self._cookie)
        if token is not None:
            return token, _COOKIE
        token = query.get(QUERY_PARAM) or None
        return token, _QUERY

    def _address(self, environ: Mapping[str, str]) -> str:
        return environ_client(environ, self._proxies).address


class PublishGrant:
    """What a publish token allows: channel names or patterns."""

    __slots__ = ("patterns",)

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = patterns

    def check(self, channels: Iterable[str]) -> None:
        """Refused (403) unless every channel is covered."""
        left = uncovered(self.patterns, channels)
        if left:
            raise Refused(403, f"the token does not allow publishing to channel {left[0]!r}",
                          left[0])


def _bearer(header: Optional[str]) -> Optional[str]:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _cookie(header: Optional[str], name: str) -> Optional[str]:
    """The first cookie of that name (RFC 6265, section 5.4: `name=value; name2=value2`)."""
    if not header:
        return None
    for pair in header.split(";"):
        key, sep, value = pair.strip().partition("=")
        if sep and key == name:
            value = value.strip()
            if len(value) > 1 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


