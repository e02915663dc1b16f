"""HTTP proxies: which one a URL goes through, and the CONNECT tunnel for https.

Input: the target URL and ``target.proxy`` (a URL, ``"none"``, or unset to
read ``HTTPS_PROXY`` / ``HTTP_PROXY`` / ``NO_PROXY`` / ``ALL_PROXY`` from the
environment, lower-case spellings too). Output: the proxy URL to use, or None.
The pool then opens its own socket to the proxy and, for https, asks it for a
tunnel (``CONNECT host:port``) before the TLS handshake, so every read is still
the pool's and keeps its kernel receive stamp.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import urllib.request
from dataclasses import dataclass
from typing import Optional
from urllib.parse import unquote, urlsplit

_HEAD_LIMIT = 16384  # bytes of a CONNECT answer read before giving up on it


class ProxyError(OSError):
    """The proxy refused or broke the tunnel; the message names it and its answer."""


def proxy_for(url: str, setting: Optional[str]) -> Optional[str]:
    """The proxy URL for requests to ``url``, or None to connect directly.

    ``setting`` is ``target.proxy``: a proxy URL is used as given, ``"none"``
    never proxies, None reads the environment as curl and requests do
    (``NO_PROXY`` honoured). Like Go's net/http, the environment never
    proxies loopback targets (``localhost``, 127.0.0.0/8, ::1): a proxy
    elsewhere cannot reach them.
    """
    if setting:
        return None if setting.strip().lower() == "none" else setting
    parts = urlsplit(url)
    host = parts.hostname or ""
    if _loopback(host):
        return None
    proxies = urllib.request.getproxies_environment()
    chosen = proxies.get(parts.scheme) or proxies.get("all")
    if not chosen:
        return None
    port = parts.port or (443 if parts.scheme == "https" else 80)
    if urllib.request.proxy_bypass_environment(f"{host}:{port}", proxies):
        return None
    return chosen if "://" in chosen else f"http://{chosen}"


def _loopback(host: str) -> bool:
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Proxy:
    """An ``http://[user:password@]HOST:PORT`` proxy."""

    host: str
    port: int
    authorization: Optional[str] = None  # Proxy-Authorization value, from the URL's user info

    @classmethod
    def parse(cls, url: str) -> "Proxy":
        """A proxy from its URL; ValueError naming what is wrong with it."""
        parts = urlsplit(url if "://" in url else f"http://{url}")
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"proxy {url!r} is not an http://HOST:PORT URL (https:// proxies are not supported)")
        auth = None
        if parts.username is not None:
            pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
            auth = "Basic " + base64.b64encode(pair).decode("ascii")
        return cls(parts.hostname, parts.port or 80, auth)

    async def tunnel(self, sock: socket.socket, authority: str) -> None:
        """Ask the proxy, on a connected socket, for a tunnel to ``authority`` (HOST:PORT); raise ProxyError if refused."""
        loop = asyncio.get_running_loop()
        lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
        if self.authorization:
            lines.append(f"Proxy-Authorization: {self.authorization}")
        await loop.sock_sendall(sock, ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        head = b""
        while b"\r\n\r\n" not in head:
            # byte by byte past the status line would be exact; the proxy sends nothing after its
            # answer until the client speaks (TLS starts with the client's hello), so a whole read is too
            data = await loop.sock_recv(sock, _HEAD_LIMIT)
            if not data:
                raise ProxyError(f"proxy {self.host}:{self.port} closed the connection instead of answering CONNECT {authority}")
            head += data
            if len(head) > _HEAD_LIMIT:
                raise ProxyError(f"proxy {self.host}:{self.port} sent no end of its answer to CONNECT within {_HEAD_LIMIT} bytes")
        status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
        fields = status_line.split(" ", 2)
        if len(fields) < 2 or not fields[0].startswith("HTTP/") or not fields[1].startswith("2"):
            raise ProxyError(f"proxy {self.host}:{self.port} refused CONNECT {authority}: {status_line[:200]!r}")
        if not head.endswith(b"\r\n\r\n"):
            raise ProxyError(f"proxy {self.host}:{self.port} sent bytes after its CONNECT answer before the TLS handshake")
