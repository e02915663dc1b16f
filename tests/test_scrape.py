"""Server-metrics scraping: real engines' /metrics text, level tagging, and every way a scrape fails."""

from __future__ import annotations

import asyncio
import re
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pyarrow.parquet as pq
import pytest
from aiohttp import web

from loadgen.rundir import SERVER_METRICS_SCHEMA
from loadgen.scrape import CANONICAL, METRIC_NAMES, MetricsScraper, names_for, parse_metrics, scraper_for
from loopback import serve_app

FIXTURES = Path(__file__).parent / "fixtures" / "metrics"

#: What each engine calls the series, as read in its /metrics (the fixtures were captured from
#: vLLM 0.32 CPU and llama-server 0.5.0-dev with 12 requests in flight on 8 slots).
ENGINE_SERIES = {
    "vllm": {
        "running": "vllm:num_requests_running",
        "waiting": "vllm:num_requests_waiting",
        "kv_cache_usage": "vllm:kv_cache_usage_perc",
        "prefix_cache_hits": "vllm:prefix_cache_hits_total",
        "prefix_cache_queries": "vllm:prefix_cache_queries_total",
        "generation_tokens": "vllm:generation_tokens_total",
        "prompt_tokens": "vllm:prompt_tokens_total",
    },
    "llamacpp": {
        "running": "llamacpp:requests_processing",
        "waiting": "llamacpp:requests_deferred",
        "prefix_cache_hits": "llamacpp:prompt_tokens_cached_total",
        "generation_tokens": "llamacpp:tokens_predicted_total",
        "prompt_tokens": "llamacpp:prompt_tokens_total",
    },
}


def fixture_values(text: str, metric: str) -> list[float]:
    """Values of every sample of ``metric`` in Prometheus text, read with a plain regex."""
    pattern = re.compile(rf"^{re.escape(metric)}(?:\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
    return [float(v) for v in pattern.findall(text)]


def by_name(rows) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for name, _, _, value in rows:
        out.setdefault(name, []).append(value)
    return out


@pytest.mark.parametrize("engine", sorted(ENGINE_SERIES))
def test_parse_real_engine_metrics(engine: str) -> None:
    text = (FIXTURES / f"{engine}.txt").read_text()
    rows = by_name(parse_metrics(text, names_for(engine)))
    for canonical, metric in ENGINE_SERIES[engine].items():
        expected = fixture_values(text, metric)
        assert expected, f"{metric} missing from the {engine} fixture"
        assert rows[canonical] == expected, canonical
    # captured under load: 8 requests running and 4 queued behind them
    assert rows["running"] == [8.0]
    assert rows["waiting"] == [4.0]


def test_every_engine_maps_only_canonical_names() -> None:
    for engine, table in METRIC_NAMES.items():
        assert set(table) <= set(CANONICAL), engine
        assert {"running", "waiting", "generation_tokens", "prompt_tokens"} <= set(table), engine
    assert names_for("sim") == names_for("vllm")


def test_parse_keeps_labels_and_engine_name() -> None:
    text = (FIXTURES / "vllm.txt").read_text()
    rows = {name: (metric, labels) for name, metric, labels, _ in parse_metrics(text, names_for("vllm"))}
    assert rows["running"] == ("vllm:num_requests_running", '{"engine":"0","model_name":"rand-llama"}')


def test_parse_prefers_the_first_spelling_present() -> None:
    names = names_for("vllm")
    both = 'vllm:gpu_cache_usage_perc{model_name="m"} 0.25\nvllm:kv_cache_usage_perc{model_name="m"} 0.5\n'
    assert [(n, m, v) for n, m, _, v in parse_metrics(both, names)] == [("kv_cache_usage", "vllm:kv_cache_usage_perc", 0.5)]
    old = "vllm:gpu_cache_usage_perc 0.25\n"
    assert [(n, m, v) for n, m, _, v in parse_metrics(old, names)] == [("kv_cache_usage", "vllm:gpu_cache_usage_perc", 0.25)]


def test_parse_does_not_confuse_names_sharing_a_prefix() -> None:
    text = (
        'vllm:num_requests_waiting_by_reason{reason="capacity"} 7.0\n'
        "vllm:num_requests_waiting 3.0\n"
    )
    assert by_name(parse_metrics(text, names_for("vllm"))) == {"waiting": [3.0]}


def test_parse_one_metric_under_two_names() -> None:
    text = 'sglang:prompt_tokens_total{model_name="m"} 4096\nsglang:cached_tokens_total{model_name="m"} 3168\n'
    rows = by_name(parse_metrics(text, names_for("sglang")))
    assert rows == {"prefix_cache_hits": [3168.0], "prefix_cache_queries": [4096.0], "prompt_tokens": [4096.0]}


def test_generic_engine_finds_any_known_engine() -> None:
    for engine in ENGINE_SERIES:
        text = (FIXTURES / f"{engine}.txt").read_text()
        assert parse_metrics(text, names_for("generic")) == parse_metrics(text, names_for(engine))


def test_parse_rejects_a_malformed_sample_of_a_wanted_series() -> None:
    with pytest.raises(ValueError):
        parse_metrics('vllm:num_requests_running{engine="0" 8\n', names_for("vllm"))


def test_scraper_for_builds_the_url_or_nothing() -> None:
    assert scraper_for("http://h:1/", "vllm", None, 1.0) is None
    assert scraper_for("http://h:1/", "trtllm", "prometheus/metrics", 1.0).url == "http://h:1/prometheus/metrics"


# --------------------------------------------------------------------------- the scraper thread


@contextmanager
def metrics_server(handler: Callable[[web.Request], web.StreamResponse] | None) -> Iterator[str]:
    """An aiohttp server on 127.0.0.1 in its own thread; yields its root URL."""
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict = {}

    async def main() -> None:
        app = web.Application()
        if handler is not None:
            app.router.add_get("/metrics", handler)
        runner, box["url"] = await serve_app(app)
        box["stop"] = asyncio.Event()
        started.set()
        await box["stop"].wait()
        await runner.cleanup()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield box["url"].removesuffix("/v1")
    finally:
        loop.call_soon_threadsafe(box["stop"].set)
        thread.join(10)
        loop.close()


def serve_text(text: str):
    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=text, content_type="text/plain")

    return handler


def wait_for(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def scraper_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "loadgen-metrics-scraper"]


def test_scraper_samples_levels_and_writes_parquet(tmp_path: Path) -> None:
    text = (FIXTURES / "vllm.txt").read_text()
    problems: list[str] = []
    with metrics_server(serve_text(text)) as root:
        scraper = scraper_for(root, "vllm", "/metrics", 0.05, on_problem=problems.append)
        before = time.time_ns()
        scraper.start()
        scraper.set_level(0)
        wait_for(lambda: scraper.attempts >= 3)
        scraper.set_level(1)
        attempts = scraper.attempts
        wait_for(lambda: scraper.attempts >= attempts + 3)
        scraper.stop()
        after = time.time_ns()
    assert not scraper_threads()
    assert problems == []
    table = scraper.table()
    assert table.schema == SERVER_METRICS_SCHEMA
    levels = set(table.column("level").to_pylist())
    assert {0, 1} <= levels <= {-1, 0, 1}
    t = table.column("t_ns").to_pylist()
    assert t == sorted(t) and before <= t[0] and t[-1] <= after
    per_sample = len(ENGINE_SERIES["vllm"])
    assert table.num_rows == per_sample * scraper.attempts
    running = [r for r in table.to_pylist() if r["name"] == "running"]
    assert {r["value"] for r in running} == {8.0} and {r["metric"] for r in running} == {"vllm:num_requests_running"}

    path = scraper.write(str(tmp_path))
    assert Path(path).name == "server_metrics.parquet"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["server_metrics.parquet"]
    assert pq.read_table(path).equals(table)


def test_set_level_takes_a_sample_right_away() -> None:
    with metrics_server(serve_text("vllm:num_requests_running 2\n")) as root:
        scraper = scraper_for(root, "vllm", "/metrics", 60.0)
        scraper.start()
        wait_for(lambda: scraper.attempts == 1)
        scraper.set_level(5)
        wait_for(lambda: scraper.attempts == 2)
        scraper.stop()
    assert scraper.table().column("level").to_pylist() == [-1, 5]


def test_404_at_first_scrape_turns_scraping_off(tmp_path: Path) -> None:
    problems: list[str] = []
    with metrics_server(None) as root:
        scraper = scraper_for(root, "vllm", "/metrics", 0.05, on_problem=problems.append)
        scraper.start()
        wait_for(lambda: scraper.disabled is not None)
        wait_for(lambda: not scraper_threads())
        time.sleep(0.2)
        scraper.stop()
    assert scraper.attempts == 1
    assert len(problems) == 1 and "404" in problems[0] and "target.metrics_path" in problems[0]
    assert scraper.summary()["disabled"]
    assert pq.read_table(scraper.write(str(tmp_path))).num_rows == 0


def test_404_after_a_good_scrape_is_counted_not_fatal() -> None:
    answers = iter([200, 404, 404])

    async def handler(request: web.Request) -> web.Response:
        status = next(answers, 200)
        return web.Response(status=status, text="vllm:num_requests_waiting 1\n", content_type="text/plain")

    problems: list[str] = []
    with metrics_server(handler) as root:
        scraper = scraper_for(root, "vllm", "/metrics", 0.02, on_problem=problems.append)
        scraper.start()
        wait_for(lambda: scraper.attempts >= 5)
        scraper.stop()
    assert scraper.disabled is None
    assert scraper.failures["HTTP 404"] == 2
    assert len(problems) == 1 and "HTTP 404" in problems[0]
    assert scraper.table().num_rows == scraper.attempts - 2


def test_refused_connection_is_counted_and_reported_once() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    problems: list[str] = []
    scraper = scraper_for(f"http://127.0.0.1:{port}", "llamacpp", "/metrics", 0.02, on_problem=problems.append)
    scraper.start()
    wait_for(lambda: scraper.attempts >= 4)
    scraper.stop()
    assert not scraper_threads()
    assert sum(scraper.failures.values()) == scraper.attempts
    assert [k for k in scraper.failures] == ["ConnectionRefusedError: [Errno 111] Connection refused"]
    assert len(problems) == 1 and "refused" in problems[0]
    assert scraper.table().num_rows == 0


def test_garbage_and_foreign_bodies_are_counted() -> None:
    bodies = iter(['vllm:num_requests_running{engine="0" 8\n', '{"iter": 1, "kvCacheStats": {}}'])

    async def handler(request: web.Request) -> web.Response:
        return web.Response(text=next(bodies, "vllm:num_requests_running 1\n"), content_type="text/plain")

    problems: list[str] = []
    with metrics_server(handler) as root:
        scraper = scraper_for(root, "vllm", "/metrics", 0.02, on_problem=problems.append)
        scraper.start()
        wait_for(lambda: scraper.attempts >= 4)
        scraper.stop()
    kinds = sorted(scraper.failures)
    assert len(kinds) == 2 and kinds[0].startswith("none of the expected series") and kinds[1].startswith("not Prometheus text")
    assert len(problems) == 2 and "is target.engine right?" in " ".join(problems)
    assert scraper.table().num_rows == scraper.attempts - 2


def test_slow_server_times_out_and_stop_is_bounded() -> None:
    async def handler(request: web.Request) -> web.Response:
        await asyncio.sleep(3)
        return web.Response(text="vllm:num_requests_running 1\n")

    with metrics_server(handler) as root:
        scraper = MetricsScraper(root + "/metrics", 0.05, names_for("vllm"), timeout_s=0.3)
        scraper.start()
        wait_for(lambda: sum(scraper.failures.values()) >= 1)
        began = time.monotonic()
        scraper.stop()
        assert time.monotonic() - began < 0.3 + 1.0
    assert "timed out" in " ".join(scraper.failures)


def test_a_server_that_does_not_speak_http_is_counted() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def answer_garbage() -> None:
        for _ in range(3):
            conn, _ = listener.accept()
            with conn:
                conn.recv(4096)
                conn.sendall(b"SSH-2.0-not-http\r\n\r\n")

    server = threading.Thread(target=answer_garbage, daemon=True)
    server.start()
    problems: list[str] = []
    scraper = scraper_for(f"http://127.0.0.1:{port}", "vllm", "/metrics", 0.02, on_problem=problems.append)
    scraper.start()
    wait_for(lambda: sum(scraper.failures.values()) >= 3)
    listener.close()  # later attempts are refused instead of waiting for a timeout
    scraper.stop()
    server.join(5)
    assert not scraper_threads()
    assert scraper.failures["invalid HTTP response: Expected HTTP/, RTSP/ or ICE/"] == 3 and scraper.table().num_rows == 0
    assert len(problems) == len(scraper.failures)
