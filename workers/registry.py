"""Where container disks come from: OCI registries in priority order, and how healthy each is.

`VIRTBUS_REGISTRIES` lists registry base URLs, most preferred first (mirrors included). An image
named without a registry host is looked up on each in that order. A registry that cannot be
reached, times out or answers 5xx is marked unhealthy for a while and tried only after the
healthy ones; a 404 just moves on. Everything here is pure bookkeeping: the protocol itself is in
`workers/ocipull.py`, the cache and the failover loop in `workers/imagecache.py`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import time
from collections.abc import Callable, Sequence
from urllib.parse import urlsplit

import msgspec

from events.errors import ValidationError

REGISTRIES_ENV = "VIRTBUS_REGISTRIES"
UNHEALTHY_ENV = "VIRTBUS_REGISTRY_UNHEALTHY_SECONDS"
TIMEOUT_ENV = "VIRTBUS_REGISTRY_TIMEOUT_SECONDS"
DEFAULT_UNHEALTHY_S = 30.0
DEFAULT_TIMEOUT_S = 10.0
DEFAULT_HOSTS = frozenset({"docker.io", "index.docker.io"})  # served by the configured list

# The reference grammar of the distribution spec, reduced to what a pull needs.
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REPOSITORY = re.compile(rf"^{_COMPONENT}(?:/{_COMPONENT})*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[a-f0-9]{64}$")


class Registry(msgspec.Struct, frozen=True):
    """One registry: `url` as configured (and as events name it), `host` with its port."""

    url: str
    host: str
    insecure: bool = False  # plain http, for loopback only


class ImageRef(msgspec.Struct, frozen=True):
    """A parsed image name: `host` is None when the configured registries are to be asked."""

    repository: str
    tag: str = "latest"
    digest: str | None = None
    host: str | None = None

    @property
    def reference(self) -> str:
        """What the manifest is asked for by: the digest when pinned, else the tag."""
        return self.digest or self.tag

    def __str__(self) -> str:
        name = f"{self.host}/{self.repository}" if self.host else self.repository
        return f"{name}@{self.digest}" if self.digest else f"{name}:{self.tag}"


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def parse_registries(text: str, *, field: str = REGISTRIES_ENV) -> list[Registry]:
    """Comma-separated base URLs, most preferred first. Plain http:// only for loopback."""
    out: list[Registry] = []
    for raw in text.split(","):
        url = raw.strip().rstrip("/")
        if not url:
            continue
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValidationError(f"{field}: {url!r} is not an http(s):// base URL", field=field)
        if parts.path or parts.query or parts.fragment or parts.username:
            raise ValidationError(
                f"{field}: {url!r} must be a bare base URL (no path, query or user)", field=field
            )
        if parts.scheme == "http" and not _loopback(parts.hostname):
            raise ValidationError(
                f"{field}: {url!r}: plain http:// is only allowed for loopback; use https://",
                field=field,
            )
        out.append(Registry(url=url, host=parts.netloc, insecure=parts.scheme == "http"))
    return out


def parse_image(text: str, *, field: str = "image") -> ImageRef:
    """`[host[:port]/]repository[:tag][@sha256:...]`, as Docker reads it."""
    rest, digest = text, None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST.match(digest):
            raise ValidationError(f"{field}: {text!r}: digest must be sha256:<64 hex>", field=field)
    host = None
    first, sep, remainder = rest.partition("/")
    if sep and ("." in first or ":" in first or first == "localhost"):
        host, rest = first, remainder
    tag = "latest"
    name, colon, maybe_tag = rest.rpartition(":")
    if colon:
        rest, tag = name, maybe_tag
        if not _TAG.match(tag):
            raise ValidationError(f"{field}: {text!r}: invalid tag {tag!r}", field=field)
    if not _REPOSITORY.match(rest):
        raise ValidationError(
            f"{field}: {text!r}: invalid repository name {rest!r} (lowercase, "
            "components separated by '/')",
            field=field,
        )
    if host in DEFAULT_HOSTS:
        host = None
    return ImageRef(repository=rest, tag=tag, digest=digest, host=host)


class Registries:
    """The configured registries in priority order, with which of them failed lately."""

    def __init__(
        self, registries: Sequence[Registry], *, unhealthy_s: float = DEFAULT_UNHEALTHY_S,
        timeout_s: float = DEFAULT_TIMEOUT_S, clock: Callable[[], float] = time.monotonic,
    ) -> None:  # fmt: skip
        self.registries = list(registries)
        self.unhealthy_s = unhealthy_s
        self.timeout_s = timeout_s
        self._clock = clock
        self._down: dict[str, tuple[float, str]] = {}  # url -> (until, why)

    @classmethod
    def from_env(cls, value: str | None = None) -> Registries:
        """From `value` (a worker flag) or `$VIRTBUS_REGISTRIES`, with the timing settings."""
        text = os.environ.get(REGISTRIES_ENV, "") if value is None else value
        return cls(
            parse_registries(text),
            unhealthy_s=_seconds(UNHEALTHY_ENV, DEFAULT_UNHEALTHY_S),
            timeout_s=_seconds(TIMEOUT_ENV, DEFAULT_TIMEOUT_S),
        )

    def for_image(self, image: ImageRef) -> list[Registry]:
        """Whom to ask, in order: the image's own host, else every configured registry, the
        healthy ones first (an unhealthy one is a last resort, not forgotten)."""
        if image.host is not None:
            host = image.host.rsplit(":", 1)[0].strip("[]")
            insecure = _loopback(host)
            scheme = "http" if insecure else "https"
            return [Registry(url=f"{scheme}://{image.host}", host=image.host, insecure=insecure)]
        healthy = [r for r in self.registries if self.unhealthy(r) is None]
        return healthy + [r for r in self.registries if r not in healthy]

    def unhealthy(self, registry: Registry) -> str | None:
        """Why `registry` is marked unhealthy, or None when it is not (or no longer)."""
        down = self._down.get(registry.url)
        if down is None:
            return None
        until, why = down
        if self._clock() >= until:
            del self._down[registry.url]
            return None
        return why

    def mark_unhealthy(self, registry: Registry, why: str) -> None:
        self._down[registry.url] = (self._clock() + self.unhealthy_s, why)

    def mark_healthy(self, registry: Registry) -> None:
        self._down.pop(registry.url, None)


def _seconds(env: str, default: float) -> float:
    text = os.environ.get(env, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if value < 0:
        raise ValidationError(f"{env}: {text!r} is not a number of seconds", field=env)
    return value
