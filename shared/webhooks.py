"""Webhooks' shared rules: which callback URLs are allowed, how a delivery is signed, when it is retried, and
where its record lives in Redis. The API checks a URL at submit with these, the worker again before each send.

A URL is allowed when its scheme is https (http too with WEBHOOK_ALLOW_HTTP), it carries no credentials, it is
at most MAX_URL_LENGTH printable ASCII characters, and its host is listed in WEBHOOK_ALLOWED_HOSTS: a host name
(exact, case-insensitive), an IP address, or a network (CIDR) of addresses. Any port of a listed host is
allowed. An address that is not public (loopback, private, shared, documentation ranges) must be listed, itself
or by a listed network; link-local, metadata, multicast, unspecified and reserved addresses are refused even when
listed. The worker resolves the host before each delivery, holds every address it resolves to those rules (DNS
rebinding) and connects to an address it checked.
"""

import hashlib
import hmac
import ipaddress
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import urlsplit

# The task message header that carries the callback URL from the API (or any Celery client) to the worker.
CALLBACK_HEADER = "callback_url"

# The HTTP headers of a delivery.
SIGNATURE_HEADER = "X-Iris-Signature"
TASK_ID_HEADER = "X-Iris-Task-Id"
TIMESTAMP_HEADER = "X-Iris-Delivery-Timestamp"
ATTEMPT_HEADER = "X-Iris-Delivery-Attempt"

MAX_URL_LENGTH = 2048

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Cloud metadata services that are not link-local, besides 169.254.169.254 (link-local, refused as such):
# AWS's IPv6 endpoint and Alibaba Cloud's.
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in ("169.254.169.254", "fd00:ec2::254",
                                                                  "100.100.100.200"))


class UrlRefused(ValueError):
    """A callback URL, or an address its host resolves to, that the policy does not allow; the message says why."""


@dataclass(frozen=True)
class Allowed:
    """WEBHOOK_ALLOWED_HOSTS, parsed: host names, addresses and networks."""

    names: frozenset[str]
    addresses: frozenset[IPAddress]
    networks: tuple[IPNetwork, ...]

    def lists(self, address: IPAddress) -> bool:
        """Tell whether ``address`` is listed, itself or by a listed network."""
        return address in self.addresses or any(address in network for network in self.networks)


@dataclass(frozen=True)
class Target:
    """A callback URL the policy allowed, in the parts a delivery needs."""

    scheme: str
    host: str
    port: int
    path: str  # path and query, as sent on the request line


@lru_cache(maxsize=8)
def parse_allowed(text: str) -> Allowed:
    """Parse a comma-separated WEBHOOK_ALLOWED_HOSTS; raise ValueError on a malformed network."""
    names: set[str] = set()
    addresses: set[IPAddress] = set()
    networks: list[IPNetwork] = []
    for raw in text.split(","):
        entry = raw.strip().lower().rstrip(".").strip("[]")
        if not entry:
            continue
        if "/" in entry:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        try:
            addresses.add(_unmapped(ipaddress.ip_address(entry)))
        except ValueError:
            names.add(entry)
    return Allowed(frozenset(names), frozenset(addresses), tuple(networks))


def _unmapped(address: IPAddress) -> IPAddress:
    """Return the IPv4 address inside an IPv4-mapped IPv6 one (::ffff:a.b.c.d), else ``address``."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def check_address(address: IPAddress, allowed: Allowed) -> None:
    """Raise UrlRefused unless a delivery may connect to ``address``."""
    address = _unmapped(address)
    if (address in METADATA_ADDRESSES or address.is_link_local or address.is_multicast or address.is_unspecified
            or (address.is_reserved and not address.is_loopback)):  # ::1 lies in IPv6's reserved ::/8
        raise UrlRefused(f"{address} is a link-local, metadata, multicast, unspecified or reserved address, "
                         f"never allowed")
    if not address.is_global and not allowed.lists(address):
        raise UrlRefused(f"{address} is a loopback or private address not listed in WEBHOOK_ALLOWED_HOSTS")


def check_url(url: str, allowed: Allowed, allow_http: bool = False) -> Target:
    """Return the parts of ``url`` if the policy allows it as a callback, else raise UrlRefused saying why."""
    if len(url) > MAX_URL_LENGTH:
        raise UrlRefused(f"the URL is longer than {MAX_URL_LENGTH} characters")
    if not url.isascii() or not url.isprintable() or " " in url:
        raise UrlRefused("the URL must be printable ASCII without spaces (an international host in its xn-- form)")
    schemes = ("https", "http") if allow_http else ("https",)
    parts = urlsplit(url)
    if parts.scheme.lower() not in schemes:
        raise UrlRefused(f"the scheme must be {' or '.join(schemes)}")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("the URL must not carry credentials")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise UrlRefused("the URL has no host")
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        raise UrlRefused("the URL's port is not a number from 1 to 65535")
    port = port or (443 if parts.scheme.lower() == "https" else 80)
    try:
        address: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        check_address(address, allowed)
        if not allowed.lists(_unmapped(address)):
            raise UrlRefused(f"the address {host} is not listed in WEBHOOK_ALLOWED_HOSTS")
    elif host not in allowed.names:
        raise UrlRefused(f"the host {host} is not listed in WEBHOOK_ALLOWED_HOSTS")
    path = parts.path or "/"
    return Target(parts.scheme.lower(), host, port, f"{path}?{parts.query}" if parts.query else path)


def signature(secret: str, body: bytes) -> str:
    """Return the X-Iris-Signature value of ``body``: ``sha256=`` and the hex HMAC-SHA256 of its exact bytes."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, header: str) -> bool:
    """Tell whether ``header`` is the signature of ``body`` under ``secret``, in constant time (what receivers do)."""
    return hmac.compare_digest(signature(secret, body), header)


def retry_delay(base: float, attempt: int) -> float:
    """Return how long after failed attempt ``attempt`` (1, 2, ...) the next one is due: base x 2^(attempt-1)."""
    return base * 2 ** (attempt - 1)


def retry_schedule(base: float, attempts: int) -> list[float]:
    """Return the delays between ``attempts`` attempts: the first is sent at once, each next one after these."""
    return [retry_delay(base, attempt) for attempt in range(1, attempts)]


def due_key(key_prefix: str) -> str:
    """Name the sorted set of pending deliveries: task ids scored by when their next attempt is due."""
    return f"{key_prefix}webhooks:due"


def record_prefix(key_prefix: str) -> str:
    """Return the prefix of the delivery records: a hash per task id (URL, body, attempts, state)."""
    return f"{key_prefix}webhook:"
