"""From a target config to a connection pool: TLS trust, client certificate, proxy, timeouts, headers.

Input: ``TargetConfig`` (``target.tls.*``, ``target.proxy``, timeouts,
``new_connection_per_request``, ``headers``), the base URL to send to and the
bearer token. Output: a :class:`~loadgen.client.http.ConnectionPool`. The
workers and the probe both build theirs here, so the probe checks the very
path the load takes.
"""

from __future__ import annotations

import ssl
from typing import Optional

from loadgen.client.http import Clock, ConnectionPool, Timeouts
from loadgen.client.proxy import proxy_for
from loadgen.config import TargetConfig, TLSConfig


def tls_context(tls: TLSConfig) -> ssl.SSLContext:
    """The client's TLS context: system CAs or ``ca_file``, verification on unless ``verify=false``, HTTP/1.1 by ALPN."""
    context = ssl.create_default_context(cafile=tls.ca_file)
    if not tls.verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    context.set_alpn_protocols(["http/1.1"])  # loadgen speaks HTTP/1.1 only: never let a server pick h2
    return context


def headers_for(target: TargetConfig, api_key: Optional[str], extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """The headers every request carries: JSON content type, ``target.headers``, the bearer token."""
    headers = {"Content-Type": "application/json", **target.headers, **(extra or {})}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    return headers


def open_pool(
    target: TargetConfig,
    base_url: str,
    *,
    now: Clock,
    headers: dict[str, str],
    limit: int = 10_000,
    direct: bool = False,
) -> ConnectionPool:
    """A pool to ``base_url``'s origin set up as ``target`` says; ``direct`` skips any proxy (the embedded simulator)."""
    return ConnectionPool(
        base_url,
        now=now,
        headers=headers,
        limit=limit,
        timeouts=Timeouts(total_s=target.timeout_s, stall_s=target.stall_timeout_s, connect_s=target.connect_timeout_s),
        keep_alive=not target.new_connection_per_request,
        ssl_context=tls_context(target.tls) if base_url.startswith("https:") else None,
        server_name=target.tls.server_name,
        proxy=None if direct else proxy_for(base_url, target.proxy),
    )
