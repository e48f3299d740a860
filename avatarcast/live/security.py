"""What the server trusts from a request, and what it tells browsers: public URL, allowed origins, TLS, headers.

- **Public URL**: the URLs the API returns (view, ingest, WHEP, stats) are built from one configured base URL
  (``--public-url``, default: the address the server is bound to), never from the request's ``Host`` header, which
  a client (or a DNS-rebinding page) chooses.
- **Origins**: a browser says which page opened a WebSocket in ``Origin``. The ingest WebSocket accepts clients
  that send none (TTS services, scripts: not browsers), the public URL's own origin, a page on the very address
  it connects to when that address cannot be re-pointed by DNS (an IP literal or ``localhost``), and the origins
  configured with ``--allow-origin`` (``*``: any). Everything else gets 403 before the upgrade.
- **TLS**: ``--tls-cert``/``--tls-key`` serve HTTPS and WSS. Binding a non-loopback address without them is refused
  unless ``--allow-plain-http`` says a reverse proxy in front terminates TLS.
- **Headers**: every response carries ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` (a
  viewer URL carries its token), ``X-Frame-Options: DENY`` and, unless it sets its own, the Content-Security-Policy
  ``default-src 'none'; frame-ancestors 'none'``; the viewer page's policy allows its own inline script and style
  only (by hash), same-origin requests only, and no framing.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from avatarcast.core.errors import InputError

DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def _is_ip_or_localhost(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.localdomain") or host.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return False


def is_loopback(host: str) -> bool:
    host = host.strip("[]").lower()
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def normalize_origin(origin: str) -> str | None:
    """``scheme://host[:port]`` in lower case without a default port, or None when ``origin`` is not one."""
    try:
        parts = urlsplit(origin.strip())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        return None
    host = parts.hostname.lower()
    if ":" in host:
        host = f"[{host}]"
    if port is None or port == DEFAULT_PORTS[parts.scheme]:
        return f"{parts.scheme}://{host}"
    return f"{parts.scheme}://{host}:{port}"


def parse_origins(origins: tuple[str, ...], what: str) -> tuple[bool, frozenset[str]]:
    """``(any origin, the others normalized)`` for a configured list where ``*`` means any; ``InputError`` naming
    ``what`` for an entry that is not ``scheme://host[:port]``."""
    found = set()
    for origin in origins:
        if origin == "*":
            continue
        n = normalize_origin(origin)
        if n is None:
            raise InputError(f"{what} {origin!r} is not scheme://host[:port] (for example https://app.example.com) "
                             "or *")
        found.add(n)
    return "*" in origins, frozenset(found)


def check_public_url(url: str) -> str:
    """``url`` without a trailing slash, if it is an absolute http(s) URL with no query; ``InputError`` otherwise."""
    parts = urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InputError(f"public URL {url!r} is not an absolute http:// or https:// URL (for example "
                         "https://avatar.example.com)")
    return url.strip().rstrip("/")


@dataclass
class OriginPolicy:
    """Which ``Origin`` may open the ingest WebSocket (see the module's description)."""

    public_url: str | None = None
    allowed: tuple[str, ...] = ()  # extra origins, or "*"
    _allowed: frozenset[str] = field(init=False, default=frozenset())

    def __post_init__(self) -> None:
        self.any, found = parse_origins(self.allowed, "allowed origin")
        normalized = set(found)
        if self.public_url:
            public = normalize_origin(urlsplit(self.public_url)._replace(path="").geturl())
            if public:
                normalized.add(public)
        self._allowed = frozenset(normalized)

    def allows(self, origin: str | None, host_header: str, secure: bool) -> bool:
        if origin is None:  # not a browser
            return True
        if self.any:
            return True
        n = normalize_origin(origin)
        if n is None:  # "null" (sandboxed frames, file:// pages) and garbage
            return False
        if n in self._allowed:
            return True
        # same origin as the address connected to, when that address cannot be re-pointed by DNS
        own = normalize_origin(f"{'https' if secure else 'http'}://{host_header}")
        host = urlsplit(n).hostname or ""
        return own is not None and n == own and _is_ip_or_localhost(host)


def tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    """A server TLS context from a certificate chain and its key (PEM files), or None for neither."""
    if not cert and not key:
        return None
    if not cert or not key:
        raise InputError("TLS needs both `tls_cert` and `tls_key`")
    for path in (cert, key):
        if not Path(path).is_file():
            raise InputError(f"TLS file {path}: no such file")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except (ssl.SSLError, OSError) as exc:
        raise InputError(f"cannot load the TLS certificate {cert} with key {key}: {exc}") from exc
    return ctx


def check_bind(host: str, tls: bool, allow_plain_http: bool) -> str | None:
    """Refuse (``InputError``) serving plain HTTP on a non-loopback address unless explicitly allowed; return a
    warning to print when it is allowed."""
    if tls or is_loopback(host):
        return None
    if not allow_plain_http:
        raise InputError(f"refusing to serve plain HTTP on {host}: tokens and speech would cross the network in "
                         "clear. Give `tls_cert` and `tls_key`, or set `allow_plain_http` if a reverse proxy on a "
                         "trusted network terminates TLS (docs/security.md)")
    return (f"serving plain HTTP on {host} (`allow_plain_http`): only safe behind a TLS-terminating reverse proxy "
            "on a trusted network")


# ---------------------------------------------------------------------------------------------- headers

COMMON_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # for any response that sets no policy of its own (API answers, static files): nothing runs, nothing frames it
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}


def _hashes(html: str, tag: str) -> list[str]:
    out = []
    for body in re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.S):
        digest = base64.b64encode(hashlib.sha256(body.encode("utf-8")).digest()).decode("ascii")
        out.append(f"'sha256-{digest}'")
    return out


def page_headers(html: str) -> dict[str, str]:
    """The headers of an HTML page of ours: a CSP allowing exactly its inline scripts and styles, no framing."""
    scripts = " ".join(_hashes(html, "script")) or "'none'"
    styles = " ".join(_hashes(html, "style")) or "'none'"
    csp = ("default-src 'none'; "
           f"script-src {scripts}; style-src {styles}; "
           "connect-src 'self'; img-src 'self' data:; media-src 'self' blob: mediastream:; "
           "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return {**COMMON_HEADERS, "Content-Security-Policy": csp, "X-Frame-Options": "DENY",
            "Cache-Control": "no-cache"}
