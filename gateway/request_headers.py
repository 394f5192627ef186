"""A request's header lines, read for pywsgi without the email package.

pywsgi parses every request's headers with http.client, which builds an email message: about a
fifth of what a new connection costs the gateway. This reads the same lines within the same
limits (65,536 bytes a line, 100 lines) and offers what pywsgi uses of that message: `get`,
`getheader`, `typeheader`, deletion, the raw lines in `headers`, and `status`, which names what
is wrong with a head pywsgi must answer with 400: a line too long, too many lines, or a line
that is no `token: value` (RFC 9110 and 9112: no space before the colon, no line folding, no
CR, LF or NUL in a value).
"""

import re
from typing import BinaryIO, Dict, List, Optional

MAX_LINE = 65536
MAX_HEADERS = 100
_END = (b"\r\n", b"\n", b"")
# A name that is a token (RFC 9110, section 5.6.2), so no space before the colon and no line
# folding (RFC 9112 refuses both); a value without CR, LF or NUL (RFC 9110, section 5.5).
_LINE = re.compile(r"([!#$%&'*+\-.^_`|~0-9A-Za-z]+):([^\r\n\0]*)(?:\r?\n)?")


class RequestHeaders:
    __slots__ = ("headers", "status", "_first")

    def __init__(self, fp: BinaryIO) -> None:
        self.headers: List[str] = []
        self.status = ""
        self._first: Dict[str, str] = {}
        while True:
            line = fp.readline(MAX_LINE + 1)
            if line in _END:
                return
            if len(line) > MAX_LINE:
                self.status = "Line too long"
                return
            if len(self.headers) == MAX_HEADERS:
                self.status = f"More than {MAX_HEADERS} headers"
                return
            text = line.decode("latin-1")
            field = _LINE.fullmatch(text)
            if field is None:
                self.status = "Invalid header line"
                return
            self.headers.append(text)
            self._first.setdefault(field[1].lower(), field[2].strip())

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        """The first value of a header (case-insensitive name), as email's message gives."""
        return self._first.get(name.lower(), default)

    getheader = get

    @property
    def typeheader(self) -> Optional[str]:
        return self._first.get("content-type")

    def __delitem__(self, name: str) -> None:
        key = name.lower()
        if key not in self._first:
            raise KeyError(name)
        del self._first[key]
        self.headers = [line for line in self.headers if line.partition(":")[0].lower() != key]
