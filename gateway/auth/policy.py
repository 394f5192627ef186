"""Which channels are private, and whether a list of channel patterns covers a channel.

Patterns are shell-style globs (`user.*`, `room.?`, `order.[0-9]*`; `*` is every channel),
matched case-sensitively, as channel names are. No I/O.
"""

import fnmatch
import functools
import re
from typing import Iterable, List, Optional, Pattern, Sequence, Tuple

# A channel name's characters (message.check_channel) and the glob's own: * ? [ ] !
_PATTERN = re.compile(r"[A-Za-z0-9_.:*?\[\]!-]{1,128}")


def check_pattern(pattern: str) -> str:
    """A channel pattern, or ValueError naming what is wrong with it."""
    if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
        raise ValueError(f"channel pattern {str(pattern)[:140]!r} must be 1-128 of "
                         "A-Z a-z 0-9 _ . : - and the glob characters * ? [ ] !")
    return pattern


def compile_patterns(patterns: Iterable[str]) -> Optional[Pattern[str]]:
    """One regular expression for all the patterns (None for none): one match per channel."""
    parts = [fnmatch.translate(check_pattern(p)) for p in patterns]
    return re.compile("|".join(f"(?:{part})" for part in parts)) if parts else None


class PrivateChannels:
    """The `--private-channel` patterns."""

    __slots__ = ("patterns", "_regex")

    def __init__(self, patterns: Sequence[str]) -> None:
        self.patterns = tuple(patterns)
        self._regex = compile_patterns(self.patterns)

    def __bool__(self) -> bool:
        return self._regex is not None

    def private(self, channels: Iterable[str]) -> List[str]:
        """The private ones among `channels`, in their order."""
        regex = self._regex
        if regex is None:
            return []
        return [channel for channel in channels if regex.match(channel)]


def uncovered(patterns: Sequence[str], channels: Iterable[str]) -> List[str]:
    """The channels that none of `patterns` (names or globs, e.g. a token's claim) matches.

    A pattern that is not a valid channel pattern covers nothing.
    """
    if not any("*" in p or "?" in p or "[" in p for p in patterns):
        # Names only, as a user's token usually has: no pattern to compile.
        names = set(patterns)
        return [channel for channel in channels if channel not in names]
    regex = _claim_regex(tuple(patterns))
    return [channel for channel in channels if regex is None or not regex.match(channel)]


@functools.lru_cache(maxsize=1024)
def _claim_regex(patterns: Tuple[str, ...]) -> Optional[Pattern[str]]:
    # Tokens of one application name the same few shapes of claims: each is compiled once.
    return compile_patterns(p for p in patterns if isinstance(p, str) and _PATTERN.fullmatch(p))
