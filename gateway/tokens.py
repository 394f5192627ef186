"""Minting tokens for the gateway, from the application (Python, with PyJWT):

    from gateway.tokens import subscribe_token
    token = subscribe_token(["user.42"], key=SECRET, ttl=3600)

The key is the gateway's `--subscribe-key` secret (HS256), or the PEM private key whose public
half is its `--subscribe-public-key` (RS256, ES256 or EdDSA, by the key's type). A token
carries `exp` and the channel names or glob patterns its holder may subscribe to
(`subscribe`) or publish on (`publish`).
"""

import time
from typing import Any, Dict, Iterable, Optional, Union

import jwt

from .auth.keys import check_secret
from .auth.policy import check_pattern

__all__ = ["mint", "publish_token", "subscribe_token"]

Key = Union[str, bytes]


def mint(key: Key, *, subscribe: Iterable[str] = (), publish: Iterable[str] = (),
         ttl: float = 3600, audience: Optional[str] = None, issuer: Optional[str] = None,
         subject: Optional[str] = None, now: Optional[float] = None) -> str:
    """A signed token allowing `subscribe` and `publish` (channel names or patterns) for `ttl`
    seconds. Raises ValueError for a bad channel pattern, lifetime or key."""
    if not ttl > 0:
        raise ValueError("ttl must be above 0 seconds")
    issued = int(time.time() if now is None else now)
    claims: Dict[str, Any] = {"iat": issued, "exp": issued + max(1, round(ttl))}
    for name, channels in (("subscribe", subscribe), ("publish", publish)):
        patterns = [check_pattern(channel) for channel in channels]
        if patterns:
            claims[name] = patterns
    for name, value in (("aud", audience), ("iss", issuer), ("sub", subject)):
        if value is not None:
            claims[name] = value
    signing_key, algorithm = _signing_key(key)
    return jwt.encode(claims, signing_key, algorithm=algorithm)


def subscribe_token(channels: Iterable[str], key: Key, ttl: float = 3600, **claims: Any) -> str:
    """A token that lets its holder subscribe to `channels` for `ttl` seconds."""
    return mint(key, subscribe=channels, ttl=ttl, **claims)


def publish_token(channels: Iterable[str], key: Key, ttl: float = 3600, **claims: Any) -> str:
    """A token that lets its holder publish on `channels` for `ttl` seconds."""
    return mint(key, publish=channels, ttl=ttl, **claims)


def _signing_key(key: Key):
    text = key.decode("utf-8") if isinstance(key, bytes) else key
    if "-----BEGIN" not in text:
        return check_secret(text), "HS256"
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    try:
        private = load_pem_private_key(text.encode("utf-8"), password=None)
    except (ValueError, TypeError):
        raise ValueError("the key is neither a secret nor an unencrypted PEM private key") from None
    if isinstance(private, rsa.RSAPrivateKey):
        return private, "RS256"
    if isinstance(private, ec.EllipticCurvePrivateKey):
        algorithm = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
            private.curve.name)
        if algorithm is not None:
            return private, algorithm
    if isinstance(private, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return private, "EdDSA"
    raise ValueError("use an HS256 secret, or an RSA, EC (P-256, P-384, P-521) or Ed25519 key")
