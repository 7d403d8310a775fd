"""Which addresses may receive webhooks: only globally routable ones, unless allowed by name.

`ipaddress.is_private` alone let 100.64.0.0/10 through (shared/CGNAT space, where cloud metadata
services such as 100.100.100.200 live), and this Python's `is_global` still calls 192.0.0.0/24,
64:ff9b:1::/48 and 3fff::/20 global. So the rule is written out here from the IANA special-purpose
registries, with `is_global` and the reserved/multicast flags as a catch-all behind it: an address
is refused unless it is globally routable or `VIRTBUS_WEBHOOK_ALLOW_NETS` names a network holding
it. The refusal says what kind of address it is, so an operator knows what they would allow.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Final

ALLOW_NETS_ENV: Final = "VIRTBUS_WEBHOOK_ALLOW_NETS"

Net = ipaddress.IPv4Network | ipaddress.IPv6Network
Addr = ipaddress.IPv4Address | ipaddress.IPv6Address


def _table(*rows: tuple[str, str]) -> tuple[tuple[Net, str], ...]:
    return tuple((ipaddress.ip_network(net), kind) for net, kind in rows)


# Not globally reachable, most specific first (the first match names the kind). Whole protocol
# blocks are refused even where IANA marks a few anycast hosts in them global (192.0.0.9/32,
# 2001:3::/32...): no webhook receiver lives at a protocol anycast address.
SPECIAL: Final = _table(
    ("0.0.0.0/8", "a this-network"),
    ("10.0.0.0/8", "a private"),
    ("100.64.0.0/10", "a shared (carrier-grade NAT)"),
    ("127.0.0.0/8", "a loopback"),
    ("169.254.0.0/16", "a link-local"),
    ("172.16.0.0/12", "a private"),
    ("192.0.0.0/24", "an IETF protocol assignment"),
    ("192.0.2.0/24", "a documentation"),
    ("192.88.99.0/24", "a deprecated 6to4 relay anycast"),
    ("192.168.0.0/16", "a private"),
    ("198.18.0.0/15", "a benchmarking"),
    ("198.51.100.0/24", "a documentation"),
    ("203.0.113.0/24", "a documentation"),
    ("224.0.0.0/4", "a multicast"),
    ("255.255.255.255/32", "a broadcast"),
    ("240.0.0.0/4", "a reserved"),
    ("::/128", "an unspecified"),
    ("::1/128", "a loopback"),
    ("64:ff9b:1::/48", "a local-use NAT64"),
    ("100::/64", "a discard-only"),
    ("2001::/32", "a Teredo"),
    ("2001:2::/48", "a benchmarking"),
    ("2001:10::/28", "an ORCHID"),
    ("2001:db8::/32", "a documentation"),
    ("2001::/23", "an IETF protocol assignment"),
    ("3fff::/20", "a documentation"),
    ("5f00::/16", "a segment-routing SID"),
    ("fc00::/7", "a unique-local"),
    ("fe80::/10", "a link-local"),
    ("fec0::/10", "a site-local"),
    ("ff00::/8", "a multicast"),
)

# IPv6 prefixes that carry an IPv4 address a packet ends up at: judged by that address, so
# ::ffff:10.0.0.1 or 64:ff9b::a00:1 is as private as 10.0.0.1.
_MAPPED: Final = ipaddress.ip_network("::ffff:0:0/96")
_NAT64: Final = ipaddress.ip_network("64:ff9b::/96")


def _embedded(addr: Addr) -> tuple[str, ipaddress.IPv4Address] | None:
    """(how it carries it, the IPv4 address) for an IPv6 address that reaches an IPv4 one."""
    if not isinstance(addr, ipaddress.IPv6Address):
        return None
    if addr in _MAPPED:
        return "an IPv4-mapped", ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if addr in _NAT64:
        return "a NAT64", ipaddress.IPv4Address(int(addr) & 0xFFFFFFFF)
    if (v4 := addr.sixtofour) is not None:
        return "a 6to4", v4
    return None


def _kind(addr: Addr) -> str | None:
    """What non-global kind of address `addr` is ("a private address in 10.0.0.0/8"), or None."""
    if (inner := _embedded(addr)) is not None:
        how, v4 = inner
        if (what := _kind(v4)) is None:
            return None
        return f"{how} address of {v4}, {what}"
    for net, kind in SPECIAL:
        if addr.version == net.version and addr in net:
            return f"{kind} address in {net}"
    for kind, flag in (
        ("an unspecified", addr.is_unspecified), ("a loopback", addr.is_loopback),
        ("a link-local", addr.is_link_local), ("a multicast", addr.is_multicast),
        ("a reserved", addr.is_reserved), ("a private", addr.is_private),
        ("a non-global", not addr.is_global),
    ):  # fmt: skip
        if flag:  # a block the table above does not know yet, but the ipaddress module does
            return f"{kind} address"
    return None


def address_refusal(addr: Addr, allowed: Sequence[Net]) -> str | None:
    """Why `addr` may not receive webhooks, or None if it may."""
    inner = _embedded(addr)
    for a in (addr, inner[1]) if inner is not None else (addr,):
        if any(a.version == net.version and a in net for net in allowed):
            return None
    if (kind := _kind(addr)) is None:
        return None
    return f"{addr} is {kind}, not globally routable (allow it with {ALLOW_NETS_ENV})"
