"""Who the client is when proxies stand in between: X-Forwarded-For / X-Real-IP, trusted or not.

Forwarding headers are believed only from configured proxy addresses. A request that carries
them from anywhere else is marked as forwarded by an unknown party, so it is never treated as
coming from this host.
"""

import ipaddress
from typing import Mapping, NamedTuple, Optional, Sequence, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]
FORWARDING_HEADERS = ("X-Forwarded-For", "X-Real-IP", "Forwarded")


class Client(NamedTuple):
    address: str
    # True when the address is known for certain: the peer itself, or a trusted proxy's word.
    trusted: bool


def parse_networks(values: Sequence[str]) -> Sequence[Network]:
    """`127.0.0.1`, `10.0.0.0/8`, `::1`; raises ValueError naming a bad one."""
    networks = []
    for value in values:
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"trusted proxy {value!r} is not an IP address or network") from None
    return networks


def _address(text: str) -> Optional[ipaddress._BaseAddress]:
    try:
        return ipaddress.ip_address(text.strip().strip("[]"))
    except ValueError:
        return None


def _trusted(address: Optional[ipaddress._BaseAddress], networks: Sequence[Network]) -> bool:
    return address is not None and any(address in network for network in networks)


def resolve(peer: str, headers: Mapping[str, str], networks: Sequence[Network]) -> Client:
    """The client's address: the peer, or what trusted proxies say, walking X-Forwarded-For
    from the right and stopping at the first address that is not a trusted proxy."""
    forwarded = any(headers.get(name) for name in FORWARDING_HEADERS)
    if not forwarded:
        return Client(peer, True)
    if not _trusted(_address(peer), networks):
        return Client(peer, False)
    chain = [part.strip() for part in headers.get("X-Forwarded-For", "").split(",") if part.strip()]
    if not chain and headers.get("X-Real-IP"):
        chain = [headers["X-Real-IP"].strip()]
    for hop in reversed(chain):
        if not _trusted(_address(hop), networks):
            return Client(hop, _address(hop) is not None)
    return Client(chain[0] if chain else peer, bool(chain) and _address(chain[0]) is not None)


class EnvironHeaders:
    """A WSGI environ's request headers by name, as `resolve` reads them."""

    __slots__ = ("_environ",)

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._environ = environ

    def get(self, name: str, default: Optional[str] = None) -> Optional[str]:
        return self._environ.get("HTTP_" + name.upper().replace("-", "_"), default)

    def __getitem__(self, name: str) -> str:
        value = self.get(name)
        if value is None:
            raise KeyError(name)
        return value


def environ_client(environ: Mapping[str, str], networks: Sequence[Network]) -> Client:
    """`resolve` for a WSGI request: its peer and its headers."""
    return resolve(environ.get("REMOTE_ADDR") or "", EnvironHeaders(environ), networks)


def is_loopback(client: Client) -> bool:
    address = _address(client.address)
    return client.trusted and address is not None and address.is_loopback
