"""Getting to the server: every resolved address, TLS trust and client certificates, proxies, redirects.

Every server here is on loopback; a name only a test proxy knows (model.test) shows a request
really went through the proxy.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from aiohttp import web

from loadgen.client.endpoint import open_pool
from loadgen.client.http import ConnectionPool, Timeouts
from loadgen.client.proxy import Proxy, proxy_for
from loadgen.client.stream import execute
from loadgen.config import ConfigError, LoadgenConfig, TargetConfig, TLSConfig, api_key, validate
from loadgen.target import TargetError, check
from loopback import serve_app
from test_client_http import RawServer, sse_ok

HOST = "model.test"  # resolvable by the test proxy only


async def one(pool: ConnectionPool) -> dict:
    rec: dict = {}
    await execute(pool, "/v1/completions", b"{}", {"X-Request-Id": "r"}, rec, api="completions", stream=True)
    return rec


def free_port_on_both() -> int:
    """A port free on 127.0.0.1 and 127.0.0.2 both."""
    for _ in range(20):
        with socket.socket() as a:
            a.bind(("127.0.0.1", 0))
            port = a.getsockname()[1]
            with socket.socket() as b:
                try:
                    b.bind(("127.0.0.2", port))
                except OSError:
                    continue
                return port
    pytest.skip("no port free on both 127.0.0.1 and 127.0.0.2")


def refused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def infos(*addrs: tuple[str, int]) -> list:
    return [(socket.AF_INET6 if ":" in h else socket.AF_INET, socket.SOCK_STREAM, 6, "", (h, p)) for h, p in addrs]


# --------------------------------------------------------------------------- DNS


def test_a_name_whose_first_address_is_unreachable_falls_back_to_the_next():
    """localhost resolving to ::1 first while the server listens on IPv4 only."""

    async def go():
        async with RawServer(sse_ok()) as srv:
            port = int(srv.url.split(":")[2].split("/")[0])
            lookups = []

            async def resolver(host, p):
                lookups.append(host)
                return infos(("::1", port), ("127.0.0.1", port))  # nothing listens on [::1]:port

            pool = ConnectionPool(f"http://{HOST}:{port}/v1", now=time.monotonic_ns, resolver=resolver)
            rec = await one(pool)
            await pool.close()
            return rec, lookups, srv.requests

    rec, lookups, requests = asyncio.run(go())
    assert rec["status"] == "ok", rec.get("error")
    assert lookups == [HOST] and f"Host: {HOST}:".encode() in requests[0]


def test_when_no_address_answers_the_error_names_each():
    port = refused_port()

    async def resolver(host, p):
        return infos(("127.0.0.1", port), ("::1", port))

    async def go():
        pool = ConnectionPool(f"http://{HOST}:{port}/v1", now=time.monotonic_ns, resolver=resolver)
        rec = await one(pool)
        await pool.close()
        return rec

    rec = asyncio.run(go())
    assert rec["status"] == "connection_error"
    assert f"127.0.0.1:{port}" in rec["error"] and f"[::1]:{port}" in rec["error"], rec["error"]


def test_connections_spread_over_the_addresses_of_a_name():
    port = free_port_on_both()

    async def go():
        a, b = RawServer(sse_ok(delay_s=0.05)), RawServer(sse_ok(delay_s=0.05))
        a.server = await asyncio.start_server(a._serve, "127.0.0.1", port)
        b.server = await asyncio.start_server(b._serve, "127.0.0.2", port)

        async def resolver(host, p):
            return infos(("127.0.0.1", port), ("127.0.0.2", port))

        pool = ConnectionPool(f"http://{HOST}:{port}/v1", now=time.monotonic_ns, resolver=resolver)
        recs = await asyncio.gather(*[one(pool) for _ in range(6)])
        await pool.close()
        a.server.close()
        b.server.close()
        return recs, a.connections, b.connections

    recs, on_a, on_b = asyncio.run(go())
    assert all(r["status"] == "ok" for r in recs)
    assert on_a == on_b == 3


def test_new_connections_look_the_name_up_again():
    """DNS round-robin or a fail-over: the second connection goes where the name points now."""

    async def go():
        async with RawServer(sse_ok()) as first, RawServer(sse_ok()) as second:
            ports = [int(s.url.split(":")[2].split("/")[0]) for s in (first, second)]
            answers = iter(ports)

            async def resolver(host, p):
                return infos(("127.0.0.1", next(answers)))

            pool = ConnectionPool(f"http://{HOST}:80/v1", now=time.monotonic_ns, keep_alive=False, resolver=resolver)
            pool.dns_ttl_s = 0.0
            recs = [await one(pool), await one(pool)]
            await pool.close()
            return recs, first.connections, second.connections

    recs, on_first, on_second = asyncio.run(go())
    assert [r["status"] for r in recs] == ["ok", "ok"]
    assert (on_first, on_second) == (1, 1)


# --------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    """A private CA, a server certificate for model.test and 127.0.0.1, and a client certificate, all from it."""
    d = tmp_path_factory.mktemp("pki")

    def run(*args: str) -> None:
        made = subprocess.run(["openssl", *args], capture_output=True, cwd=d)
        if made.returncode:
            pytest.skip(f"openssl could not make the test PKI: {made.stderr[-200:]!r}")

    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run("req", "-x509", *key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=loadgen test CA")
    (d / "server.ext").write_text(f"subjectAltName=DNS:{HOST},IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    (d / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name in ("server", "client"):
        run("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=loadgen test {name}")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.pem", "-days", "1", "-extfile", f"{name}.ext")
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def server_context(pki, *, client_cert: bool = False) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pki["server_pem"], pki["server_key"])
    if client_cert:
        ctx.load_verify_locations(pki["ca_pem"])
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def tls_server(ctx: ssl.SSLContext) -> tuple[RawServer, int]:
    srv = RawServer(sse_ok())
    srv.server = await asyncio.start_server(srv._serve, "127.0.0.1", 0, ssl=ctx)
    return srv, srv.server.sockets[0].getsockname()[1]


def tls_requests(pki, tls: TLSConfig, *, host: str = "127.0.0.1", client_cert: bool = False) -> dict:
    async def go():
        srv, port = await tls_server(server_context(pki, client_cert=client_cert))
        target = TargetConfig(kind="openai", tls=tls, proxy="none", timeout_s=10, stall_timeout_s=5)
        pool = open_pool(target, f"https://{host}:{port}/v1", now=time.monotonic_ns, headers={})
        rec = await one(pool)
        await pool.close()
        srv.server.close()
        return rec

    return asyncio.run(go())


def test_tls_against_a_private_ca(pki):
    assert tls_requests(pki, TLSConfig(ca_file=str(pki["ca_pem"])))["status"] == "ok"
    refused = tls_requests(pki, TLSConfig())  # the system's CAs do not know this one
    assert refused["status"] == "connection_error" and "CERTIFICATE_VERIFY_FAILED" in refused["error"]


def test_tls_without_verification_accepts_an_unknown_certificate(pki):
    rec = tls_requests(pki, TLSConfig(verify=False))
    assert rec["status"] == "ok", rec.get("error")


def test_tls_server_name_override_is_checked_against_the_certificate(pki):
    ok = tls_requests(pki, TLSConfig(ca_file=str(pki["ca_pem"]), server_name=HOST))
    assert ok["status"] == "ok", ok.get("error")
    wrong = tls_requests(pki, TLSConfig(ca_file=str(pki["ca_pem"]), server_name="other.test"))
    assert wrong["status"] == "connection_error" and "other.test" in wrong["error"]


def test_tls_client_certificate_for_an_mtls_gateway(pki):
    with_cert = TLSConfig(ca_file=str(pki["ca_pem"]), cert_file=str(pki["client_pem"]), key_file=str(pki["client_key"]))
    rec = tls_requests(pki, with_cert, client_cert=True)
    assert rec["status"] == "ok", rec.get("error")
    without = tls_requests(pki, TLSConfig(ca_file=str(pki["ca_pem"])), client_cert=True)
    assert without["status"] != "ok"  # TLS 1.3: the server's refusal arrives after the handshake, as a broken read


def test_tls_files_are_checked_by_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="target.tls.ca_file"):
        validate(LoadgenConfig(target=TargetConfig(kind="openai", url="https://x/v1", tls=TLSConfig(ca_file=str(tmp_path / "no.pem")))))


# --------------------------------------------------------------------------- proxies


class ConnectProxy:
    """A small HTTP proxy: CONNECT tunnels and absolute-form requests; it alone resolves model.test (to 127.0.0.1)."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def __aenter__(self) -> "ConnectProxy":
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc) -> None:
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            line = head.split(b"\r\n", 1)[0].decode()
            self.seen.append(line)
            method, target, _ = line.split(" ")
            if method == "CONNECT":
                authority = target
            else:  # absolute form: http://host:port/path
                authority = target.split("/")[2]
            host, port = authority.rsplit(":", 1)
            host = "127.0.0.1" if host == HOST else host
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, OSError):
            writer.close()
            return
        if method == "CONNECT":
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            up_writer.write(head)  # servers must accept the absolute form (RFC 9112, 3.2.2)
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            dst.close()


def test_https_through_a_connect_proxy_from_https_proxy(pki, monkeypatch):
    async def go():
        srv, port = await tls_server(server_context(pki))
        async with ConnectProxy() as proxy:
            monkeypatch.setenv("HTTPS_PROXY", proxy.url)
            monkeypatch.delenv("NO_PROXY", raising=False)
            monkeypatch.delenv("no_proxy", raising=False)
            target = TargetConfig(kind="openai", tls=TLSConfig(ca_file=str(pki["ca_pem"])), timeout_s=10, stall_timeout_s=5)
            pool = open_pool(target, f"https://{HOST}:{port}/v1", now=time.monotonic_ns, headers={})
            recs = [await one(pool) for _ in range(3)]
            await pool.close()
            srv.server.close()
            return recs, proxy.seen, srv.requests

    recs, seen, requests = asyncio.run(go())
    assert [(r["status"], len(r["chunk_ns"])) for r in recs] == [("ok", 2)] * 3, recs[0].get("error")
    assert len(seen) == 1 and seen[0].startswith(f"CONNECT {HOST}:") and seen[0].endswith("HTTP/1.1")  # one tunnel, kept alive
    assert all(r.startswith(b"POST /v1/completions HTTP/1.1") for r in requests)


def test_http_through_a_proxy_uses_the_absolute_form():
    async def go():
        async with RawServer(sse_ok()) as srv, ConnectProxy() as proxy:
            port = int(srv.url.split(":")[2].split("/")[0])
            target = TargetConfig(kind="openai", proxy=proxy.url, timeout_s=10, stall_timeout_s=5)
            pool = open_pool(target, f"http://{HOST}:{port}/v1", now=time.monotonic_ns, headers={})
            rec = await one(pool)
            await pool.close()
            return rec, proxy.seen

    rec, seen = asyncio.run(go())
    assert rec["status"] == "ok", rec.get("error")
    assert seen[0].startswith(f"POST http://{HOST}:") and "/v1/completions HTTP/1.1" in seen[0]


def test_a_refusing_proxy_is_named():
    asked = []

    async def refuse(reader, writer):
        asked.append((await reader.readuntil(b"\r\n\r\n")).split(b"\r\n", 1)[0])
        writer.write(b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n")
        await writer.drain()
        writer.close()

    async def go():
        server = await asyncio.start_server(refuse, "127.0.0.1", 0)
        url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        target = TargetConfig(kind="openai", proxy=url, tls=TLSConfig(verify=False), timeout_s=10)
        pool = open_pool(target, f"https://{HOST}:443/v1", now=time.monotonic_ns, headers={})
        rec = await one(pool)
        await pool.close()
        server.close()
        return rec

    rec = asyncio.run(go())
    assert rec["status"] == "connection_error" and "407 Proxy Authentication Required" in rec["error"]
    assert asked == [f"CONNECT {HOST}:443 HTTP/1.1".encode()]  # the default port is named too


def test_which_proxy_a_url_takes(monkeypatch):
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert proxy_for("https://api.example.com/v1", None) is None
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("HTTP_PROXY", "proxy.corp:8080")
    assert proxy_for("https://api.example.com/v1", None) == "http://proxy.corp:3128"
    assert proxy_for("http://api.example.com/v1", None) == "http://proxy.corp:8080"
    assert proxy_for("http://127.0.0.1:8000/v1", None) is None  # loopback: never through the environment's proxy
    assert proxy_for("http://localhost:8000/v1", None) is None
    monkeypatch.setenv("NO_PROXY", ".example.com,10.0.0.5")
    assert proxy_for("https://api.example.com/v1", None) is None
    assert proxy_for("http://10.0.0.5:8000/v1", None) is None
    assert proxy_for("https://api.other.com/v1", None) == "http://proxy.corp:3128"
    assert proxy_for("https://api.example.com/v1", "http://explicit:1") == "http://explicit:1"  # target.proxy wins
    assert proxy_for("https://api.other.com/v1", "none") is None
    assert Proxy.parse("http://u%40x:p@proxy:3128").authorization == "Basic dUB4OnA="
    with pytest.raises(ValueError, match="https:// proxies are not supported"):
        Proxy.parse("https://proxy:3128")


# --------------------------------------------------------------------------- redirects, probe, OpenAI conventions


async def redirecting(status: int, to_url) -> tuple[web.AppRunner, str, list[str]]:
    seen: list[str] = []

    async def models(request):
        return web.json_response({"data": [{"id": "m1"}]})

    async def completions(request):
        seen.append(f"{request.method} {request.path} {await request.text()}")
        return web.Response(status=status, headers={"Location": to_url()})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    app.router.add_post("/v1/completions", completions)
    runner, base = await serve_app(app)
    return runner, base, seen


def test_307_is_followed_with_method_and_body_and_the_load_goes_to_its_end():
    async def go():
        async with RawServer(sse_ok()) as final:
            runner, base, seen = await redirecting(307, lambda: final.url + "/completions")
            try:
                checked = await check(TargetConfig(kind="openai", url=base), base)
            finally:
                await runner.cleanup()
            return checked, final.url, seen, final.requests

    checked, final_url, seen, final_requests = asyncio.run(go())
    assert checked.base_url == final_url and checked.redirects and checked.redirects[0].endswith("/v1/completions")
    body = final_requests[0].split(b"\r\n\r\n", 1)[1]
    assert seen[0].startswith("POST /v1/completions {") and seen[0].split(" ", 2)[2].encode() == body  # same body


def test_302_fails_the_probe_naming_the_location():
    async def go():
        runner, base, _ = await redirecting(302, lambda: "https://login.example.com/sso")
        try:
            return await check(TargetConfig(kind="openai", url=base), base)
        except TargetError as exc:
            return exc
        finally:
            await runner.cleanup()

    err = asyncio.run(go())
    assert isinstance(err, TargetError) and "HTTP 302" in str(err) and "https://login.example.com/sso" in str(err)
    assert "307/308" in str(err)


def test_openai_environment_variables_are_the_defaults_of_target_openai(monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", "https://api.example.com/v1")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    cfg = validate(LoadgenConfig(target=TargetConfig(kind="openai")))
    assert cfg.target.url == "https://api.example.com/v1" and api_key(cfg.target) == "sk-test"
    given = validate(LoadgenConfig(target=TargetConfig(kind="openai", url="http://127.0.0.1:8000/v1", api_key="k")))
    assert given.target.url == "http://127.0.0.1:8000/v1" and api_key(given.target) == "k"
    assert api_key(TargetConfig(kind="sim")) is None  # never sent to the simulator


def test_a_url_given_with_the_simulator_target_names_the_fix():
    with pytest.raises(ConfigError, match=r"target.url.*target=openai.*target=vllm"):
        validate(LoadgenConfig(target=TargetConfig(url="http://10.0.0.7:8000/v1")))


def test_timeouts_default_through_open_pool():
    pool = open_pool(TargetConfig(kind="openai", timeout_s=7, stall_timeout_s=3, connect_timeout_s=2), "http://h/v1",
                     now=time.monotonic_ns, headers={})
    assert pool.timeouts == Timeouts(total_s=7, stall_s=3, connect_s=2)


def test_a_redirected_target_says_where_the_load_went_in_run_json():
    from loadgen.target import ResolvedTarget

    moved = ResolvedTarget("http://b:8000/v1", "m", "openai", "vllm", requested_url="http://a:8000/v1",
                           redirects=["http://a:8000/v1/completions"])
    assert moved.summary()["url"] == "http://b:8000/v1" and moved.summary()["requested_url"] == "http://a:8000/v1"
    assert "redirects" not in ResolvedTarget("http://a:8000/v1", "m", "openai", "vllm").summary()


@pytest.mark.skipif(not __import__("test_client_http")._kernel_stamps_work(), reason="no TCP receive timestamps here")
def test_kernel_stamps_survive_a_connect_tunnel_and_tls(pki):
    """Tokens 100 ms apart through a proxy and TLS; the client loop stalls meanwhile: each keeps its arrival time."""
    import threading

    written: list[int] = []
    server_ctx = server_context(pki)
    origin = socket.create_server(("127.0.0.1", 0))
    proxy = socket.create_server(("127.0.0.1", 0))

    def serve_origin() -> None:
        conn, _ = origin.accept()
        with server_ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(65536)
            tls.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for text in (b"a", b"b", b"c"):
                time.sleep(0.1)
                written.append(time.monotonic_ns())
                event = b'data: {"id":"c","choices":[{"text":"%s"}]}\n\n' % text
                tls.sendall(b"%x\r\n%s\r\n" % (len(event), event))
            tls.sendall(b"e\r\ndata: [DONE]\n\n\r\n0\r\n\r\n")

    def pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

    def serve_proxy() -> None:
        client, _ = proxy.accept()
        head = b""
        while b"\r\n\r\n" not in head:
            head += client.recv(4096)
        upstream = socket.create_connection(origin.getsockname())
        client.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        threading.Thread(target=pipe, args=(upstream, client), daemon=True).start()
        pipe(client, upstream)

    threads = [threading.Thread(target=f, daemon=True) for f in (serve_origin, serve_proxy)]
    for t in threads:
        t.start()

    async def go():
        target = TargetConfig(kind="openai", proxy=f"http://127.0.0.1:{proxy.getsockname()[1]}",
                              tls=TLSConfig(ca_file=str(pki["ca_pem"])), timeout_s=10, stall_timeout_s=5)
        pool = open_pool(target, f"https://{HOST}:{origin.getsockname()[1]}/v1", now=time.monotonic_ns, headers={})
        loop = asyncio.get_running_loop()

        def arm() -> None:  # once token a is written, block the loop from 50 to 160 ms after it: across token b
            if written:
                loop.call_later(0.05, time.sleep, 0.11)
            else:
                loop.call_later(0.005, arm)

        loop.call_soon(arm)
        rec = await one(pool)
        await pool.close()
        return rec

    rec = asyncio.run(go())
    for t in threads:
        t.join(5)
    origin.close()
    proxy.close()
    assert rec["status"] == "ok" and len(rec["chunk_ns"]) == 3, rec.get("error")
    errors_ms = [(got - sent) / 1e6 for got, sent in zip(rec["chunk_ns"], written)]
    assert all(-1 < e < 20 for e in errors_ms), errors_ms  # token b would read ~50 ms late if stamped when read


def test_an_address_that_failed_is_tried_last_until_the_name_is_looked_up_again(monkeypatch):
    import loadgen.client.http as http

    dialled: list[tuple] = []
    real = http._open_socket

    async def watched(family, addr):
        dialled.append(addr)
        return await real(family, addr)

    monkeypatch.setattr(http, "_open_socket", watched)
    dead = refused_port()

    async def go():
        async with RawServer(sse_ok()) as srv:
            port = int(srv.url.split(":")[2].split("/")[0])

            async def resolver(host, p):
                return infos(("127.0.0.1", port), ("127.0.0.1", dead))  # the second answer refuses

            pool = ConnectionPool(f"http://{HOST}:{port}/v1", now=time.monotonic_ns, keep_alive=False, resolver=resolver)
            pool.dns_ttl_s = 600.0  # one lookup for the whole test, however slow the machine
            recs = [await one(pool) for _ in range(4)]  # new connections start at each address in turn
            await pool.close()
            return recs

    recs = asyncio.run(go())
    assert [r["status"] for r in recs] == ["ok"] * 4
    assert [a[1] for a in dialled].count(dead) == 1  # refused once, then never first again
