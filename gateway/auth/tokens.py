"""Verifying signed tokens (JWT, RFC 7519) with PyJWT: the key and algorithm are chosen by the
gateway's configuration, never by the token, and `exp` is required.

Claims the gateway reads: `exp` (required), `subscribe` and `publish` (lists of channel names or
glob patterns), and `aud` / `iss` when `--token-audience` / `--token-issuer` are set.
"""

from typing import Any, NamedTuple, Optional, Sequence, Tuple

import jwt

from .keys import check_secret, load_public_key

HS256 = "HS256"
_LEEWAY = 0  # exp is when the gateway ends the stream: no grace beyond it


class TokenError(Exception):
    """A token that is not valid; the text says why, without the token."""

    def __init__(self, reason: str, expired: bool = False) -> None:
        super().__init__(reason)
        self.expired = expired


class NotAJwt(TokenError):
    """A token that is no JWT at all (e.g. a static publish token, or the application's own)."""


class Claims(NamedTuple):
    subscribe: Tuple[str, ...]
    publish: Tuple[str, ...]
    expires: float  # seconds since the epoch


class TokenVerifier:
    def __init__(self, secret: Optional[str] = None, public_key_path: Optional[str] = None,
                 audience: Optional[str] = None, issuer: Optional[str] = None) -> None:
        self._keys = {}
        if secret:
            self._keys[HS256] = check_secret(secret)
        if public_key_path:
            key, algorithms = load_public_key(public_key_path)
            for algorithm in algorithms:
                self._keys[algorithm] = key
        keys = {id(key): key for key in self._keys.values()}
        self._one_key = (next(iter(keys.values())), list(self._keys)) if len(keys) == 1 else None
        self._audience = audience
        self._issuer = issuer
        self._decoder = jwt.PyJWT(options={"require": ["exp"]})

    def __bool__(self) -> bool:
        return bool(self._keys)

    def verify(self, token: str) -> Claims:
        """The token's claims, or TokenError (`expired` set when it is valid but past `exp`)."""
        if self._one_key is not None:
            # PyJWT checks the header's alg against the key's algorithms: one read of it.
            key, algorithms = self._one_key
        else:
            algorithm = self._algorithm(token)
            key, algorithms = self._keys[algorithm], [algorithm]
        try:
            payload = self._decoder.decode(token, key, algorithms=algorithms,
                                           audience=self._audience, issuer=self._issuer,
                                           leeway=_LEEWAY)
        except jwt.ExpiredSignatureError:
            raise TokenError("the token has expired", expired=True) from None
        except (jwt.InvalidAlgorithmError, jwt.DecodeError) as error:
            if not isinstance(error, jwt.InvalidSignatureError):
                self._algorithm(token)  # NotAJwt, or an algorithm not accepted, says which
            raise TokenError(f"the token is not valid: {error}") from None
        except jwt.PyJWTError as error:
            # PyJWT's messages name claims and algorithms, never the token's bytes.
            raise TokenError(f"the token is not valid: {error}") from None
        return Claims(_channel_claim(payload, "subscribe"), _channel_claim(payload, "publish"),
                      float(payload["exp"]))

    def _algorithm(self, token: str) -> str:
        """The header's `alg`, one this gateway has a key for; NotAJwt or TokenError."""
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError:
            raise NotAJwt("the token is not a JWT") from None
        if not isinstance(algorithm, str) or algorithm not in self._keys:
            raise TokenError(f"tokens signed with {str(algorithm)[:20]!r} are not accepted; "
                             f"this gateway takes {', '.join(sorted(self._keys))}")
        return algorithm


def _channel_claim(payload: dict, name: str) -> Tuple[str, ...]:
    value: Any = payload.get(name, ())
    if not isinstance(value, Sequence) or isinstance(value, str) or not all(
            isinstance(item, str) for item in value):
        raise TokenError(f"the token's {name!r} claim must be a list of channel names or patterns")
    return tuple(value)
