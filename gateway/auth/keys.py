"""The keys that verify signed tokens, and the algorithms each one is pinned to.

A secret is for HS256 only; a public key (PEM) for the algorithms of its own type only, so a
token cannot choose how it is checked: no `alg: none`, and no HS256 token "signed" with the
public key's PEM as an HMAC secret (RFC 8725, section 2.1).
"""

from typing import Any, Tuple

MIN_SECRET_BYTES = 32  # RFC 7518, section 3.2: an HS256 key as long as the hash, at least


def check_secret(secret: str) -> bytes:
    """The HS256 secret as bytes, or ValueError when it is too short to be one."""
    raw = secret.encode("utf-8")
    if len(raw) < MIN_SECRET_BYTES:
        raise ValueError(f"subscribe-key must be at least {MIN_SECRET_BYTES} bytes long "
                         "(RFC 7518: an HS256 key as long as its hash); generate one with "
                         "`python3 -c 'import secrets; print(secrets.token_urlsafe(32))'`")
    return raw


def load_public_key(path: str) -> Tuple[Any, Tuple[str, ...]]:
    """The public key in the PEM file at `path` and the algorithms it verifies; ValueError
    naming the problem (a missing file, no PEM public key, a type that signs no JWT)."""
    from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    try:
        with open(path, "rb") as handle:
            pem = handle.read()
    except OSError as error:
        raise ValueError(f"subscribe-public-key {path!r} cannot be read: {error.strerror}") from None
    try:
        key = load_pem_public_key(pem)
    except ValueError:
        raise ValueError(f"subscribe-public-key {path!r} holds no PEM public key "
                         "(-----BEGIN PUBLIC KEY-----)") from None
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < 2048:
            raise ValueError(f"subscribe-public-key {path!r}: an RSA key needs 2048 bits at least")
        return key, ("RS256", "RS384", "RS512")
    if isinstance(key, ec.EllipticCurvePublicKey):
        algorithm = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}.get(
            key.curve.name)
        if algorithm is None:
            raise ValueError(f"subscribe-public-key {path!r}: the curve {key.curve.name} signs "
                             "no JWT; use P-256 (ES256), P-384 or P-521")
        return key, (algorithm,)
    if isinstance(key, (ed25519.Ed25519PublicKey, ed448.Ed448PublicKey)):
        return key, ("EdDSA",)
    raise ValueError(f"subscribe-public-key {path!r}: use an RSA, EC or Ed25519 public key")
