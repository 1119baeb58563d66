"""SSRF guard: address rules, and the guarded client against real servers on 127.0.0.x."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import httpx
import pytest
import pytest_asyncio
from aiohttp import web
from aiohttp.abc import AbstractResolver
from httpx_aiohttp import AiohttpTransport

from jobs.guard import (
    DestinationBlockedError,
    DestinationPolicy,
    GuardedTransport,
    blocked_reason,
    check_url,
    guarded_socket_factory,
)
from jobs.http import make_client

NO_EXEMPTIONS = DestinationPolicy.from_allowlist("")
LOOPBACK_ALLOWED = DestinationPolicy.from_allowlist("127.0.0.0/8")


# --- address rules ------------------------------------------------------------------------

BLOCKED = [
    ("127.0.0.1", "loopback"),
    ("127.255.255.254", "loopback"),
    ("10.1.2.3", "private"),
    ("172.16.0.1", "private"),
    ("172.31.255.255", "private"),
    ("192.168.1.1", "private"),
    ("169.254.1.1", "link-local"),
    ("169.254.169.254", "cloud metadata"),
    ("100.100.100.200", "cloud metadata"),
    ("100.64.0.1", "carrier-grade NAT"),
    ("100.127.255.254", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"),
    ("0.1.2.3", "unspecified"),
    ("224.0.0.1", "multicast"),
    ("239.255.255.250", "multicast"),
    ("255.255.255.255", "broadcast"),
    ("240.0.0.1", "reserved"),
    ("192.0.2.1", "reserved"),
    ("198.18.0.1", "reserved"),
    ("::1", "loopback"),
    ("::", "unspecified"),
    ("fc00::1", "unique local"),
    ("fd12:3456::1", "unique local"),
    ("fd00:ec2::254", "cloud metadata"),
    ("fe80::1", "link-local"),
    ("fe80::1%eth0", "link-local"),
    ("febf:ffff::1", "link-local"),
    ("ff02::1", "multicast"),
    ("fec0::1", "site-local"),
    ("2001:db8::1", "documentation"),
    ("2001::1", "Teredo"),
    ("64:ff9b:1::1", "local-use NAT64"),
    # IPv4-mapped / compatible forms (Python's flags miss the mapped ones)
    ("::ffff:127.0.0.1", "IPv4-mapped IPv6 form of 127.0.0.1, loopback"),
    ("::ffff:7f00:1", "IPv4-mapped IPv6 form of 127.0.0.1, loopback"),
    ("0:0:0:0:0:ffff:7f00:0001", "IPv4-mapped IPv6 form of 127.0.0.1, loopback"),
    ("::ffff:10.0.0.1", "private"),
    ("::ffff:169.254.169.254", "cloud metadata"),
    ("::ffff:100.64.0.1", "carrier-grade NAT"),
    ("::ffff:0.0.0.0", "unspecified"),
    ("::127.0.0.1", "IPv4-compatible IPv6 form of 127.0.0.1, loopback"),
    ("::7f00:1", "IPv4-compatible"),
    ("::93.184.216.34", "IPv4-compatible"),  # deprecated form: refused even when public
    # NAT64 and 6to4 embedding a blocked IPv4 address
    ("64:ff9b::127.0.0.1", "NAT64 (64:ff9b::/96) form of 127.0.0.1, loopback"),
    ("64:ff9b::a9fe:a9fe", "cloud metadata"),
    ("64:ff9b::a00:1", "private"),
    ("2002:7f00:1::1", "6to4 (2002::/16) form of 127.0.0.1, loopback"),
    ("2002:a9fe:a9fe::1", "cloud metadata"),
    ("2002:c0a8:101::", "private"),
    ("2002:6440:1::1", "carrier-grade NAT"),
]

ALLOWED = [
    "93.184.216.34", "8.8.8.8", "1.1.1.1", "11.0.0.1", "100.63.255.255", "100.128.0.0",
    "172.32.0.1", "192.169.0.1", "2606:4700::1", "2a00:1450:4001::1",
    "::ffff:93.184.216.34", "64:ff9b::5db8:d822", "2002:5db8:d822::1",
]


@pytest.mark.parametrize(("address", "rule"), BLOCKED)
def test_blocked_addresses(address: str, rule: str) -> None:
    reason = NO_EXEMPTIONS.address_reason(address)
    assert reason is not None and rule in reason, (address, reason)


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses_pass(address: str) -> None:
    assert NO_EXEMPTIONS.address_reason(address) is None


def test_explicit_rules_do_not_depend_on_ipaddress_flags() -> None:
    import ipaddress

    # The cases the stdlib flags get wrong or leave open, refused anyway.
    assert not ipaddress.ip_address("100.64.0.1").is_private
    assert NO_EXEMPTIONS.address_reason("100.64.0.1")
    assert not ipaddress.ip_address("::ffff:127.0.0.1").is_loopback
    assert NO_EXEMPTIONS.address_reason("::ffff:127.0.0.1")


def test_allowlist_exempts_only_its_networks() -> None:
    policy = LOOPBACK_ALLOWED
    assert policy.address_reason("127.0.0.1") is None
    assert policy.address_reason("127.0.0.2") is None
    assert policy.address_reason("::ffff:127.0.0.1") is None  # same host as 127.0.0.1
    assert policy.address_reason("::ffff:7f00:2") is None
    assert policy.address_reason("::1") == "loopback (::1)"
    assert "private" in policy.address_reason("10.0.0.1")
    assert "NAT64" in policy.address_reason("64:ff9b::7f00:1")  # another host, not exempt
    assert "IPv4-compatible" in policy.address_reason("::7f00:1")

    several = DestinationPolicy.from_allowlist(" 10.0.0.0/8 , 169.254.169.254/32,fd00::/8 ,")
    assert several.address_reason("10.9.9.9") is None
    assert several.address_reason("169.254.169.254") is None
    assert several.address_reason("fd00:ec2::254") is None
    assert "link-local" in several.address_reason("169.254.1.1")
    assert DestinationPolicy.from_allowlist(["192.168.1.7"]).address_reason("192.168.1.7") is None


def test_allowlist_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBSERVATORY_DESTINATION_ALLOWLIST", "10.0.0.0/8")
    assert DestinationPolicy.from_allowlist(None).address_reason("10.1.1.1") is None
    assert DestinationPolicy.from_allowlist(None).address_reason("127.0.0.1")
    monkeypatch.setenv("OBSERVATORY_DESTINATION_ALLOWLIST", "")
    assert DestinationPolicy.from_allowlist(None).address_reason("10.1.1.1")


def test_invalid_allowlist_fails_loudly() -> None:
    with pytest.raises(ValueError, match="invalid CIDR"):
        DestinationPolicy.from_allowlist("127.0.0.0/8,not-a-network")
    with pytest.raises(ValueError):
        make_client(allowlist="10.0.0.0/33")


NON_CANONICAL = ["2130706433", "0177.0.0.1", "127.1", "0x7f.1", "0x7f000001", "017700000001",
                 "127.0.0.1.", "127.000.000.001", "0x7F.0.0.1", "%31%32%37.0.0.1", "1.2.3.08",
                 "example.123"]


@pytest.mark.parametrize("host", NON_CANONICAL)
def test_non_canonical_numeric_hosts_refused_even_when_allowlisted(host: str) -> None:
    with pytest.raises(DestinationBlockedError, match="non-canonical"):
        LOOPBACK_ALLOWED.check_host(host)


def test_check_host_literals_and_names() -> None:
    assert str(LOOPBACK_ALLOWED.check_host("127.0.0.1")) == "127.0.0.1"
    assert LOOPBACK_ALLOWED.check_host("example.com") is None  # names: the resolver decides
    assert LOOPBACK_ALLOWED.check_host("123.example.com") is None
    with pytest.raises(DestinationBlockedError, match="loopback"):
        NO_EXEMPTIONS.check_host("127.0.0.1")
    with pytest.raises(DestinationBlockedError, match="loopback"):
        NO_EXEMPTIONS.check_host("[::1]")
    with pytest.raises(DestinationBlockedError, match="not a valid IPv6"):
        NO_EXEMPTIONS.check_host("::zz")


def test_check_url() -> None:
    check_url("https://example.com/hook", allowlist="")
    check_url("http://93.184.216.34:8080/x", allowlist="")
    check_url("http://127.0.0.1:9/", allowlist="127.0.0.0/8")
    for url in ["http://127.0.0.1/", "http://[::1]:80/", "http://[::ffff:127.0.0.1]/",
                "http://169.254.169.254/latest/meta-data/", "http://2130706433/",
                "http://127.1/", "http://0x7f.1/", "http://[fd00:ec2::254]/"]:
        with pytest.raises(DestinationBlockedError):
            check_url(url, allowlist="")
    for url in ["ftp://example.com/", "http://[::1", "http:///nohost", "http://0177.0.0.1/"]:
        with pytest.raises(ValueError):
            check_url(url, allowlist="")


def test_blocked_reason_walks_the_chain() -> None:
    root = DestinationBlockedError("localhost", "127.0.0.1", "loopback (127.0.0.0/8)")
    try:
        try:
            raise root
        except DestinationBlockedError as exc:
            raise httpx.ConnectTimeout("mapped by httpx-aiohttp") from exc
    except httpx.ConnectTimeout as exc:
        wrapped = exc
    assert blocked_reason(wrapped) == str(root)
    assert "localhost (127.0.0.1) is loopback" in str(root)
    try:
        try:
            raise root
        except DestinationBlockedError:
            raise RuntimeError("context only")  # noqa: B904
    except RuntimeError as exc:
        assert blocked_reason(exc) == str(root)
    assert blocked_reason(httpx.ConnectError("refused")) is None
    assert blocked_reason(ValueError("x")) is None
    loop_a, loop_b = ValueError("a"), ValueError("b")
    loop_a.__cause__, loop_b.__cause__ = loop_b, loop_a  # a cycle must not hang
    assert blocked_reason(loop_a) is None


# --- real sockets on 127.0.0.x --------------------------------------------------------------

class Server:
    """A real aiohttp server on `host`, counting the requests it gets."""

    def __init__(self, host: str = "127.0.0.1", location: str | None = None) -> None:
        self.host = host
        self.location = location  # answer 302 to this, else 200
        self.hits = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        if self.location:
            return web.Response(status=302, headers={"Location": self.location})
        return web.Response(text="ok")

    async def start(self) -> Server:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    def url(self, host: str | None = None) -> str:
        host = host or self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}/"

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    srv = await Server().start()
    yield srv
    await srv.stop()


async def test_hostname_resolving_to_loopback_is_refused(server: Server) -> None:
    async with make_client(allowlist="") as client:
        with pytest.raises(DestinationBlockedError, match="localhost .*loopback") as info:
            await client.get(server.url("localhost"))
    assert blocked_reason(info.value)
    assert server.hits == 0


async def test_allowlisted_loopback_reaches_a_real_server(server: Server) -> None:
    async with make_client(allowlist="127.0.0.0/8") as client:
        assert (await client.get(server.url("localhost"))).status_code == 200
        assert (await client.get(server.url())).status_code == 200
        assert (await client.post(server.url(), content=b"{}")).status_code == 200
    assert server.hits == 3


async def test_default_client_reads_the_environment_allowlist(server: Server) -> None:
    # tests/conftest.py sets OBSERVATORY_DESTINATION_ALLOWLIST=127.0.0.0/8
    async with make_client() as client:
        assert (await client.get(server.url())).status_code == 200
    assert server.hits == 1


async def test_ip_literals_refused_without_allowlist(server: Server) -> None:
    async with make_client(allowlist="") as client:
        with pytest.raises(DestinationBlockedError, match="127.0.0.1 is loopback"):
            await client.get(server.url())
        with pytest.raises(DestinationBlockedError, match="::1 is loopback"):
            await client.get(server.url("::1"))
        with pytest.raises(DestinationBlockedError, match="IPv4-mapped"):
            await client.get(server.url("::ffff:127.0.0.1"))
    assert server.hits == 0


async def test_ipv6_loopback_literal_never_connected() -> None:
    v6 = await Server("::1").start()  # this machine (and CI) has IPv6 loopback: no skip
    try:
        async with make_client(allowlist="127.0.0.0/8") as client:
            with pytest.raises(DestinationBlockedError):
                await client.get(v6.url())
        assert v6.hits == 0
    finally:
        await v6.stop()


@pytest.mark.parametrize("host", ["2130706433", "127.1", "0x7f.1", "0x7f000001",
                                  "0177.0.0.1", "017700000001", "127.0.0.1."])
async def test_non_canonical_forms_never_connect(server: Server, host: str) -> None:
    async with make_client(allowlist="127.0.0.0/8") as client:  # even when allowlisted
        with pytest.raises((DestinationBlockedError, httpx.InvalidURL,
                            httpx.UnsupportedProtocol)):
            await client.get(f"http://{host}:{server.port}/")
    assert server.hits == 0


@pytest_asyncio.fixture
async def redirect_pair() -> AsyncIterator[tuple[Server, Server]]:
    target = await Server("127.0.0.2").start()  # Linux routes all of 127/8 to lo
    origin = await Server("127.0.0.1", location=target.url()).start()
    yield origin, target
    await origin.stop()
    await target.stop()


async def test_redirect_to_a_blocked_address_is_refused(redirect_pair) -> None:
    origin, target = redirect_pair
    async with make_client(allowlist="127.0.0.1/32", follow_redirects=True) as client:
        with pytest.raises(DestinationBlockedError, match="127.0.0.2 is loopback") as info:
            await client.get(origin.url())
    assert blocked_reason(info.value)
    assert origin.hits == 1
    assert target.hits == 0

    # per-request opt-in on a client that does not follow by default: same guard
    async with make_client(allowlist="127.0.0.1/32") as client:
        with pytest.raises(DestinationBlockedError):
            await client.get(origin.url(), follow_redirects=True)
    assert target.hits == 0


async def test_redirects_not_followed_by_default_and_allowed_hops_work(redirect_pair) -> None:
    origin, target = redirect_pair
    async with make_client(allowlist="127.0.0.1/32") as client:
        response = await client.get(origin.url())
        assert response.status_code == 302
    assert target.hits == 0
    # control: the second server is reachable when its address is allowed, so the refusal
    # above is the guard's doing
    async with make_client(allowlist="127.0.0.1/32,127.0.0.2/32", follow_redirects=True) as c:
        assert (await c.get(origin.url())).status_code == 200
    assert target.hits == 1


async def test_redirect_to_numeric_form_is_refused(server: Server) -> None:
    numeric = await Server("127.0.0.1", location=f"http://2130706433:{server.port}/").start()
    try:
        async with make_client(allowlist="127.0.0.0/8", follow_redirects=True) as client:
            with pytest.raises(DestinationBlockedError, match="non-canonical"):
                await client.get(numeric.url())
    finally:
        await numeric.stop()
    assert server.hits == 0


class LyingResolver(AbstractResolver):
    """Bypasses the guarded resolver: answers every name with 127.0.0.1."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list:
        return [{"hostname": host, "host": "127.0.0.1", "port": port,
                 "family": socket.AF_INET, "proto": 0, "flags": 0}]

    async def close(self) -> None:
        return None


def _lying_session(policy: DestinationPolicy):
    def factory() -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            resolver=LyingResolver(), socket_factory=guarded_socket_factory(policy)))
    return factory


async def test_socket_factory_checks_the_address_actually_connected(server: Server) -> None:
    """Even if a resolver let a blocked address through, no socket is connected to it; the
    refusal is recognisable however httpx-aiohttp wraps it."""
    unguarded = httpx.AsyncClient(transport=AiohttpTransport(client=_lying_session(NO_EXEMPTIONS)))
    async with unguarded:
        with pytest.raises(httpx.HTTPError) as info:  # ConnectTimeout, per httpx-aiohttp 0.2
            await unguarded.get(f"http://rebound.example:{server.port}/")
    assert "127.0.0.1 is loopback" in (blocked_reason(info.value) or "")

    guarded = httpx.AsyncClient(transport=GuardedTransport(
        AiohttpTransport(client=_lying_session(NO_EXEMPTIONS)), NO_EXEMPTIONS))
    async with guarded:
        with pytest.raises(DestinationBlockedError, match="127.0.0.1 is loopback"):
            await guarded.get(f"http://rebound.example:{server.port}/")
    assert server.hits == 0


async def test_streamed_send_raises_blocked_error(server: Server) -> None:
    """The shape post_once uses: build_request + send(stream=True)."""
    async with make_client(allowlist="") as client:
        request = client.build_request("POST", server.url(), content=b"{}")
        with pytest.raises(DestinationBlockedError) as info:
            await client.send(request, stream=True)
    assert blocked_reason(info.value) == str(info.value)
    assert not isinstance(info.value, httpx.HTTPError)
    assert server.hits == 0
