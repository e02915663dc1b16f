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

from loadgen.config import LENGTH_DISTS, LengthDist, WorkloadConfig, length_dist
from loadgen.workload.empirical import empirical_values
from loadgen.workload.errors import RowIssues
from loadgen.workload.prompts import Synthesizer
from loadgen.workload.trace import Source, request_ids, row_batch

DISTS = LENGTH_DISTS
_BATCH = 1 << 16


def check_dist(dist: LengthDist, key: str, minimum: int) -> None:
    """Raise ConfigError naming ``key`` when a length distribution is not usable (see config.check_length_dist)."""
    length_dist(dist, key, minimum)


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
        values = empirical_values(str(dist.path), dist.column or "input_tokens")
        raw = rng.choice(values, size=n).astype(np.float64)
    clipped = int(np.count_nonzero((raw < dist.min) | (raw > dist.max)))
    return np.clip(raw, dist.min, dist.max).astype(np.int64), clipped


def read(cfg: WorkloadConfig, synth: Synthesizer) -> Source:
    """Draw ``num_requests`` rows of input/output lengths, seeded by ``workload.seed``."""
    # A number means a fixed length, and an empirical dist resamples the column it draws.
    in_dist = length_dist(cfg.input_tokens, "workload.input_tokens")
    out_dist = length_dist(cfg.output_tokens, "workload.output_tokens")
    src = Source(path="synthetic", kind="synthetic", issues=RowIssues("synthetic"), has_arrivals=False)
    rng = np.random.default_rng(cfg.seed)
    n = cfg.num_requests
    inputs, in_clipped = draw_lengths(in_dist, n, rng)
    outputs, out_clipped = draw_lengths(out_dist, n, rng)
    src.notes.append(
        f"synthetic: {n} requests, input_tokens {describe(in_dist)}, "
        f"output_tokens {describe(out_dist)} (seed {cfg.seed})"
    )
    for what, dist, clipped in (
        ("input_tokens", in_dist, in_clipped),
        ("output_tokens", out_dist, out_clipped),
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
