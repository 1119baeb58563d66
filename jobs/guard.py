"""SSRF guard for outbound webhook requests: which addresses a delivery may connect to.

Every request made by `jobs.http.make_client()` passes three checks, all driven by one
`DestinationPolicy` (an explicit blocklist plus the `OBSERVATORY_DESTINATION_ALLOWLIST`
exemptions, read once when the client is created):

1. `GuardedTransport` (the httpx transport) checks each request's host before it is sent —
   every redirect hop too, since httpx sends each hop through the transport. IP literals
   (which aiohttp never resolves) are checked against the policy; non-canonical numeric IPv4
   forms (`2130706433`, `0177.0.0.1`, `127.1`, `0x7f.1`) are always refused, allowlist or not.
2. `GuardedResolver` (the `aiohttp.abc.AbstractResolver` on the `TCPConnector`) resolves host
   names, drops blocked addresses and returns only allowed ones. aiohttp connects exactly to
   what the resolver returns, so DNS rebinding has no window; a name with no allowed address
   is refused.
3. `guarded_socket_factory` (the connector's `socket_factory`) re-checks the address of every
   socket just before `connect()`: the address actually connected to, whatever produced it.

API used by the rest of Observatory:

- `DestinationBlockedError(host, address, rule)`: a refusal; its message names the host, the
  address and the rule. `GuardedTransport` always surfaces a refusal as this exception, raised
  from `client.send()` (never wrapped in an httpx error). It is *not* an `httpx.HTTPError`.
- `blocked_reason(exc) -> str | None`: recognises a guard refusal anywhere in an exception's
  `__cause__`/`__context__` chain (e.g. wrapped by aiohttp and httpx-aiohttp, which maps
  `ClientConnectorError` to `httpx.ConnectTimeout`) and returns its message. Use it to classify
  a failure as final `destination_blocked`.
- `check_url(url, allowlist=None)`: static validation (no DNS) for forms and APIs: raises
  `ValueError` for an invalid or non-http(s) URL and `DestinationBlockedError` for a blocked
  IP literal or a non-canonical numeric host. Not needed before `client.send()`: the transport
  does the same check (host names are checked when they resolve).
- `DestinationPolicy.from_allowlist(allowlist)`: `None` reads the environment variable,
  `""`/`[]` means no exemptions; invalid CIDRs raise `ValueError`.
  `policy.address_reason(ip) -> str | None` is the address rule (None = allowed).

Allowlist semantics: an allowlisted address is exempt from the blocklist (an IPv4-mapped
IPv6 address is matched by its IPv4 form). Non-canonical numeric host forms are never exempt.
NAT64/6to4 addresses are judged by the IPv4 address they embed, not exempted by it.
"""

from __future__ import annotations

import errno
import ipaddress
import re
import socket
from collections.abc import Callable, Iterable
from urllib.parse import unquote

import httpx
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MARKER = "destination blocked"

_N = ipaddress.ip_network

# Checked in order; the first match names the rule. Specific entries precede the ranges
# that contain them so the message says "cloud metadata", not just "link-local".
_V4_RULES: tuple[tuple[IPNetwork, str], ...] = tuple((_N(net), rule) for net, rule in (
    ("169.254.169.254/32", "cloud metadata (169.254.169.254)"),
    ("169.254.170.2/32", "cloud metadata (AWS ECS task metadata)"),
    ("100.100.100.200/32", "cloud metadata (Alibaba Cloud, 100.100.100.200)"),
    ("168.63.129.16/32", "cloud metadata (Azure WireServer, 168.63.129.16)"),
    ("0.0.0.0/8", "unspecified / 'this network' (0.0.0.0/8)"),
    ("10.0.0.0/8", "private (10.0.0.0/8)"),
    ("100.64.0.0/10", "carrier-grade NAT (100.64.0.0/10)"),
    ("127.0.0.0/8", "loopback (127.0.0.0/8)"),
    ("169.254.0.0/16", "link-local (169.254.0.0/16)"),
    ("172.16.0.0/12", "private (172.16.0.0/12)"),
    ("192.0.0.0/24", "reserved: IETF protocol assignments (192.0.0.0/24)"),
    ("192.0.2.0/24", "reserved: documentation (192.0.2.0/24)"),
    ("192.88.99.0/24", "reserved: 6to4 relay anycast (192.88.99.0/24)"),
    ("192.168.0.0/16", "private (192.168.0.0/16)"),
    ("198.18.0.0/15", "reserved: benchmarking (198.18.0.0/15)"),
    ("198.51.100.0/24", "reserved: documentation (198.51.100.0/24)"),
    ("203.0.113.0/24", "reserved: documentation (203.0.113.0/24)"),
    ("224.0.0.0/4", "multicast (224.0.0.0/4)"),
    ("255.255.255.255/32", "broadcast (255.255.255.255)"),
    ("240.0.0.0/4", "reserved (240.0.0.0/4)"),
))

# IPv6: these first, then the forms embedding an IPv4 address (judged by that address), then
# _V6_RULES, then ::/8 and the stdlib flags as a catch-all.
_V6_FIRST: tuple[tuple[IPNetwork, str], ...] = tuple((_N(net), rule) for net, rule in (
    ("fd00:ec2::254/128", "cloud metadata (AWS IPv6, fd00:ec2::254)"),
    ("fd20:ce::254/128", "cloud metadata (GCP IPv6, fd20:ce::254)"),
    ("::/128", "unspecified (::)"),
    ("::1/128", "loopback (::1)"),
))

_V6_RULES: tuple[tuple[IPNetwork, str], ...] = tuple((_N(net), rule) for net, rule in (
    ("64:ff9b:1::/48", "private: local-use NAT64 (64:ff9b:1::/48)"),
    ("100::/64", "reserved: discard-only (100::/64)"),
    ("2001::/32", "reserved: Teredo tunnelling (2001::/32)"),
    ("2001:db8::/32", "reserved: documentation (2001:db8::/32)"),
    ("3fff::/20", "reserved: documentation (3fff::/20)"),
    ("5f00::/16", "reserved: SRv6 SIDs (5f00::/16)"),
    ("fc00::/7", "private: unique local (fc00::/7)"),
    ("fe80::/10", "link-local (fe80::/10)"),
    ("fec0::/10", "reserved: site-local (fec0::/10)"),
    ("ff00::/8", "multicast (ff00::/8)"),
))

_V4_MAPPED = _N("::ffff:0:0/96")
_V4_COMPAT = _N("::/96")
_NAT64 = _N("64:ff9b::/96")
_SIX_TO_FOUR = _N("2002::/16")
_V6_RESERVED = _N("::/8")

_NUMERIC_LABEL = re.compile(r"[0-9]+|0[xX][0-9a-fA-F]*")


class DestinationBlockedError(Exception):
    """The guard refused a destination; the message names the host, the address and the rule."""

    def __init__(self, host: str, address: str | None, rule: str) -> None:
        self.host = host
        self.address = address
        self.rule = rule
        where = host if address is None or address == host else f"{host} ({address})"
        super().__init__(f"{MARKER}: {where} is {rule}")

    def __reduce__(self):  # picklable despite the custom signature
        return type(self), (self.host, self.address, self.rule)


class _BlockedSocketError(OSError):
    """Raised by the socket factory (aiohappyeyeballs only tolerates OSError there)."""

    def __init__(self, blocked: DestinationBlockedError) -> None:
        super().__init__(errno.EACCES, str(blocked))
        self.blocked = blocked


def _embedded_v4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address stands for (mapped, compatible, NAT64, 6to4)."""
    if ip in _V4_MAPPED:
        return "IPv4-mapped IPv6", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _NAT64:
        return "NAT64 (64:ff9b::/96)", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    if ip in _SIX_TO_FOUR:
        return "6to4 (2002::/16)", ipaddress.IPv4Address((int(ip) >> 80) & 0xFFFFFFFF)
    if ip in _V4_COMPAT and int(ip) > 1:
        return "IPv4-compatible IPv6", ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _v4_rule(ip: ipaddress.IPv4Address) -> str | None:
    for net, rule in _V4_RULES:
        if ip in net:
            return rule
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not globally routable"
    return None


def _rule(ip: IPAddress) -> str | None:
    """The blocklist rule matching `ip`, or None (no allowlist involved)."""
    if isinstance(ip, ipaddress.IPv4Address):
        return _v4_rule(ip)
    for net, rule in _V6_FIRST:
        if ip in net:
            return rule
    embedded = _embedded_v4(ip)
    if embedded is not None:
        form, v4 = embedded
        inner = _v4_rule(v4)
        if form == "IPv4-compatible IPv6":  # deprecated (RFC 4291): never a valid destination
            return f"{form} form of {v4}" + (f", {inner}" if inner else " (deprecated)")
        return f"{form} form of {v4}, {inner}" if inner else None
    for net, rule in _V6_RULES:
        if ip in net:
            return rule
    if ip in _V6_RESERVED:
        return "reserved (::/8)"
    if not ip.is_global or ip.is_multicast or ip.is_reserved:
        return "not globally routable"
    return None


def parse_ip(text: str) -> IPAddress:
    """An address as printed by a resolver or a URL host: brackets, `%25` and zone ids
    are stripped (`fe80::1%eth0`). Raises ValueError."""
    host = text.strip()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = unquote(host).split("%", 1)[0]
    return ipaddress.ip_address(host)


def _is_canonical_ipv4(host: str) -> bool:
    parts = host.split(".")
    return len(parts) == 4 and all(
        p.isascii() and p.isdigit() and 1 <= len(p) <= 3 and (p == "0" or p[0] != "0")
        and int(p) <= 255 for p in parts)


def _looks_numeric(host: str) -> bool:
    """True for hosts a URL parser or `getaddrinfo` may read as a (legacy) IPv4 address:
    the last label is a number (WHATWG "ends in a number"), or `inet_aton` accepts it."""
    for candidate in {host, unquote(host)}:
        label = candidate.rstrip(".").rsplit(".", 1)[-1]
        if label and _NUMERIC_LABEL.fullmatch(label):
            return True
        try:
            socket.inet_aton(candidate)
        except (OSError, ValueError):
            continue
        return True
    return False


def parse_allowlist(allowlist: str | Iterable[str]) -> tuple[IPNetwork, ...]:
    """Comma-separated (or iterable) CIDRs; a bare address is a /32 or /128."""
    items = allowlist.split(",") if isinstance(allowlist, str) else list(allowlist)
    networks = []
    for item in items:
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ipaddress.ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"OBSERVATORY_DESTINATION_ALLOWLIST: invalid CIDR {item!r}") from exc
    return tuple(networks)


class DestinationPolicy:
    """The blocklist plus allowlisted networks; immutable, shared by the client's layers."""

    def __init__(self, allowlist: Iterable[IPNetwork] = ()) -> None:
        self.allowlist: tuple[IPNetwork, ...] = tuple(allowlist)

    @classmethod
    def from_allowlist(cls, allowlist: str | Iterable[str] | None = None) -> DestinationPolicy:
        """`None` reads OBSERVATORY_DESTINATION_ALLOWLIST now; `""` or `[]` exempts nothing."""
        if allowlist is None:
            from models.config import get_settings

            allowlist = get_settings().destination_allowlist
        return cls(parse_allowlist(allowlist))

    def _allowed(self, ip: IPAddress) -> bool:
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip in _V4_MAPPED:
            candidates.append(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
        return any(c.version == net.version and c in net
                   for c in candidates for net in self.allowlist)

    def address_reason(self, address: str | IPAddress) -> str | None:
        """Why connecting to `address` is refused, or None if it is allowed."""
        try:
            ip = address if not isinstance(address, str) else parse_ip(address)
        except ValueError:
            return "not a valid IP address"
        if self._allowed(ip):
            return None
        return _rule(ip)

    def check_address(self, host: str, address: str) -> None:
        reason = self.address_reason(address)
        if reason is not None:
            raise DestinationBlockedError(host, address, reason)

    def check_host(self, host: str) -> IPAddress | None:
        """Check a URL host before connecting: an IP literal must be allowed and numeric
        non-canonical forms are refused. Returns the literal's address, or None for a host
        name (checked by the resolver when it is resolved)."""
        bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
        if not bare:
            raise DestinationBlockedError(host, None, "an empty host")
        if ":" in bare:  # aiohttp treats any host with a colon as an IPv6 literal
            try:
                ip = parse_ip(bare)
            except ValueError:
                raise DestinationBlockedError(host, None, "not a valid IPv6 literal") from None
            self.check_address(host, bare)
            return ip
        if _is_canonical_ipv4(bare):
            self.check_address(host, bare)
            return ipaddress.IPv4Address(bare)
        if _looks_numeric(bare):
            raise DestinationBlockedError(
                host, None, "a non-canonical numeric IPv4 form (only dotted-quad is accepted)")
        return None

    def check_url(self, url: httpx.URL | str) -> None:
        """Static checks of a URL (see the module's `check_url`)."""
        try:
            parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
        except httpx.InvalidURL as exc:
            raise ValueError(f"invalid URL: {exc}") from exc
        if parsed.scheme not in ("http", "https"):
            raise ValueError(f"invalid URL: scheme must be http or https, not {parsed.scheme!r}")
        if not parsed.raw_host:
            raise ValueError("invalid URL: no host")
        for host in _hosts_of(parsed):
            self.check_host(host)


def _hosts_of(url: httpx.URL) -> list[str]:
    """The host as httpx sees it and as aiohttp will (yarl parses `str(url)` again)."""
    hosts = [url.raw_host.decode("ascii", "replace")]
    try:
        raw = yarl.URL(str(url)).raw_host
    except (ValueError, TypeError):
        raw = None  # aiohttp cannot parse it either and will refuse the request
    if raw and raw not in hosts:
        hosts.append(raw)
    return hosts


def check_url(url: httpx.URL | str, allowlist: str | Iterable[str] | None = None) -> None:
    """Static destination check, without DNS. Raises ValueError (invalid or non-http(s) URL)
    or DestinationBlockedError (blocked IP literal, non-canonical numeric host)."""
    DestinationPolicy.from_allowlist(allowlist).check_url(url)


class GuardedResolver(AbstractResolver):
    """Resolves with `inner` (aiohttp's ThreadedResolver by default) and returns only the
    allowed addresses; raises DestinationBlockedError when none is left."""

    def __init__(self, policy: DestinationPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        self._policy.check_host(host)  # numeric forms never reach getaddrinfo
        if self._inner is None:
            self._inner = ThreadedResolver()
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if self._policy.address_reason(r["host"]) is None]
        if results and not allowed:
            addresses = list(dict.fromkeys(r["host"] for r in results))
            reasons = dict.fromkeys(str(self._policy.address_reason(a)) for a in addresses)
            raise DestinationBlockedError(host, ", ".join(addresses), "; ".join(reasons))
        return allowed

    async def close(self) -> None:
        if self._inner is not None:
            await self._inner.close()


def guarded_socket_factory(policy: DestinationPolicy) -> Callable[[tuple], socket.socket]:
    """`TCPConnector(socket_factory=...)`: refuse to create a socket to a blocked address."""

    def factory(addr_info: tuple) -> socket.socket:
        family, type_, proto, _canon, sockaddr = addr_info
        address = str(sockaddr[0])
        reason = policy.address_reason(address)
        if reason is not None:
            raise _BlockedSocketError(DestinationBlockedError(address, address, reason))
        return socket.socket(family=family, type=type_, proto=proto)

    return factory


class GuardedTransport(httpx.AsyncBaseTransport):
    """Checks every request's host (each redirect hop included), then delegates to `inner`.
    A refusal from any layer below is re-raised as a plain DestinationBlockedError."""

    def __init__(self, inner: httpx.AsyncBaseTransport, policy: DestinationPolicy) -> None:
        self.inner = inner
        self.policy = policy

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(
                f"scheme must be http or https, not {request.url.scheme!r}", request=request)
        for host in _hosts_of(request.url):
            self.policy.check_host(host)
        try:
            return await self.inner.handle_async_request(request)
        except DestinationBlockedError:
            raise
        except Exception as exc:
            blocked = _find_blocked(exc)
            if blocked is None:
                raise
            raise DestinationBlockedError(blocked.host, blocked.address, blocked.rule) from exc

    async def aclose(self) -> None:
        await self.inner.aclose()


def _chain(exc: BaseException):
    seen: set[int] = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        stack.extend([current.__cause__, current.__context__])
        stack.extend(getattr(current, "exceptions", ()) or ())  # ExceptionGroup


def _find_blocked(exc: BaseException) -> DestinationBlockedError | None:
    for e in _chain(exc):
        if isinstance(e, DestinationBlockedError):
            return e
        if isinstance(e, _BlockedSocketError):
            return e.blocked
    return None


def blocked_reason(exc: BaseException) -> str | None:
    """The guard's message if `exc` is (or was caused by) a guard refusal, else None."""
    blocked = _find_blocked(exc)
    if blocked is not None:
        return str(blocked)
    for e in _chain(exc):
        # aiohappyeyeballs folds several socket errors into one OSError("Multiple exceptions")
        if isinstance(e, OSError) and e.errno == errno.EACCES and MARKER in str(e):
            return str(e)
    return None
