"""Logging set-up: text lines for people, or `--log-format json`, one JSON object per line.

A JSON line holds `time` (UTC, ISO 8601 with milliseconds), `level`, `event` (the message),
`logger`, `pid`, and `exception` when there is one; fields passed with `extra=` are added as
they are. Whatever the format, the secrets the gateway was given (publish tokens, the password
of the Redis URL) are replaced by `***` wherever they would appear in a record, traceback
included: they never reach a log.
"""

import json
import logging
import sys
import time
from typing import Iterable, List, Optional
from urllib.parse import unquote, urlsplit

__all__ = ["configure", "JsonFormatter", "Redactor", "secrets_of"]

# Attributes every LogRecord has: whatever else a record carries came with `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
MASK = "***"


class Redactor:
    """Replaces each known secret in a text by MASK."""

    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret that contains another is masked whole.
        self._secrets: List[str] = sorted({s for s in secrets if s}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text


def secrets_of(publish_tokens: Iterable[str], redis_url: Optional[str]) -> List[str]:
    """What must never be logged: the tokens, and the Redis URL's password (as written and decoded)."""
    found = list(publish_tokens)
    if redis_url:
        password = urlsplit(redis_url).password
        if password:
            found += [password, unquote(password)]
    return found


class _Redacting(logging.Formatter):
    def __init__(self, inner: logging.Formatter, redact: Redactor) -> None:
        super().__init__()
        self._inner = inner
        self._redact = redact

    def format(self, record: logging.LogRecord) -> str:
        return self._redact(self._inner.format(record))


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line (JSON escapes every line break inside)."""

    def format(self, record: logging.LogRecord) -> str:
        created = time.gmtime(record.created)
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", created) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "event": record.getMessage(),
            "logger": record.name,
            "pid": record.process,
        }
        for name, value in vars(record).items():
            if name not in _STANDARD and name not in entry:
                entry[name] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: int, log_format: str = "text", workers: int = 1,
              secrets: Iterable[str] = ()) -> None:
    """Send the process's log records to stderr in `log_format`, with `secrets` masked."""
    if log_format == "json":
        inner: logging.Formatter = JsonFormatter()
    else:
        who = "%(name)s[%(process)d]" if workers > 1 else "%(name)s"
        inner = logging.Formatter(f"%(asctime)s %(levelname)s {who}: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Redacting(inner, Redactor(secrets)))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
