"""Which network addresses an HTTP(S) source may reach.

A manifest or a request names URLs; the job resolves their host names and refuses every address that is
not on the public internet (loopback, private, link-local such as 169.254.169.254, multicast, unspecified,
reserved, shared or documentation ranges), before it connects, unless `fetch.allowed_networks` opens the
range. IPv4 addresses carried inside IPv6 ones (IPv4-mapped, 6to4, Teredo, NAT64) are checked as well.
The addresses returned here are the ones the caller connects to: nothing resolves the name a second time.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from embedding.errors import EmbeddingError, ErrorCode

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_NAT64 = ipaddress.ip_network("64:ff9b::/96")


@dataclass(frozen=True)
class Endpoint:
    """One address of a host, ready for `socket.socket(family).connect(sockaddr)`."""

    family: int
    sockaddr: tuple
    address: IPAddress


def parse_networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def _embedded_ipv4(ip: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(ip, ipaddress.IPv6Address):
        return []
    found = [ip.ipv4_mapped, ip.sixtofour, *(ip.teredo or ())]
    if ip in _NAT64:
        found.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
    return [v4 for v4 in found if v4 is not None]


def _kind(ip: IPAddress) -> str | None:
    """Why an address is not public, or None for a globally routable unicast address."""
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("not globally routable", not ip.is_global),
    )
    return next((name for name, hit in checks if hit), None)


def address_problem(ip: IPAddress, allowed: Iterable[Network] = ()) -> str | None:
    """Why this address may not be reached (e.g. "a link-local address"), or None when it may."""
    # The IPv4 address an IPv6 one carries is where packets end up: it is checked (and named) first. An
    # IPv4-mapped address is that IPv4 address and nothing else; the tunnel forms are both.
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    candidates = [mapped] if mapped is not None else [*_embedded_ipv4(ip), ip]
    allowed = tuple(allowed)
    # An opened range admits the address itself or the IPv4 address it carries.
    if any(c in net for c in candidates for net in allowed if c.version == net.version):
        return None
    for candidate in candidates:
        kind = _kind(candidate)
        if kind is not None:
            inside = "" if candidate == ip else f" (it carries {candidate})"
            return f"a {kind} address{inside}"
    return None


def resolve(host: str, port: int) -> list[tuple[int, tuple]]:
    """(family, sockaddr) for every address of a host: the system resolver. Tests plant their own."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return [(family, sockaddr) for family, _, _, _, sockaddr in infos]


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def checked_endpoints(host: str, port: int, allowed: Iterable[Network]) -> list[Endpoint]:
    """The addresses of `host` that may be reached, in the resolver's order. Raises EmbeddingError:
    InvalidManifestRow (naming the rule) when none may, NotFound when the name does not resolve."""
    allowed = tuple(allowed)
    literal = _literal(host)
    if literal is not None:
        family: int = socket.AF_INET6 if literal.version == 6 else socket.AF_INET
        sockaddr = (str(literal), port) if literal.version == 4 else (str(literal), port, 0, 0)
        found: list[tuple[int, tuple]] = [(family, sockaddr)]
    else:
        try:
            found = resolve(host, port)
        except socket.gaierror as exc:
            if exc.errno in (socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)):
                raise EmbeddingError(ErrorCode.NOT_FOUND, f"host {host} does not resolve") from None
            raise EmbeddingError(ErrorCode.FETCH_FAILED, f"resolving {host} failed: {exc}") from None
    endpoints, refused = [], []
    for family, sockaddr in found:
        ip = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
        problem = address_problem(ip, allowed)
        if problem is None:
            endpoints.append(Endpoint(family, sockaddr, ip))
        else:
            refused.append(f"{ip} is {problem}")
    if not endpoints:
        reasons = "; ".join(dict.fromkeys(refused)) or "no addresses"
        raise EmbeddingError(
            ErrorCode.INVALID_MANIFEST_ROW,
            f"network rule: {host} is not on the public internet ({reasons}); "
            "fetch.allowed_networks can open a range",
        )
    return endpoints
