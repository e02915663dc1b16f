"""Sample the target's Prometheus metrics while levels run: one background thread, one Arrow table.

Input: the server's metrics URL, a sampling interval, and which series to keep
(``METRIC_NAMES[engine]``: canonical name -> the engine's metric names). Output:
rows ``t_ns, level, name, metric, labels, value`` written to
``run_dir/server_metrics.parquet``. Parsing is ``prometheus_client``'s. A failing
scrape (refused, timeout, HTTP error, unparseable body) is counted and reported
once per kind, never raised; a 404 on the first scrape turns scraping off.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections import Counter
from dataclasses import replace
from typing import Any, Callable, Mapping, Optional, Sequence

import pyarrow as pa
from prometheus_client.parser import text_string_to_metric_families

from loadgen.client.endpoint import open_pool
from loadgen.client.fetch import Origins, fetch
from loadgen.client.http import ConnectError, ConnectionPool, ConnectTimeout, HTTPError, StallTimeout, Timeouts, TotalTimeout
from loadgen.clock import now_ns as clock_now_ns
from loadgen.config import TargetConfig
from loadgen.rundir.layout import SERVER_METRICS, run_file
from loadgen.rundir.parts import write_table_atomically
from loadgen.rundir.schema import SERVER_METRICS_SCHEMA

log = logging.getLogger(__name__)

#: What a report needs from a server, whatever the engine calls it.
CANONICAL = (
    "running",  # requests being decoded/prefilled now (in the running batch)
    "waiting",  # requests queued in the server, not yet scheduled
    "kv_cache_usage",  # fraction of the KV cache in use (0..1)
    "prefix_cache_hits",  # counter: prompt tokens served from the prefix cache
    "prefix_cache_queries",  # counter: prompt tokens looked up in the prefix cache
    "prefix_cache_hit_rate",  # gauge: hit rate, for engines that only export the ratio
    "generation_tokens",  # counter: output tokens generated
    "prompt_tokens",  # counter: prompt tokens processed
)

_VLLM: dict[str, tuple[str, ...]] = {
    "running": ("vllm:num_requests_running",),
    "waiting": ("vllm:num_requests_waiting",),
    # vLLM renamed gpu_cache_usage_perc to kv_cache_usage_perc (0.32 CPU exposes only the new
    # name, checked by scraping it); both are a 0..1 fraction despite "perc".
    "kv_cache_usage": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"),
    # ...and dropped the gpu_ infix of the prefix-cache counters (both count tokens).
    "prefix_cache_hits": ("vllm:prefix_cache_hits_total", "vllm:gpu_prefix_cache_hits_total"),
    "prefix_cache_queries": ("vllm:prefix_cache_queries_total", "vllm:gpu_prefix_cache_queries_total"),
    "prefix_cache_hit_rate": ("vllm:gpu_prefix_cache_hit_rate",),  # V0 engine only
    "generation_tokens": ("vllm:generation_tokens_total",),
    "prompt_tokens": ("vllm:prompt_tokens_total",),
}

#: Canonical name -> the engine's metric (sample) names, in order of preference: per scrape,
#: only the first name present is kept, so a server exporting an old and a new spelling
#: (loadgen's simulator does) gives one series.
METRIC_NAMES: dict[str, dict[str, tuple[str, ...]]] = {
    "vllm": _VLLM,
    "sim": _VLLM,  # loadgen's simulator speaks vLLM's names
    # llama.cpp's llama-server with --metrics; checked against the build in ../shared/real_engine
    # (0.5.0-dev, commit 0c1e570), which no longer exports kv_cache_usage_ratio (older builds
    # did). Its token counters grow when a request finishes, not per token; prompt_tokens_total
    # excludes the prompt tokens reused from a slot's cache, which prompt_tokens_cached_total counts.
    "llamacpp": {
        "running": ("llamacpp:requests_processing",),
        "waiting": ("llamacpp:requests_deferred",),
        "kv_cache_usage": ("llamacpp:kv_cache_usage_ratio",),
        "prefix_cache_hits": ("llamacpp:prompt_tokens_cached_total",),
        "generation_tokens": ("llamacpp:tokens_predicted_total",),
        "prompt_tokens": ("llamacpp:prompt_tokens_total",),
    },
    # SGLang with --enable-metrics (docs.sglang.io, "Production Metrics"; not run here).
    # token_usage is the KV pool's used fraction; cached_tokens_total counts prefix-cache hits
    # in tokens, against prompt_tokens_total as the lookups.
    "sglang": {
        "running": ("sglang:num_running_reqs",),
        "waiting": ("sglang:num_queue_reqs",),
        "kv_cache_usage": ("sglang:token_usage",),
        "prefix_cache_hits": ("sglang:cached_tokens_total",),
        "prefix_cache_queries": ("sglang:prompt_tokens_total",),
        "prefix_cache_hit_rate": ("sglang:cache_hit_rate",),
        "generation_tokens": ("sglang:generation_tokens_total",),
        "prompt_tokens": ("sglang:prompt_tokens_total",),
    },
    # TGI (huggingface.co/docs/text-generation-inference/reference/metrics; not run here). It
    # has no KV-cache or prefix-cache series; token totals are the _sum of per-request histograms.
    "tgi": {
        "running": ("tgi_batch_current_size",),
        "waiting": ("tgi_queue_size",),
        "generation_tokens": ("tgi_request_generated_tokens_sum",),
        "prompt_tokens": ("tgi_request_input_length_sum",),
    },
    # TensorRT-LLM's trtllm-serve (tensorrt_llm/metrics/collector.py; not run here): Prometheus
    # text only at /prometheus/metrics and only with return_perf_metrics enabled (its /metrics
    # is JSON iteration stats). Its prefix-cache counters count KV blocks, not tokens.
    "trtllm": {
        "running": ("trtllm_num_requests_running",),
        "waiting": ("trtllm_num_requests_waiting",),
        "kv_cache_usage": ("trtllm_kv_cache_utilization",),
        "prefix_cache_hit_rate": ("trtllm_kv_cache_hit_rate",),
        "generation_tokens": ("trtllm_generation_tokens_total",),
        "prompt_tokens": ("trtllm_prompt_tokens_total",),
    },
}

#: Largest metrics body read; anything longer is truncated (and then most likely unparseable).
MAX_BODY_BYTES = 8 << 20


def names_for(engine: str) -> dict[str, tuple[str, ...]]:
    """The series to keep for ``engine``; an unknown engine (``generic``) gets every engine's names."""
    if engine in METRIC_NAMES:
        return dict(METRIC_NAMES[engine])
    merged: dict[str, list[str]] = {}
    for table in METRIC_NAMES.values():
        for canonical, metrics in table.items():
            known = merged.setdefault(canonical, [])
            known.extend(m for m in metrics if m not in known)
    return {canonical: tuple(metrics) for canonical, metrics in merged.items()}


def parse_metrics(text: str, names: Mapping[str, Sequence[str]]) -> list[tuple[str, str, str, float]]:
    """The kept samples of one scrape as ``(name, metric, labels_json, value)``; ValueError if unparseable."""
    wanted = {metric for metrics in names.values() for metric in metrics}
    # Only the wanted sample lines go to the parser: vLLM exports ~450 histogram samples per
    # scrape and parsing them all costs ~25 ms of the driver's CPU each time.
    lines = [line for line in text.splitlines() if line and line[0] != "#" and _sample_name(line) in wanted]
    found: dict[str, list[tuple[str, str, float]]] = {}
    for family in text_string_to_metric_families("\n".join(lines) + "\n"):
        for sample in family.samples:
            labels = json.dumps(sample.labels, sort_keys=True, separators=(",", ":"))
            found.setdefault(sample.name, []).append((sample.name, labels, float(sample.value)))
    rows = []
    for canonical, metrics in names.items():
        present = next((m for m in metrics if m in found), None)
        if present is not None:
            rows.extend((canonical, metric, labels, value) for metric, labels, value in found[present])
    return rows


def _sample_name(line: str) -> str:
    """The metric name a Prometheus text sample line starts with."""
    end = len(line)
    for sep in ("{", " ", "\t"):
        i = line.find(sep)
        if 0 <= i < end:
            end = i
    return line[:end]


class MetricsScraper:
    """Samples a Prometheus endpoint every ``interval_s`` in a daemon thread, tagging rows with the level."""

    def __init__(
        self,
        url: str,
        interval_s: float,
        names: Mapping[str, Sequence[str]],
        *,
        timeout_s: float = 5.0,
        headers: Optional[Mapping[str, str]] = None,
        clock: Callable[[], int] = clock_now_ns,
        on_problem: Optional[Callable[[str], None]] = None,
        target: Optional[TargetConfig] = None,
    ) -> None:
        self.url = url
        self.interval_s = interval_s
        self.names = {k: tuple(v) for k, v in names.items()}
        self.timeout_s = timeout_s
        self._headers = {"Accept": "text/plain", **(headers or {})}
        self._clock = clock
        self._on_problem = on_problem or log.warning
        # Scrapes go through loadgen's own client; given the target's config, with its TLS and proxy.
        self._target = target
        self._aio: Optional[asyncio.AbstractEventLoop] = None  # the scrapes' own event loop, kept so connections are reused
        self._origins: Optional[Origins] = None
        self._level = -1
        self._columns: dict[str, list[Any]] = {name: [] for name in SERVER_METRICS_SCHEMA.names}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.attempts = 0
        self.failures: Counter[str] = Counter()
        self.disabled: Optional[str] = None

    def set_level(self, level: int) -> None:
        """Tag samples from now on with ``level``, and take one right away."""
        self._level = int(level)
        self._wake.set()

    def start(self) -> None:
        """Start sampling in the background (no-op if already running or disabled)."""
        if self._thread is not None or self.disabled:
            return
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="loadgen-metrics-scraper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop sampling and wait for the thread (at most one scrape timeout)."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping.set()
        self._wake.set()
        thread.join(self.timeout_s + 1.0)

    def _loop(self) -> None:
        try:
            while not self._stopping.is_set():
                began = time.monotonic()
                self._wake.clear()  # a set_level() from here on wakes the next wait at once
                self.scrape_once()
                if self.disabled:
                    return
                self._wake.wait(max(0.0, self.interval_s - (time.monotonic() - began)))
        finally:
            self._close_client()

    def scrape_once(self) -> int:
        """Fetch and parse one sample now; return the number of rows kept (0 on failure)."""
        self.attempts += 1
        first = self.attempts == 1
        t_ns, level = self._clock(), self._level
        try:
            status, body = self._get()
        except (HTTPError, ValueError) as exc:
            return self._fail(_failure_kind(exc))
        if status != 200:
            if status == 404 and first:
                self.disabled = f"GET {self.url} answered 404"
                self._on_problem(
                    f"server metrics: GET {self.url} answered HTTP 404, so server metrics are not recorded "
                    "(set target.metrics_path to the server's Prometheus path, or null to silence this)"
                )
                return 0
            return self._fail(f"HTTP {status}")
        try:
            rows = parse_metrics(body.decode("utf-8", "replace"), self.names)
        except ValueError as exc:
            return self._fail(f"not Prometheus text ({str(exc)[:80]})")
        if not rows:
            return self._fail("none of the expected series present")
        with self._lock:
            cols = self._columns
            for name, metric, labels, value in rows:
                cols["t_ns"].append(t_ns)
                cols["level"].append(level)
                cols["name"].append(name)
                cols["metric"].append(metric)
                cols["labels"].append(labels)
                cols["value"].append(value)
        return len(rows)

    def _get(self) -> tuple[int, bytes]:
        """One GET of the metrics URL on the scraper's own event loop: (status, body)."""
        if self._aio is None or self._origins is None:
            self._aio = asyncio.new_event_loop()
            self._origins = Origins(self._pool)
        origins = self._origins

        async def get() -> tuple[int, bytes]:
            resp = await fetch(origins, "GET", self.url, headers=self._headers, max_bytes=MAX_BODY_BYTES)
            return resp.status, resp.body

        return self._aio.run_until_complete(get())

    def _pool(self, url: str) -> ConnectionPool:
        timeouts = Timeouts(total_s=self.timeout_s, stall_s=self.timeout_s, connect_s=self.timeout_s)
        if self._target is not None:
            quick = replace(self._target, timeout_s=self.timeout_s, stall_timeout_s=self.timeout_s,
                            connect_timeout_s=min(self._target.connect_timeout_s, self.timeout_s))
            return open_pool(quick, url, now=time.monotonic_ns, headers={}, limit=1,
                             direct=self._target.kind == "sim")
        return ConnectionPool(url, now=time.monotonic_ns, limit=1, timeouts=timeouts)

    def _close_client(self) -> None:
        loop, origins, self._aio, self._origins = self._aio, self._origins, None, None
        if loop is not None:
            if origins is not None:
                loop.run_until_complete(origins.close())
            loop.close()

    def _fail(self, kind: str) -> int:
        self.failures[kind] += 1
        if self.failures[kind] == 1:
            expected = ", ".join(sorted({m for ms in self.names.values() for m in ms})[:6])
            hint = f" (looked for {expected}, …; is target.engine right?)" if kind.startswith("none of") else ""
            self._on_problem(f"server metrics: scraping {self.url} failed: {kind}{hint}; counted, sampling goes on")
        return 0

    def table(self) -> pa.Table:
        """Every sample taken so far (schema ``SERVER_METRICS_SCHEMA``)."""
        with self._lock:
            columns = {name: list(values) for name, values in self._columns.items()}
        return pa.Table.from_pydict(columns, schema=SERVER_METRICS_SCHEMA)

    def summary(self) -> dict[str, Any]:
        """JSON-ready account of the scraping for run.json: samples, rows, failures by kind, why it stopped."""
        return {
            "url": self.url,
            "interval_s": self.interval_s,
            "attempts": self.attempts,
            "rows": len(self._columns["t_ns"]),
            "failures": dict(self.failures),
            "disabled": self.disabled,
        }

    def write(self, run_dir: str) -> str:
        """Write ``run_dir/server_metrics.parquet`` (temporary name, then rename); return its path."""
        return write_table_atomically(self.table(), run_file(run_dir, SERVER_METRICS))


def _failure_kind(exc: BaseException) -> str:
    """A failed scrape as the short kind it is counted under: "timed out", the errno of a refused connection, …"""
    if isinstance(exc, (ConnectTimeout, StallTimeout, TotalTimeout)):
        return "timed out"
    cause = getattr(exc, "cause", None)
    if isinstance(exc, ConnectError) and isinstance(cause, OSError):
        return f"{type(cause).__name__}: {cause}"
    return str(exc)


def scraper_for(
    root_url: str,
    engine: str,
    metrics_path: Optional[str],
    interval_s: float,
    **kwargs: Any,
) -> Optional[MetricsScraper]:
    """The scraper of a target (server root URL, engine, ``target.metrics_path``); None when disabled."""
    if not metrics_path:
        return None
    url = root_url.rstrip("/") + "/" + metrics_path.lstrip("/")
    return MetricsScraper(url, interval_s, names_for(engine), **kwargs)
