"""Credentials out of log lines: a request target with the values of its token parameters
replaced. No I/O."""

from urllib.parse import unquote_plus

REDACTED = "[redacted]"


def is_secret_param(name: str) -> bool:
    """`token`, `access_token`, `id_token`...: a query parameter that may carry a credential."""
    return "token" in name.lower()


def redact_target(target: str) -> str:
    """The target with every token parameter's value replaced by REDACTED.

    Names are compared decoded, as the application reads them: `t%6Fken=` is `token=` too.
    """
    path, question, query = target.partition("?")
    if not question or "=" not in query:
        return target
    query, hash_, fragment = query.partition("#")
    parts = query.split("&")
    for i, part in enumerate(parts):
        name, equals, _ = part.partition("=")
        if equals and is_secret_param(unquote_plus(name)):
            parts[i] = f"{name}={REDACTED}"
    return f"{path}?{'&'.join(parts)}{hash_}{fragment}"
