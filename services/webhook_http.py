"""The network side of job webhooks: which URLs may be called, how, and when to try again.

* :func:`check_url` is the SSRF guard, run when an endpoint is registered AND before
  every delivery (DNS may have changed meanwhile): http(s) only, no credentials in the
  URL, and every address the host resolves to must be public unless private targets
  are allowed (``WEBHOOK_ALLOW_PRIVATE``, dev and test). Without private targets the
  scheme must be https: the body carries job data.
* :func:`post` sends one attempt: no redirects followed (a 3xx could point inside),
  no proxy taken from the environment, a bounded timeout, the answer's body never read.
  Unless private targets are allowed, the address the socket actually connected to is
  checked again before a byte is sent: a name that resolved to a public address for
  :func:`check_url` and to a private one a moment later (DNS rebinding) is refused.
* :func:`next_delay` is the retry schedule, with ``Retry-After`` honoured when longer.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import NewConnectionError

# Standard Webhooks' suggested schedule: about a day in all, 7 attempts.
DEFAULT_SCHEDULE = (5, 300, 1800, 7200, 18000, 36000)
MAX_RETRY_AFTER = 24 * 3600
MAX_URL_LENGTH = 2000
USER_AGENT = "Purser-Webhooks/1"

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[..., list[Any]]


class UrlRefused(ValueError):
    """The URL may not be called; ``code`` is the API's stable error code."""

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _embedded_v4(ip: Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo): it is what gets reached."""
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip.teredo is not None:
            return ip.teredo[1]
    return None


def address_refusal(ip: Address) -> str | None:
    """Why ``ip`` is not a public destination (loopback, private...), or ``None`` when it is."""
    embedded = _embedded_v4(ip)
    if embedded is not None:
        reason = address_refusal(embedded)
        if reason is not None:
            return reason
    for name in ("loopback", "link_local", "private", "multicast", "reserved", "unspecified"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if isinstance(ip, ipaddress.IPv6Address) and ip.is_site_local:
        return "site-local"
    if not ip.is_global:  # shared address space (100.64/10) and other special ranges
        return "not global"
    return None


def _address(text: str) -> Address:
    # getaddrinfo and getpeername may append a zone to link-local IPv6 addresses (fe80::1%eth0).
    return ipaddress.ip_address(text.split("%", 1)[0])


def _resolve(host: str, port: int, resolver: Resolver) -> list[Address]:
    try:
        return [ipaddress.ip_address(host)]
    except ValueError:
        pass
    try:
        infos = resolver(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlRefused("WEBHOOK_URL_INVALID", f"the host {host!r} does not resolve") from exc
    found = {_address(str(info[4][0])) for info in infos}
    if not found:
        raise UrlRefused("WEBHOOK_URL_INVALID", f"the host {host!r} does not resolve")
    return sorted(found, key=str)


def check_url(url: str, *, allow_private: bool, resolver: Resolver = socket.getaddrinfo) -> list[Address]:
    """The addresses ``url`` reaches, or :class:`UrlRefused` (``WEBHOOK_URL_INVALID`` / ``_PRIVATE``)."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused("WEBHOOK_URL_INVALID", "the URL is too long")
    try:
        parts = urlsplit(url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as exc:
        raise UrlRefused("WEBHOOK_URL_INVALID", "not a URL") from exc
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("WEBHOOK_URL_INVALID", "the URL must be http(s)")
    if parts.scheme != "https" and not allow_private:
        raise UrlRefused("WEBHOOK_URL_INVALID", "the URL must be https")
    if not parts.hostname:
        raise UrlRefused("WEBHOOK_URL_INVALID", "the URL has no host")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("WEBHOOK_URL_INVALID", "credentials in the URL are not accepted")
    if parts.fragment:
        raise UrlRefused("WEBHOOK_URL_INVALID", "a webhook URL has no fragment")
    addresses = _resolve(parts.hostname, port, resolver)
    if not allow_private:
        for ip in addresses:
            reason = address_refusal(ip)
            if reason is not None:
                raise UrlRefused("WEBHOOK_URL_PRIVATE", f"{parts.hostname} resolves to a {reason} address ({ip})")
    return addresses


def next_delay(attempts_made: int, schedule: Sequence[float], retry_after: float | None = None) -> float | None:
    """Seconds before attempt ``attempts_made + 1``, or ``None`` once the schedule is spent.

    The receiver's ``Retry-After`` wins when it asks for longer (capped at a day).
    """
    if attempts_made < 1 or attempts_made > len(schedule):
        return None
    delay = float(schedule[attempts_made - 1])
    if retry_after is not None:
        delay = max(delay, min(retry_after, MAX_RETRY_AFTER))
    return delay


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` in seconds (delta-seconds or an HTTP date); ``None`` when absent or invalid."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None or when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


@dataclass(frozen=True)
class Attempt:
    """What one POST gave: an HTTP status, or ``status`` 0 and the transport ``error``."""

    status: int
    duration_ms: int
    retry_after: float | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


def _checked_peer(conn: HTTPConnection, sock: socket.socket) -> socket.socket:
    """``sock`` when its peer is a public address; closed and refused otherwise."""
    peer = _address(str(sock.getpeername()[0]))
    reason = address_refusal(peer)
    if reason is None:
        return sock
    sock.close()
    raise NewConnectionError(conn, f"refused: {conn.host} connected to a {reason} address ({peer})")


class _PublicHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        return _checked_peer(self, super()._new_conn())


class _PublicHTTPSConnection(HTTPSConnection):
    # TLS is wrapped around the socket _new_conn returns: the check comes first, and
    # the certificate is still verified against the URL's host name.
    def _new_conn(self) -> socket.socket:
        return _checked_peer(self, super()._new_conn())


class _PublicHTTPPool(HTTPConnectionPool):
    ConnectionCls = _PublicHTTPConnection


class _PublicHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _PublicHTTPSConnection


class _PublicOnlyAdapter(HTTPAdapter):
    """Connects only to public addresses, whatever DNS answers at connect time."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _PublicHTTPPool, "https": _PublicHTTPSPool}


def post(url: str, body: bytes, headers: dict[str, str], timeout: float, *, allow_private: bool = False) -> Attempt:
    """POST ``body`` once; never raises for a network failure (it is an :class:`Attempt`)."""
    started = time.monotonic()
    with requests.Session() as session:
        session.trust_env = False  # an environment proxy must not become a way around the guard
        if not allow_private:
            public_only = _PublicOnlyAdapter()
            session.mount("http://", public_only)
            session.mount("https://", public_only)
        try:
            response = session.post(url, data=body, timeout=timeout, allow_redirects=False, stream=True,
                                    headers={**headers, "content-type": "application/json",
                                             "user-agent": USER_AGENT})
        except requests.RequestException as exc:
            return Attempt(0, int((time.monotonic() - started) * 1000), error=f"{type(exc).__name__}: {exc}"[:300])
        response.close()  # the receiver's body is not ours to download
    return Attempt(response.status_code, int((time.monotonic() - started) * 1000),
                   retry_after=parse_retry_after(response.headers.get("retry-after")))
