"""Synthetic workload: request lengths drawn from configured distributions.

Input: ``workload.input_tokens`` / ``workload.output_tokens`` (``LengthDist``),
``workload.num_requests`` and ``workload.seed``. Output: a ``Source`` of rows with
no arrival times (``loadgen.schedule`` draws arrivals from the load config).
"""

from __future__ import annotations

import math
import os
from typing import Iterator

import numpy as np
import pyarrow as pa

from loadgen.config import ConfigError, LengthDist, WorkloadConfig
from loadgen.workload.empirical import COLUMNS as _EMPIRICAL_COLUMNS
from loadgen.workload.empirical import empirical_values
from loadgen.workload.errors import RowIssues
from loadgen.workload.prompts import Synthesizer
from loadgen.workload.trace import Source, request_ids, row_batch

DISTS = ("fixed", "uniform", "normal", "lognormal", "empirical")
_BATCH = 1 << 16


def check_dist(dist: LengthDist, key: str, minimum: int) -> None:
    """Raise ConfigError naming ``key`` when a length distribution is not usable."""
    if dist.dist not in DISTS:
        raise ConfigError(f"config key '{key}.dist' is {dist.dist!r}; expected one of {', '.join(DISTS)}.")
    if dist.min < minimum:
        raise ConfigError(f"config key '{key}.min' is {dist.min}; expected an integer >= {minimum}.")
    if dist.max < dist.min:
        raise ConfigError(f"config key '{key}.max' is {dist.max}; expected an integer >= {key}.min ({dist.min}).")
    if dist.std < 0:
        raise ConfigError(f"config key '{key}.std' is {dist.std}; expected a non-negative number.")
    if dist.dist == "lognormal" and dist.mean <= 0:
        raise ConfigError(f"config key '{key}.mean' is {dist.mean}; expected a positive mean for a lognormal.")
    if dist.dist == "empirical":
        if not dist.path:
            raise ConfigError(f"config key '{key}.path' is None; expected a trace file for dist=empirical.")
        if dist.column not in _EMPIRICAL_COLUMNS:
            raise ConfigError(
                f"config key '{key}.column' is {dist.column!r}; expected one of {', '.join(_EMPIRICAL_COLUMNS)}."
            )


def describe(dist: LengthDist) -> str:
    """A short human description of a distribution, for notes."""
    if dist.dist == "fixed":
        return f"fixed {round(dist.mean)}"
    if dist.dist == "uniform":
        return f"uniform [{dist.min}, {dist.max}]"
    if dist.dist == "empirical":
        return f"empirical {dist.column} of {os.path.basename(str(dist.path))}"
    return f"{dist.dist}(mean={dist.mean:g}, std={dist.std:g})"


def draw_lengths(dist: LengthDist, n: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """``n`` integer lengths from ``dist``, clipped to [min, max]; also returns how many were clipped."""
    if dist.dist == "fixed":
        raw = np.full(n, float(round(dist.mean)))
    elif dist.dist == "uniform":
        raw = rng.integers(dist.min, dist.max, size=n, endpoint=True).astype(np.float64)
    elif dist.dist == "normal":
        raw = np.rint(rng.normal(dist.mean, dist.std, size=n))
    elif dist.dist == "lognormal":
        # mean/std are those of the lengths themselves, not of their logarithm.
        sigma2 = math.log1p((dist.std / dist.mean) ** 2)
        raw = np.rint(rng.lognormal(math.log(dist.mean) - sigma2 / 2, math.sqrt(sigma2), size=n))
    else:
        values = empirical_values(str(dist.path), dist.column)
        raw = rng.choice(values, size=n).astype(np.float64)
    clipped = int(np.count_nonzero((raw < dist.min) | (raw > dist.max)))
    return np.clip(raw, dist.min, dist.max).astype(np.int64), clipped


def read(cfg: WorkloadConfig, synth: Synthesizer) -> Source:
    """Draw ``num_requests`` rows of input/output lengths, seeded by ``workload.seed``."""
    check_dist(cfg.input_tokens, "workload.input_tokens", 0)
    check_dist(cfg.output_tokens, "workload.output_tokens", 1)
    src = Source(path="synthetic", kind="synthetic", issues=RowIssues("synthetic"), has_arrivals=False)
    rng = np.random.default_rng(cfg.seed)
    n = cfg.num_requests
    inputs, in_clipped = draw_lengths(cfg.input_tokens, n, rng)
    outputs, out_clipped = draw_lengths(cfg.output_tokens, n, rng)
    src.notes.append(
        f"synthetic: {n} requests, input_tokens {describe(cfg.input_tokens)}, "
        f"output_tokens {describe(cfg.output_tokens)} (seed {cfg.seed})"
    )
    for what, dist, clipped in (
        ("input_tokens", cfg.input_tokens, in_clipped),
        ("output_tokens", cfg.output_tokens, out_clipped),
    ):
        if clipped:
            src.notes.append(f"synthetic {what}: {clipped} draws clipped to [{dist.min}, {dist.max}]")
    src.batches = _batches(src, inputs, outputs)
    return src


def _batches(src: Source, inputs: np.ndarray, outputs: np.ndarray) -> Iterator[pa.RecordBatch]:
    for lo in range(0, len(inputs), _BATCH):
        idx = np.arange(lo, min(lo + _BATCH, len(inputs)), dtype=np.int64)
        src.rows_read += len(idx)
        yield row_batch(
            len(idx),
            seq=idx,
            unit=idx,
            request_id=request_ids(idx),
            turn=np.zeros(len(idx), dtype=np.int32),
            input_tokens=inputs[idx],
            output_tokens=outputs[idx],
        )
