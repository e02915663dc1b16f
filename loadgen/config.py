"""Structured configuration: every option of loadgen, typed, documented and validated once.

Input: the Hydra-composed config (``conf/`` plus overrides). Output: validated
dataclasses (``LoadgenConfig``) used by every other module. Hydra checks keys
and types against these dataclasses; ``validate`` checks values and raises
``ConfigError`` naming the key and what was expected.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import io
import math
import os
import textwrap
import tokenize
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from typing import Any, Optional

from omegaconf import (
    MISSING,  # noqa: F401  (re-exported for conf authors)
    OmegaConf,
)
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)

from loadgen.headers import valid_header
from loadgen.paths import conf_dir


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the key and what is expected."""


# --------------------------------------------------------------------------- target


@dataclass
class FaultConfig:
    """Fault injection in the embedded simulator (all rates are per-request probabilities)."""

    http_error_rate: float = 0.0  # fraction of requests answered with `http_error_status`
    http_error_status: int = 500  # status code of injected HTTP errors (429 adds Retry-After)
    reset_rate: float = 0.0  # fraction of streams whose connection is reset after `reset_after_tokens`
    reset_after_tokens: int = 4  # tokens written before an injected reset
    truncate_rate: float = 0.0  # fraction of streams that end without `data: [DONE]`
    garbage_rate: float = 0.0  # fraction of streams that get one malformed SSE/JSON chunk
    stall_rate: float = 0.0  # fraction of streams that stall for `stall_s` after `stall_after_tokens`
    stall_after_tokens: int = 2  # tokens written before an injected stall
    stall_s: float = 30.0  # length of an injected stall
    accept_delay_s: float = 0.0  # delay before the server answers a request at all (slow accept)
    seed: int = 0  # seed of the fault draws


@dataclass
class SimProfile:
    """A simulated continuous-batching engine: the knobs of its step-time model."""

    name: str = "llama3-8b-h100"  # profile name, shown in reports
    description: str = ""  # what hardware/model the profile stands for and the figures it was tuned to
    max_num_seqs: int = 64  # sequences served at once (vLLM's --max-num-seqs)
    max_num_batched_tokens: int = 2048  # tokens per step (prefill chunk + decodes; chunked prefill)
    kv_cache_tokens: int = 200_000  # KV-cache capacity in tokens; requests wait when it is full
    block_size: int = 16  # KV-cache block size in tokens
    step_base_ms: float = 6.0  # fixed cost of one engine step
    step_per_seq_ms: float = 0.05  # extra step cost per running (decoding) sequence
    step_per_prefill_token_ms: float = 0.06  # extra step cost per prefill token in the step
    request_overhead_ms: float = 0.0  # fixed delay between a request's arrival and its engine admission (HTTP, tokenization; fitted by loadgen-twin)
    prefix_caching: bool = True  # reuse KV blocks of identical prompt prefixes
    tokens_per_chunk: int = 1  # tokens per SSE event (>1 mimics speculative decoding)
    reasoning_tokens: int = 0  # chat: the first N tokens of each answer stream as `reasoning_content` deltas (a reasoning model thinking)
    model: str = "sim-llama"  # model name served on /v1/models


@dataclass
class TLSConfig:
    """How https targets are trusted and what the client presents (the workers' and the probe's client)."""

    verify: bool = True  # check the server's certificate and name; false: accept any (self-signed test servers)
    ca_file: Optional[str] = None  # PEM bundle of CAs to trust instead of the system's (a private CA)
    cert_file: Optional[str] = None  # PEM client certificate (mTLS gateways); may hold the key too
    key_file: Optional[str] = None  # PEM private key of cert_file, when it is a separate file
    server_name: Optional[str] = None  # name sent in SNI and checked in the certificate, instead of the URL's host


@dataclass
class TargetConfig:
    """The server under test: the embedded simulator or any OpenAI-compatible server."""

    kind: str = "sim"  # sim: start the embedded simulator | openai: an existing server at `url`
    url: Optional[str] = None  # base URL ending in /v1, e.g. http://127.0.0.1:8000/v1 (kind=openai; default $OPENAI_BASE_URL)
    urls: list[str] = field(default_factory=list)  # a fleet of replicas (kind=openai): worker W sends to urls[W % len(urls)]
    model: Optional[str] = None  # model name; default: the first of GET /v1/models
    api: str = "completions"  # completions | chat | responses (the Responses API, /v1/responses)
    stream: bool = True  # stream tokens over SSE (needed for TTFT/ITL)
    api_key: Optional[str] = None  # bearer token; never written anywhere (prefer api_key_env)
    api_key_env: Optional[str] = None  # name of an environment variable holding the bearer token (kind=openai: default OPENAI_API_KEY)
    engine: str = "generic"  # vllm | sglang | tgi | llamacpp | trtllm | sim | generic: request fields and metric names
    ignore_eos: bool = True  # ask the server to generate exactly output_tokens (ignore_eos/min_tokens)
    extra_body: dict[str, Any] = field(default_factory=dict)  # extra JSON fields sent with every request
    headers: dict[str, str] = field(default_factory=dict)  # extra HTTP headers (not secrets: they are saved)
    timeout_s: float = 600.0  # whole-request timeout
    stall_timeout_s: float = 60.0  # longest allowed gap between two streamed chunks
    connect_timeout_s: float = 10.0  # TCP connect timeout
    tls: TLSConfig = field(default_factory=TLSConfig)  # https: verification, private CA, client certificate, server name
    proxy: Optional[str] = None  # http://[user:pass@]HOST:PORT; null: HTTPS_PROXY/HTTP_PROXY/NO_PROXY from the environment; none: never
    new_connection_per_request: bool = False  # for servers that close pooled connections (llama.cpp)
    metrics_path: Optional[str] = "/metrics"  # Prometheus endpoint relative to the server root; null disables
    scrape_interval_s: float = 1.0  # how often server metrics are sampled during a level
    probe: bool = True  # send one tiny request before the first level to fail fast
    sim: SimProfile = field(default_factory=SimProfile)  # simulator profile (kind=sim)
    sim_profile: Optional[str] = None  # kind=sim: serve this profile file instead of `sim` (a twin.yaml from loadgen-twin fit, or a conf/target/ name)
    faults: FaultConfig = field(default_factory=FaultConfig)  # simulator fault injection (kind=sim)
    sim_ground_truth: bool = False  # ask the simulator to write its own per-request timings


# --------------------------------------------------------------------------- workload


@dataclass
class LengthDist:
    """A token-length distribution for synthetic requests (a plain number N means a fixed length N)."""

    dist: str = "fixed"  # fixed | uniform | normal | lognormal | empirical
    mean: float = 256.0  # fixed value, or the mean (normal, lognormal); not negative
    std: float = 0.0  # standard deviation (normal, lognormal)
    min: int = 1  # lower clip (and lower bound of uniform)
    max: int = 8192  # upper clip (and upper bound of uniform)
    path: Optional[str] = None  # empirical: a trace file whose lengths are resampled
    column: Optional[str] = None  # empirical: which request-table column to resample; default: the one drawn (input_tokens or output_tokens)


@dataclass
class WorkloadConfig:
    """Where requests come from: a synthetic generator or a trace, reshaped by config."""

    kind: str = "synthetic"  # synthetic | azure | burstgpt | mooncake | sharegpt | generic
    path: Optional[str] = None  # trace file (trace workloads)
    num_requests: int = 2000  # synthetic: rows to generate (levels cycle through them as needed)
    # Typed Any, not LengthDist, so that a number may replace the whole node on the command line
    # (workload.input_tokens=16); validate() turns it into a LengthDist (see length_dist).
    input_tokens: Any = field(default_factory=lambda: LengthDist(mean=256))  # synthetic input lengths: a number (fixed) or dist, mean, std, min, max, path, column
    output_tokens: Any = field(default_factory=lambda: LengthDist(mean=128))  # synthetic output lengths (also for trace turns without one): a number or a distribution
    time_scale: float = 1.0  # trace time multiplier (0.5 = twice as fast)
    target_rate: Optional[float] = None  # rescale inter-arrivals to this mean req/s, keeping burstiness
    start_s: Optional[float] = None  # keep only arrivals at or after this offset (s from trace start)
    end_s: Optional[float] = None  # keep only arrivals before this offset
    max_input_tokens: Optional[int] = None  # clip input lengths to this
    max_output_tokens: Optional[int] = None  # clip output lengths to this
    model_filter: Optional[str] = None  # BurstGPT: keep only this model (e.g. ChatGPT)
    log_type_filter: Optional[str] = None  # BurstGPT: keep only this log type
    sample: Optional[int] = None  # keep a seeded random sample of this many requests
    seed: int = 0  # seed for synthesis and sampling
    on_error: str = "raise"  # raise | skip: what a malformed trace row does
    zero_output: str = "drop"  # trace rows with 0 output tokens (BurstGPT failures): drop | keep (sent with 1 output token)
    tokenizer: Optional[str] = None  # path to a tokenizer.json for exact prompt token counts
    max_turns: Optional[int] = None  # sessions: keep at most this many turns per conversation
    columns: dict[str, str] = field(default_factory=dict)  # generic: request-table column -> file column
    timestamp_unit: str = "s"  # generic: unit of the arrival column (s | ms | us | ns)


# --------------------------------------------------------------------------- load


@dataclass
class LoadConfig:
    """How hard to push: the load levels and how each is shaped and bounded."""

    kind: str = "sweep"  # concurrency | rate | trace | sweep | search
    levels: list[float] = field(default_factory=lambda: [6.0, 12.0, 18.0, 24.0, 30.0, 36.0])  # req/s (open loop) or concurrency (closed loop)
    arrival: str = "poisson"  # constant | poisson | gamma (open-loop levels; warm-up and window each get their exact count)
    burstiness: float = 1.0  # gamma shape^-1: 1 = Poisson, >1 burstier, <1 smoother
    duration_s: float = 10.0  # length of each level's sending phase
    max_duration_s: float = 120.0  # rate levels are stretched up to this when requests are long (warm-up ≥ 1, window ≥ 2 service times)
    max_requests: int = 5000  # per-level cap on requests sent
    warmup_s: float = 2.0  # excluded from the steady-state window at the start of a level
    drain_s: float = 30.0  # after sending stops, how long in-flight requests may finish
    max_concurrency: Optional[int] = None  # open loop: a ceiling on in-flight requests (queues client-side)
    ramp_up_s: float = 0.0  # open loop: rate ramps linearly from 0 over this many seconds
    shape: str = "steady"  # open loop: steady | step (rate step_from -> level at step_at_s) | burst (level = requests sent inside one second at step_at_s, after idling)
    step_at_s: float = 5.0  # step/burst: when, in seconds after the level starts, the step or burst happens
    step_from: float = 0.0  # step: the rate (req/s) before the step; 0 = idle
    think_time_s: float = 0.0  # pause between an answer and the same user's next request: a closed-loop stream's next request, a session's next turn
    seed: int = 0  # seed of the arrival draws
    # search (adaptive sweep)
    search_start: float = 1.0  # first rate tried by load=search
    search_factor: float = 2.0  # geometric step of the coarse phase
    search_tolerance: float = 0.1  # stop bisecting when the bracket is within this relative width
    search_max_levels: int = 12  # upper bound on levels measured by a search


# --------------------------------------------------------------------------- cluster


@dataclass
class ClusterConfig:
    """Where loadgen's workers run: a private local Ray, or an existing Ray cluster."""

    kind: str = "local"  # local: start a private Ray on 127.0.0.1 | ray: connect to `address`
    address: Optional[str] = None  # ray: "auto", "HOST:PORT" or "ray://HOST:PORT"
    workers: Optional[int] = None  # total worker actors; default: one per CPU of the cluster
    workers_per_node: Optional[int] = None  # spread this many workers on every node instead
    node_resource: Optional[str] = None  # only use nodes that have this custom resource (e.g. loadgen)
    allow_head_node: bool = True  # may workers run on the head node (the driver's)
    num_cpus: Optional[int] = None  # local: CPUs given to the private Ray; default: os.cpu_count()
    worker_cpus: float = 0.5  # CPUs each worker actor reserves (fractional keeps small machines usable)
    max_in_flight_per_worker: int = 10_000  # hard cap on one worker's open requests
    connections_per_worker: Optional[int] = None  # connection pool size; default: the worker's max in flight
    connect_rate_per_worker: float = 500.0  # warm-up: connections a worker opens per second before a level starts (0: none)
    flush_interval_s: float = 2.0  # records are flushed to a new Parquet part at least this often
    records_uri: Optional[str] = None  # write records straight to this pyarrow.fs URI (e.g. s3://b/run)
    clock_sync_samples: int = 8  # clock-offset samples per worker (minimum-RTT one is kept)
    loop_lag_warn_ms: float = 10.0  # a worker whose event-loop lag (p99 over a level) passes this is client-bound
    schedule_lag_warn_ms: float = 10.0  # p99 send lag behind schedule that marks a level client-bound
    collect: str = "auto"  # auto: workers off the driver's node send records through Ray | driver: all do | direct: all write to the run dir (shared filesystem)
    max_batches_in_flight: int = 4  # per worker: batches on their way to the collector before flushing waits
    ship_code: bool = True  # ray: ship this loadgen package to the cluster's workers (runtime_env py_modules)
    placement_timeout_s: float = 60.0  # fail with the cluster's free resources if workers are not placed by then


# --------------------------------------------------------------------------- slo / analysis


@dataclass
class SLOConfig:
    """Latency objectives: goodput counts requests that meet every one that is set."""

    ttft_ms: Optional[float] = 2000.0  # time to first token
    tpot_ms: Optional[float] = 100.0  # time per output token after the first
    e2e_ms: Optional[float] = None  # end-to-end latency
    attainment: float = 0.9  # goodput capacity: the highest rate where this fraction meets the SLOs
    percentile: float = 99.0  # saturation check: this percentile of TTFT/TPOT/E2E must meet the SLO


@dataclass
class AnalysisConfig:
    """How levels are judged and what capacity planning is asked for."""

    saturation_tolerance: float = 0.9  # a level is keeping up while achieved >= this * offered
    scaling_efficiency: float = 0.5  # closed loop: a level still scales while its throughput gain is >= this fraction of linear
    target_rate: Optional[float] = None  # capacity planning: traffic to serve, req/s
    price_per_replica_hour: Optional[float] = None  # cost per replica-hour, for $ per 1M output tokens
    plots: bool = True  # write PNG plots and the HTML report


@dataclass
class LoadgenConfig:
    """The whole run: what to hit, with what, how hard, from where, judged by what."""

    target: TargetConfig = field(default_factory=TargetConfig)
    workload: WorkloadConfig = field(default_factory=WorkloadConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    slo: SLOConfig = field(default_factory=SLOConfig)
    analysis: AnalysisConfig = field(default_factory=AnalysisConfig)
    run_id: Optional[str] = None  # default: derived from the start time
    label: Optional[str] = None  # short name in comparisons, plots and reports (default: the overrides that differ between compared runs, or the run directory's name)
    progress: bool = True  # live progress line per level
    max_run_s: float = 3600.0  # hard bound on the whole run's wall time


# --------------------------------------------------------------------------- validation

_CHOICES = {
    "target.kind": ("sim", "openai"),
    "target.api": ("completions", "chat", "responses"),
    "target.engine": ("vllm", "sglang", "tgi", "llamacpp", "trtllm", "sim", "generic"),
    "workload.kind": ("synthetic", "azure", "burstgpt", "mooncake", "sharegpt", "generic"),
    "workload.on_error": ("raise", "skip"),
    "workload.zero_output": ("drop", "keep"),
    "workload.timestamp_unit": ("s", "ms", "us", "ns"),
    "load.kind": ("concurrency", "rate", "trace", "sweep", "search"),
    "load.arrival": ("constant", "poisson", "gamma"),
    "load.shape": ("steady", "step", "burst"),
    "cluster.kind": ("local", "ray"),
    "cluster.collect": ("auto", "driver", "direct"),
}


def _require(cond: bool, key: str, expected: str, value: Any) -> None:
    if not cond:
        raise ConfigError(f"config key '{key}' is {value!r}; expected {expected}.")


def validate(cfg: LoadgenConfig) -> LoadgenConfig:
    """Check values that types cannot express; raise ConfigError naming the key."""
    for key, choices in _CHOICES.items():
        group, name = key.split(".")
        value = getattr(getattr(cfg, group), name)
        _require(value in choices, key, "one of " + ", ".join(choices), value)

    t, w, ld, c = cfg.target, cfg.workload, cfg.load, cfg.cluster
    if t.kind == "sim" and t.url:
        raise ConfigError(
            f"config key 'target.url' is {t.url!r} but target.kind=sim starts the embedded simulator and would ignore it; "
            "add target=openai (or your engine's profile, e.g. target=vllm) to send the load to that URL."
        )
    if t.kind == "openai" and not t.url and not t.urls and os.environ.get("OPENAI_BASE_URL"):
        t.url = os.environ["OPENAI_BASE_URL"]  # the OpenAI SDK's convention
    if t.kind == "openai" and not t.urls:
        _require(
            bool(t.url) and str(t.url).startswith(("http://", "https://")),
            "target.url",
            "an http(s) URL such as http://127.0.0.1:8000/v1 when target.kind=openai (or OPENAI_BASE_URL set)",
            t.url,
        )
    for i, u in enumerate(t.urls):
        _require(t.kind == "openai", "target.urls", "empty unless target.kind=openai", list(t.urls))
        _require(str(u).startswith(("http://", "https://")), f"target.urls[{i}]", "an http(s) base URL ending in /v1", u)
    for key in ("timeout_s", "stall_timeout_s", "connect_timeout_s", "scrape_interval_s"):
        v = getattr(t, key)
        _require(0 < v < math.inf, f"target.{key}", "a positive, finite number of seconds", v)
    for key in ("ca_file", "cert_file", "key_file"):
        path = getattr(t.tls, key)
        _require(path is None or os.path.isfile(path), f"target.tls.{key}", "a readable PEM file", path)
    _require(t.tls.key_file is None or t.tls.cert_file is not None, "target.tls.key_file", "set with target.tls.cert_file", t.tls.key_file)
    if t.proxy and t.proxy.strip().lower() != "none":
        _require(
            str(t.proxy).startswith("http://") or "://" not in str(t.proxy),
            "target.proxy",
            "an http://HOST:PORT proxy URL, none, or null for the environment's HTTPS_PROXY/HTTP_PROXY",
            t.proxy,
        )
    if t.sim_profile is not None:
        # A profile file (a loadgen-twin fit output) or a conf/target/ name, as loadgen.sim.cli.load_profile reads it.
        named = str(t.sim_profile).endswith((".yaml", ".yml"))
        path = str(t.sim_profile) if named else os.path.join(str(conf_dir()), "target", f"{t.sim_profile}.yaml")
        _require(
            os.path.isfile(path), "target.sim_profile",
            "an existing simulator profile file (a loadgen-twin fit output) or a conf/target/ profile name", t.sim_profile,
        )
    for name, value in t.headers.items():
        _require(
            valid_header(str(name), str(value)),
            f"target.headers.{name}",
            "a header name without colons or spaces, and a value without line breaks",
            value,
        )
    if t.api_key_env is not None:
        _require(
            t.api_key_env in os.environ,
            "target.api_key_env",
            "the name of a set environment variable",
            t.api_key_env,
        )

    if w.kind != "synthetic":
        _require(bool(w.path), "workload.path", f"a trace file for workload={w.kind}", w.path)
        _require(os.path.isfile(str(w.path)), "workload.path", f"an existing trace file for workload={w.kind} (no such file)", w.path)
    if w.tokenizer is not None:
        _require(os.path.isfile(str(w.tokenizer)), "workload.tokenizer", "an existing tokenizer.json (no such file)", w.tokenizer)
    w.input_tokens = length_dist(w.input_tokens, "workload.input_tokens")
    w.output_tokens = length_dist(w.output_tokens, "workload.output_tokens")
    _require(w.time_scale > 0, "workload.time_scale", "a positive factor", w.time_scale)
    _require(w.num_requests > 0, "workload.num_requests", "a positive count", w.num_requests)
    if w.target_rate is not None:
        _require(w.target_rate > 0, "workload.target_rate", "a positive rate in req/s", w.target_rate)

    _require(len(ld.levels) > 0, "load.levels", "a non-empty list of load levels", list(ld.levels))
    for i, v in enumerate(ld.levels):
        _require(
            isinstance(v, (int, float)) and math.isfinite(v) and v > 0,
            f"load.levels[{i}]",
            "a positive number (req/s for open loop, streams for closed loop)",
            v,
        )
    _require(0 < ld.duration_s < math.inf, "load.duration_s", "a positive, finite number of seconds (every level is bounded)", ld.duration_s)
    _require(ld.max_requests > 0, "load.max_requests", "a positive request cap per level", ld.max_requests)
    _require(0 <= ld.warmup_s < ld.duration_s, "load.warmup_s", "0 <= warmup_s < load.duration_s", ld.warmup_s)
    _require(0 <= ld.drain_s < math.inf, "load.drain_s", "a non-negative, finite number of seconds", ld.drain_s)
    if ld.shape != "steady":
        _require(0 <= ld.step_at_s < ld.duration_s, "load.step_at_s", "a time within the level: 0 <= step_at_s < load.duration_s", ld.step_at_s)
        _require(ld.step_from >= 0, "load.step_from", "a non-negative rate in req/s", ld.step_from)
    _require(ld.burstiness > 0, "load.burstiness", "a positive number (1 = Poisson)", ld.burstiness)
    if ld.max_concurrency is not None:
        _require(ld.max_concurrency > 0, "load.max_concurrency", "a positive count", ld.max_concurrency)
    _require(ld.search_factor > 1, "load.search_factor", "a factor greater than 1", ld.search_factor)
    _require(0 < ld.search_tolerance < 1, "load.search_tolerance", "a fraction between 0 and 1", ld.search_tolerance)

    if c.kind == "ray":
        _require(bool(c.address), "cluster.address", "'auto', 'HOST:PORT' or 'ray://HOST:PORT' when cluster.kind=ray", c.address)
    if c.workers is not None:
        _require(c.workers > 0, "cluster.workers", "a positive number of worker actors", c.workers)
    _require(c.worker_cpus > 0, "cluster.worker_cpus", "a positive (possibly fractional) CPU count", c.worker_cpus)
    _require(c.flush_interval_s > 0, "cluster.flush_interval_s", "a positive number of seconds", c.flush_interval_s)
    _require(c.max_batches_in_flight > 0, "cluster.max_batches_in_flight", "a positive count", c.max_batches_in_flight)
    _require(c.placement_timeout_s > 0, "cluster.placement_timeout_s", "a positive number of seconds", c.placement_timeout_s)
    _require(c.max_in_flight_per_worker > 0, "cluster.max_in_flight_per_worker", "a positive count", c.max_in_flight_per_worker)
    _require(
        0 <= c.connect_rate_per_worker < math.inf, "cluster.connect_rate_per_worker",
        "connections per second, ≥ 0 (0: no warm-up)", c.connect_rate_per_worker,
    )

    for key in ("ttft_ms", "tpot_ms", "e2e_ms"):
        v = getattr(cfg.slo, key)
        _require(v is None or v > 0, f"slo.{key}", "a positive number of milliseconds or null", v)
    _require(0 < cfg.slo.attainment <= 1, "slo.attainment", "a fraction in (0, 1]", cfg.slo.attainment)
    _require(0 < cfg.analysis.saturation_tolerance <= 1, "analysis.saturation_tolerance", "a fraction in (0, 1]", cfg.analysis.saturation_tolerance)
    _require(0 < cfg.analysis.scaling_efficiency <= 1, "analysis.scaling_efficiency", "a fraction in (0, 1]", cfg.analysis.scaling_efficiency)
    _require(0 < cfg.max_run_s < math.inf, "max_run_s", "a positive, finite number of seconds", cfg.max_run_s)
    return cfg


# --------------------------------------------------------------------------- token lengths

LENGTH_DISTS = ("fixed", "uniform", "normal", "lognormal", "empirical")
LENGTH_COLUMNS = ("input_tokens", "output_tokens")  # the request-table columns an empirical dist resamples
_LENGTH_MINIMUM = {"input_tokens": 0, "output_tokens": 1}  # a prompt may be empty; an answer has a token


def fixed_length(n: float) -> LengthDist:
    """The distribution a plain number stands for: always ``n`` tokens (clip bounds widened to hold it)."""
    return LengthDist(dist="fixed", mean=float(n), min=min(1, int(n)), max=max(8192, math.ceil(n)))


def length_dist(value: Any, key: str, minimum: Optional[int] = None) -> LengthDist:
    """A checked copy of one token-length setting.

    Input: ``value`` (a LengthDist, a mapping of its keys, or a number meaning a fixed length)
    and its dotted ``key``, e.g. ``workload.output_tokens``; the key's last part names the column
    an empirical dist resamples by default and the smallest length allowed (``minimum``
    overrides it). Output: a new LengthDist with ``column`` filled in. Raises ConfigError
    naming the key when the value cannot be used.
    """
    name = key.rsplit(".", 1)[-1]
    minimum = _LENGTH_MINIMUM.get(name, 1) if minimum is None else minimum
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        _require(math.isfinite(value) and value >= minimum, key, f"a number of tokens >= {minimum} (a fixed length) or a distribution", value)
        dist = fixed_length(value)
    elif isinstance(value, LengthDist):
        dist = dataclasses.replace(value)
    elif isinstance(value, Mapping):
        dist = _structured(LengthDist, value, key)
    else:
        raise ConfigError(
            f"config key '{key}' is {value!r}; expected a number of tokens (a fixed length) "
            f"or a distribution ({key}.dist=..., {key}.mean=...)."
        )
    if dist.column is None:
        dist.column = name if name in LENGTH_COLUMNS else LENGTH_COLUMNS[0]
    check_length_dist(dist, key, minimum)
    return dist


def check_length_dist(dist: LengthDist, key: str, minimum: int) -> None:
    """Raise ConfigError naming ``key``'s sub-key when a length distribution is not usable.

    A negative mean, std or min is refused rather than drawn and clipped (draws outside
    [min, max] are clipped and counted in the workload's notes).
    """
    _require(dist.dist in LENGTH_DISTS, f"{key}.dist", "one of " + ", ".join(LENGTH_DISTS), dist.dist)
    _require(dist.min >= minimum, f"{key}.min", f"an integer >= {minimum}", dist.min)
    _require(dist.max >= dist.min, f"{key}.max", f"an integer >= {key}.min ({dist.min})", dist.max)
    _require(math.isfinite(dist.mean) and dist.mean >= 0, f"{key}.mean", "a non-negative number of tokens", dist.mean)
    _require(math.isfinite(dist.std) and dist.std >= 0, f"{key}.std", "a non-negative number", dist.std)
    if dist.dist == "lognormal":
        _require(dist.mean > 0, f"{key}.mean", "a positive mean for a lognormal", dist.mean)
    if dist.dist == "empirical":
        _require(bool(dist.path), f"{key}.path", "a trace file for dist=empirical", dist.path)
        _require(dist.column in LENGTH_COLUMNS, f"{key}.column", "one of " + ", ".join(LENGTH_COLUMNS), dist.column)
        _require(os.path.isfile(str(dist.path)), f"{key}.path", "an existing trace file (no such file)", dist.path)


# --------------------------------------------------------------------------- secrets

SECRET_KEYS = frozenset({"api_key"})
REDACTED = "***"


def redact(obj: Any) -> Any:
    """Return a plain (JSON-ready) copy of a config with every secret replaced by '***'."""
    if is_dataclass(obj):
        obj = {f.name: getattr(obj, f.name) for f in fields(obj)}
    if isinstance(obj, dict):
        return {
            k: (REDACTED if k in SECRET_KEYS and v is not None else redact(v)) for k, v in obj.items()
        }
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def api_key(target: TargetConfig) -> Optional[str]:
    """The bearer token to send, from the config or the named environment variable."""
    if target.api_key:
        return target.api_key
    if target.api_key_env:
        return os.environ.get(target.api_key_env)
    if target.kind == "openai":
        return os.environ.get("OPENAI_API_KEY") or None  # the OpenAI SDK's convention
    return None


def to_config(container: Any) -> LoadgenConfig:
    """Turn an OmegaConf node (or dict) into a validated LoadgenConfig.

    Every problem, a wrong type or an unknown key included, is a ConfigError naming the key.
    """
    if isinstance(container, LoadgenConfig):
        return validate(container)
    if OmegaConf.is_config(container):
        container = OmegaConf.to_container(container, resolve=True)
    cfg = _structured(LoadgenConfig, _expand_lengths(container or {}), "")
    assert isinstance(cfg, LoadgenConfig)
    return validate(cfg)


def _expand_lengths(container: Mapping[str, Any]) -> Mapping[str, Any]:
    """``container`` with a plain number for workload.input_tokens/output_tokens spelled out as a fixed length.

    OmegaConf cannot merge a number into a LengthDist node, so the shorthand is expanded first.
    """
    workload = container.get("workload")
    if not isinstance(workload, Mapping):
        return container
    expanded = dict(workload)
    for name in LENGTH_COLUMNS:
        value = expanded.get(name)
        if value is not None and not isinstance(value, Mapping):
            expanded[name] = dataclasses.asdict(length_dist(value, f"workload.{name}"))
    return {**container, "workload": expanded}


def _structured(cls: type, value: Any, prefix: str) -> Any:
    """An instance of dataclass ``cls`` from a mapping, type-checked by OmegaConf; errors name ``prefix``.KEY."""
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(cls), value))
    except OmegaConfBaseException as exc:
        raise ConfigError(omegaconf_message(exc, prefix)) from None


# --------------------------------------------------------------------------- schema, help and messages


def schema_node() -> Any:
    """LoadgenConfig as the OmegaConf node Hydra composes on, its dict options open to new keys.

    Hydra sets struct mode on the whole config, which would make ``target.headers.X-Team=a``
    need a '+' (Hydra reverted letting Dict-typed fields accept new keys, hydra#1421). A node
    whose own struct flag is False keeps accepting keys under a struct root.
    """
    node = OmegaConf.structured(LoadgenConfig)
    for key in dict_keys(LoadgenConfig):
        OmegaConf.set_struct(OmegaConf.select(node, key), False)
    return node


def dict_keys(cls: type, prefix: str = "") -> list[str]:
    """Dotted keys of every dict-typed option under dataclass ``cls`` (e.g. target.headers)."""
    keys = []
    for f in fields(cls):
        tp = _field_types(cls)[f.name]
        if typing.get_origin(tp) is dict:
            keys.append(prefix + f.name)
        elif is_dataclass(tp):
            keys.extend(dict_keys(tp, f"{prefix}{f.name}."))
    return keys


@functools.lru_cache(maxsize=None)
def _field_types(cls: type) -> dict[str, Any]:
    """Each field's type; an ``Any`` field with a dataclass default counts as that dataclass."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if hints[f.name] is Any and f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if is_dataclass(default):
                hints[f.name] = type(default)
    return hints


@functools.lru_cache(maxsize=None)
def field_help(cls: type) -> dict[str, str]:
    """The one-line description of each field of dataclass ``cls``: the ``# comment`` ending its line.

    Input: a dataclass of this module. Output: {field name: description}; fields without a
    trailing comment are left out. The comments stay the one place each option is described;
    ``loadgen --help`` and error messages read them from here.
    """
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {
        tok.start[0]: tok.string.lstrip("#").strip()
        for tok in tokenize.generate_tokens(io.StringIO(source).readline)
        if tok.type == tokenize.COMMENT
    }
    klass = ast.parse(source).body[0]
    assert isinstance(klass, ast.ClassDef)
    out = {}
    for node in klass.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.end_lineno in comments:
            out[node.target.id] = comments[node.end_lineno]
    return out


def key_type(key: str) -> Any:
    """The type of a dotted config key (``load.levels[0]`` -> float); None when there is no such key."""
    tp: Any = LoadgenConfig
    for part in key.replace("[", ".[").split("."):
        if part.startswith("["):
            args = typing.get_args(tp)
            tp = args[0] if args else Any
        elif is_dataclass(tp) and part in _field_types(tp):
            tp = _field_types(tp)[part]
        elif typing.get_origin(tp) is dict or tp is Any:
            args = typing.get_args(tp)
            tp = args[1] if len(args) == 2 else Any
        else:
            return None
    return tp


def key_help(key: str) -> Optional[str]:
    """The one-line description of a dotted config key, or None."""
    parent, _, name = key.partition("[")[0].rpartition(".")
    owner = key_type(parent) if parent else LoadgenConfig
    return field_help(owner).get(name) if is_dataclass(owner) else None


def describe_type(tp: Any) -> str:
    """What a value of type ``tp`` looks like on the command line, in a few words."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) is typing.Union and type(None) in args:
        return describe_type(next(a for a in args if a is not type(None))) + " or null"
    simple = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    if tp in simple:
        return simple[tp]
    if typing.get_origin(tp) is list:
        return "a list such as [1,2]" if args and args[0] in (int, float) else "a list such as [a,b]"
    if typing.get_origin(tp) is dict:
        return "a mapping such as {name: value} (or one entry: KEY.NAME=VALUE)"
    if is_dataclass(tp):
        return "a group of keys (set them one by one: KEY.NAME=VALUE)"
    return "a value"


def unknown_key_message(key: str) -> str:
    """The one-line error for a key that is not an option, with the nearest real key when there is one."""
    parent, _, name = key.rpartition(".")
    owner = key_type(parent) if parent else LoadgenConfig
    if not is_dataclass(owner):
        return f"config key '{key}' is not an option; expected a key that `loadgen --help` lists."
    names = [f.name for f in fields(owner)]
    close = difflib.get_close_matches(name, names, n=1)
    where = f"{parent}." if parent else ""
    if close:
        return f"config key '{key}' is not an option; expected a key of {parent or 'loadgen'} - did you mean '{where}{close[0]}'? (`loadgen --help` lists every key)"
    return f"config key '{key}' is not an option; expected one of {', '.join(where + n for n in names)}."


def omegaconf_message(exc: OmegaConfBaseException, prefix: str = "") -> str:
    """One line, in ConfigError's style, for an OmegaConf error about a key under ``prefix``."""
    key = ".".join(p for p in (prefix, str(exc.full_key or "")) if p)
    first = str(exc.msg or type(exc).__name__).splitlines()[0]
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) or "not in struct" in first:
        return unknown_key_message(key)
    if isinstance(exc, MissingMandatoryValue):
        return f"config key '{key}' is missing (???); expected a value: add {key}=..."
    tp = key_type(key)
    if isinstance(exc, ValidationError) and tp is not None:
        about = key_help(key)
        return f"config key '{key}' is {exc.value!r}; expected {describe_type(tp)}" + (f" ({about})." if about else ".")
    return f"config key '{key}': {first}" if key else first
