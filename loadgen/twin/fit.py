"""Fit the simulator's engine model to measured runs: a twin profile, how well it fits, or why it cannot.

Input: one or more run directories against one engine (``observe`` reconstructs
their steps). Output: ``FitResult`` with a ``SimProfile``, each parameter's
estimate and how it was identified, the fit quality (R², residuals) and, when the
runs do not identify a parameter, a refusal naming it, the reason and the levels
to add (``FitResult.refusals``; ``fit_runs`` returns it, the CLI exits 2).

The step model is the simulator's: a step takes
``step_base_ms + step_per_seq_ms × decoding sequences + step_per_prefill_token_ms × prefill tokens``.
Every inter-token gap is one step, so a least-squares fit of the gaps on the
decoding batch and the prefill tokens reconstructed at each gap gives the three
costs; the TTFTs of requests that found the server idle (one prefill step each,
plus whatever the server does before its engine sees the request) join the same
fit with an extra intercept, the request overhead. Gaps are binned by batch size
and prefill load and each bin enters as its median (robust to the client's
jitter and to tokens coalesced into one read), weighted by its size.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np

from loadgen.config import SimProfile
from loadgen.sim.engine import check_profile
from loadgen.twin.observe import Observations, observe

#: A bin needs this many gaps to count; fewer are noise.
MIN_BIN = 20
#: A parameter is identified by a regressor that takes this many distinct (binned) values.
MIN_LEVELS = 3
#: Engines whose name-equivalent simulator feature is on by default.
PREFIX_CACHING_ENGINES = ("vllm", "sglang", "sim")


class FitError(ValueError):
    """The runs cannot be fitted at all (no usable records); the message says why."""


@dataclass
class Param:
    """One fitted parameter: value, standard error when it is a regression coefficient, and how it was found."""

    value: float
    how: str
    stderr: Optional[float] = None


@dataclass
class FitResult:
    """A fitted twin: the profile, each parameter's account, the fit's quality, and what it refuses."""

    profile: SimProfile
    params: dict[str, Param]
    quality: dict[str, float]
    notes: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    levels: list[dict[str, Any]] = field(default_factory=list)
    runs: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Whether every parameter the twin needs is identified."""
        return not self.refusals

    def account(self) -> dict[str, Any]:
        """The ``fit:`` block of twin.yaml."""
        return {
            "runs": self.runs,
            "params": {k: dataclasses.asdict(p) for k, p in self.params.items()},
            "quality": self.quality,
            "levels": self.levels,
            "notes": self.notes,
        }

    def render(self) -> str:
        """The fit, in words, for the terminal."""
        q = self.quality
        lines = [f"twin of {', '.join(self.runs)}"]
        for name, p in self.params.items():
            err = f" ± {p.stderr:.3g}" if p.stderr is not None else ""
            lines.append(f"  {name:28s} {p.value:>12.6g}{err:14s} {p.how}")
        if q:
            lines.append(
                f"  step model: R² {q.get('r2', float('nan')):.3f} over {q.get('bins', 0):.0f} bins of {q.get('gaps', 0):.0f} gaps "
                f"and {q.get('idle_requests', 0):.0f} idle TTFTs; bin residuals |p50| {q.get('resid_abs_p50_ms', float('nan')):.3f} ms, "
                f"|max| {q.get('resid_abs_max_ms', float('nan')):.3f} ms; raw gaps within ±20 % of the model: "
                f"{100 * q.get('raw_within_20pct', float('nan')):.0f} %"
            )
        lines += [f"  note: {n}" for n in self.notes]
        lines += [f"  cannot fit: {r}" for r in self.refusals]
        return "\n".join(lines)


def fit_runs(
    run_dirs: Sequence[str],
    *,
    name: Optional[str] = None,
    max_num_seqs: Optional[int] = None,
    kv_cache_tokens: Optional[int] = None,
    context_term: bool = False,
) -> FitResult:
    """Fit a twin to ``run_dirs`` (all against the same engine); see the module docstring.

    ``max_num_seqs`` / ``kv_cache_tokens``: the server's configured values, when
    known, instead of estimating them (a run that never saturated cannot). The
    model cannot express a per-context-token decode cost, so ``context_term`` only
    reports it (its estimate and the R² it adds), for docs and diagnosis.
    """
    obs = Observations()
    for d in run_dirs:
        obs.extend(observe(d))
    if obs.requests == 0:
        raise FitError(f"{', '.join(run_dirs)}: no successful streamed requests to fit (records with status ok and token times)")
    refusals: list[str] = []
    notes: list[str] = []
    params: dict[str, Param] = {}
    base = SimProfile()
    step, quality = _fit_steps(obs, refusals, notes, context_term)
    params.update(step)
    slots = _fit_slots(obs, max_num_seqs, refusals, notes)
    if slots is not None:
        params["max_num_seqs"] = slots
    kv = _fit_kv(obs, kv_cache_tokens, int(slots.value) if slots else None, notes)
    params["kv_cache_tokens"] = kv
    k = max(1, round(obs.tokens_per_chunk))
    params["tokens_per_chunk"] = Param(float(k), "output tokens per streamed chunk, median over requests")
    budget = max(base.max_num_batched_tokens, int(params["max_num_seqs"].value) if "max_num_seqs" in params else 0)
    notes.append(
        f"max_num_batched_tokens (the chunked-prefill budget) is not identified by these runs (longest prompt {obs.max_prompt} tokens); "
        f"set to {budget}: prompts longer than that are prefilled over several steps"
    )
    caching = obs.engine in PREFIX_CACHING_ENGINES
    notes.append(f"prefix caching not fitted (unique prompts); {'on' if caching else 'off'}, as {obs.engine} does by default")

    def value(key: str, default: float) -> float:
        return params[key].value if key in params else default

    profile = SimProfile(
        name=name or f"twin-{obs.engine}",
        description=f"loadgen-twin fit of {obs.engine} ({obs.model or 'model unknown'}) from {', '.join(run_dirs)}",
        max_num_seqs=int(value("max_num_seqs", base.max_num_seqs)),
        max_num_batched_tokens=budget,
        kv_cache_tokens=int(value("kv_cache_tokens", base.kv_cache_tokens)),
        block_size=base.block_size,
        step_base_ms=max(value("step_base_ms", base.step_base_ms), 1e-3),
        step_per_seq_ms=max(value("step_per_seq_ms", 0.0), 0.0),
        step_per_prefill_token_ms=max(value("step_per_prefill_token_ms", 0.0), 0.0),
        request_overhead_ms=max(value("request_overhead_ms", 0.0), 0.0),
        prefix_caching=caching,
        tokens_per_chunk=k,
        model=obs.model or base.model,
    )
    if profile.kv_cache_tokens < obs.max_context:
        profile.kv_cache_tokens = obs.max_context
    if not refusals:
        check_profile(profile)
    levels = [dataclasses.asdict(lv) for lv in obs.levels]
    return FitResult(profile, params, quality, notes, refusals, levels, list(run_dirs))


# --------------------------------------------------------------------------- step costs


def _decode_bins(obs: Observations) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pure decode steps (nothing prefilled) binned by batch size: batch sizes, median gap (s), counts."""
    sel = obs.gap_prefill == 0
    d = obs.gap_decoding[sel].astype(np.int64)
    g = obs.gap_s[sel]
    sizes, inverse, counts = np.unique(d, return_inverse=True, return_counts=True)
    keep = counts >= MIN_BIN
    med = np.array([np.median(g[inverse == i]) for i in np.flatnonzero(keep)])
    return sizes[keep].astype(np.float64), med, counts[keep].astype(np.float64)


def _prefill_bins(obs: Observations, a: float, b: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Steps that completed exactly one prompt, binned by its length: mean prompt tokens, median extra time (s), counts.

    The extra time is the gap less the decode cost of its batch. Steps where
    several prompts completed are left out: under a burst, prompts are prefilled
    in chunks over several steps and a step's share cannot be told from the records.
    """
    sel = (obs.gap_firsts == 1) & (obs.gap_prefill > 0)
    if sel.sum() < MIN_BIN:
        return np.empty(0), np.empty(0), np.empty(0)
    p = obs.gap_prefill[sel]
    extra = obs.gap_s[sel] - (a + b * obs.gap_decoding[sel])
    edges = np.unique(np.percentile(p, np.linspace(0, 100, 11)))
    which = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, max(len(edges) - 2, 0))
    xs, ys, ns = [], [], []
    for k in np.unique(which):
        m = which == k
        if m.sum() >= 5:
            xs.append(float(np.mean(p[m])))
            ys.append(float(np.median(extra[m])))
            ns.append(float(m.sum()))
    return np.array(xs), np.array(ys), np.array(ns)


def _idle_bins(obs: Observations) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Idle-server TTFTs binned by prompt length (deciles): mean prompt tokens, median TTFT (s), counts."""
    ttft, prompt = obs.idle_ttft_s, obs.idle_prompt
    if len(ttft) < 4:
        return np.empty(0), np.empty(0), np.empty(0)
    # up to 10 bins of at least 2 requests each (a few idle requests still give a few bins)
    edges = np.unique(np.percentile(prompt, np.linspace(0, 100, min(10, len(ttft) // 2) + 1)))
    which = np.clip(np.searchsorted(edges, prompt, side="right") - 1, 0, max(len(edges) - 2, 0))
    xs, ys, ns = [], [], []
    for k in np.unique(which):
        m = which == k
        if m.sum() >= 2:
            xs.append(float(np.mean(prompt[m])))
            ys.append(float(np.median(ttft[m])))
            ns.append(float(m.sum()))
    return np.array(xs), np.array(ys), np.array(ns)


def _fit_steps(
    obs: Observations, refusals: list[str], notes: list[str], context_term: bool
) -> tuple[dict[str, Param], dict[str, float]]:
    """Two stages: decode cost from pure decode steps, then prefill cost and request overhead; refusals when not identified."""
    if len(obs.gap_s) == 0:
        refusals.append(
            "step_base_ms / step_per_seq_ms: the records have no inter-token gaps "
            "(run with target.stream=true and outputs of at least 2 tokens)"
        )
        return {}, {}
    out: dict[str, Param] = {}
    d, gd, nd = _decode_bins(obs)
    if len(d) == 0:
        refusals.append(f"step costs: too few decode steps per batch size (a size needs {MIN_BIN} gaps); run the levels longer")
        return {}, {}
    # Stage 1: decode step = base + per_seq x batch, from steps without prefill.
    if len(d) < MIN_LEVELS:
        refusals.append(
            f"step_per_seq_ms: the decode batch took only {len(d)} size(s) "
            f"({', '.join(f'{x:g}' for x in d)} running sequences); the cost per sequence needs at least {MIN_LEVELS}: "
            "add concurrency levels below the slot limit, e.g. load=calibrate or load=concurrency load.levels=[1,2,4,8,16]"
        )
        coef, se, _, _ = _wls(np.ones((len(d), 1)), gd, nd)
        a, b, se_a, se_b = coef[0], 0.0, se[0], None
    else:
        coef, se, _, _ = _wls(np.c_[np.ones(len(d)), d], gd, nd)
        a, b, se_a, se_b = coef[0], coef[1], se[0], se[1]
    out["step_base_ms"] = Param(a * 1000, "intercept of pure-decode step times (inter-token gaps) against running sequences", se_a * 1000)
    if se_b is not None:
        out["step_per_seq_ms"] = Param(b * 1000, "slope of pure-decode step times against running sequences", se_b * 1000)
    # Stage 2: prefill cost per token (and the overhead before an idle server's first step), from
    # steps that completed one prompt (their extra time over the decode cost) and idle-server TTFTs
    # (TTFT − base = overhead + per_token x prompt).
    pp, pe, pn = _prefill_bins(obs, a, b)
    ip, it, inn = _idle_bins(obs)
    varied = len(np.unique(np.round(pp))) >= 2 or len(np.unique(np.round(ip))) >= 2
    if not varied:
        refusals.append(
            "step_per_prefill_token_ms: no step is seen with varied prefill loads (no prompt arrived alone while others decoded, "
            "and the idle-server TTFTs are of one prompt length): add a level of 1 stream with prompts of varied length "
            "(workload.input_tokens.dist=uniform) and a level of 2 or more streams, e.g. load=calibrate"
        )
    if varied:
        rows = [np.c_[pp, np.zeros(len(pp))]] + ([np.c_[ip, np.ones(len(ip))]] if len(ip) else [])
        A = np.vstack(rows)
        y = np.concatenate([pe, it - a])
        w = np.concatenate([pn, inn])
        cols = [0, 1] if len(ip) and len(pp) + len(ip) > 2 else [0]
        coef2, se2, _, _ = _wls(A[:, cols], y, w)
        out["step_per_prefill_token_ms"] = Param(
            coef2[0] * 1000, "slope of a step's extra time against the prompt tokens it completed (lone prefills and idle TTFTs)", se2[0] * 1000
        )
        if len(cols) == 2:
            out["request_overhead_ms"] = Param(coef2[1] * 1000, "idle-server TTFT beyond one prefill step (HTTP, tokenization, scheduling)", se2[1] * 1000)
    # Fit quality over every binned observation, with the fitted model.
    c = out.get("step_per_prefill_token_ms", Param(0.0, "")).value / 1000
    o = out.get("request_overhead_ms", Param(0.0, "")).value / 1000
    y_all = np.concatenate([gd, pe, it - a])
    f_all = np.concatenate([a + b * d, c * pp, o + c * ip])
    w_all = np.concatenate([nd, pn, inn])
    resid = y_all - f_all
    mean = np.sum(w_all * y_all) / np.sum(w_all)
    ss_tot = float(np.sum(w_all * (y_all - mean) ** 2))
    r2 = 1.0 - float(np.sum(w_all * resid**2)) / ss_tot if ss_tot > 0 else math.nan
    raw_pred = a + b * obs.gap_decoding + c * obs.gap_prefill
    rel = np.abs(obs.gap_s - raw_pred) / np.maximum(raw_pred, 1e-9)
    quality = {
        "r2": r2,
        "bins": float(len(y_all)),
        "gaps": float(len(obs.gap_s)),
        "idle_requests": float(len(obs.idle_ttft_s)),
        "resid_abs_p50_ms": float(np.median(np.abs(resid)) * 1000),
        "resid_abs_max_ms": float(np.max(np.abs(resid)) * 1000),
        "raw_within_20pct": float(np.mean(rel <= 0.2)),
    }
    overhead = out.get("request_overhead_ms")
    if overhead is not None and overhead.value > 0 and overhead.stderr is not None and overhead.value < 2 * overhead.stderr:
        # a handful of idle TTFTs seen through a busy client: an overhead within noise of zero is not one
        notes.append(
            f"request overhead {overhead.value:.3g} ± {overhead.stderr:.2g} ms is within two standard errors of zero: set to 0 "
            "(more requests at 1 stream would pin it down)"
        )
        overhead.value = 0.0
    if overhead is not None and overhead.value < 0:
        notes.append(f"request overhead fitted below zero ({overhead.value:.3g} ms): the prefill step alone explains idle TTFTs; set to 0")
        overhead.value = 0.0
    if out["step_base_ms"].value <= 0:
        notes.append(
            f"the decode step's base cost fitted at {out['step_base_ms'].value:.3g} ± {out['step_base_ms'].stderr:.2g} ms, not above zero: "
            "the step times do not pin it down (too few, too noisy batch sizes); the twin uses 0.001 ms"
        )
    if overhead is not None and overhead.value > 0 and overhead.value > 0.1 * out["step_base_ms"].value:
        notes.append(
            f"an idle server takes {overhead.value:.3g} ms beyond its prefill step before the first token "
            "(HTTP, tokenization, scheduling, the engine's own queue)"
        )
    if context_term:
        sel = obs.gap_prefill == 0
        X = np.c_[np.ones(sel.sum()), obs.gap_decoding[sel], obs.gap_context[sel]]
        coef3, se3, r2c, _ = _wls(X, obs.gap_s[sel], np.ones(sel.sum()))
        _, _, r2n, _ = _wls(X[:, :2], obs.gap_s[sel], np.ones(sel.sum()))
        out["step_per_context_token_ms"] = Param(
            coef3[2] * 1000, "slope of pure-decode step times against context held by the batch (reported, not modelled)", se3[2] * 1000
        )
        notes.append(
            f"decode cost per context token held: {coef3[2] * 1000:.3g} ± {se3[2] * 1000:.2g} ms; raw-gap R² {r2n:.3f} without it, "
            f"{r2c:.3f} with it (the engine model has no such term: its effect is folded into step_per_seq_ms)"
        )
    return out, quality


def _wls(A: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, np.ndarray]:
    """Weighted least squares: coefficients, their standard errors, weighted R², residuals."""
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(A * sw[:, None], y * sw, rcond=None)
    resid = y - A @ coef
    dof = max(len(y) - A.shape[1], 1)
    sigma2 = float(np.sum(w * resid**2) / dof)
    try:
        cov = sigma2 * np.linalg.inv((A * w[:, None]).T @ A)
        stderr = np.sqrt(np.maximum(np.diag(cov), 0))
    except np.linalg.LinAlgError:
        stderr = np.full(A.shape[1], math.nan)
    mean = np.sum(w * y) / np.sum(w)
    ss_tot = float(np.sum(w * (y - mean) ** 2))
    r2 = 1.0 - float(np.sum(w * resid**2)) / ss_tot if ss_tot > 0 else math.nan
    return coef, stderr, r2, resid


# --------------------------------------------------------------------------- limits


def _fit_slots(obs: Observations, given: Optional[int], refusals: list[str], notes: list[str]) -> Optional[Param]:
    """The slot limit: from the server's running/waiting gauges, else from decoding plateaus under a deeper client queue."""
    if given is not None:
        return Param(float(given), "given (--max-num-seqs)")
    if obs.waiting_max is not None and obs.running_max is not None and obs.waiting_max > 0:
        return Param(obs.running_max, f"the server's running-requests gauge peaked at {obs.running_max:g} while up to {obs.waiting_max:g} waited")
    # Without gauges: a level where the client kept clearly more requests open than the engine decoded.
    saturated = [lv for lv in obs.levels if lv.in_flight_p50 >= lv.decoding_p99 + 2]
    if saturated:
        plateau = max(round(lv.decoding_p99) for lv in saturated)
        where = ", ".join(f"level {lv.level} ({lv.value:g} {'streams' if lv.mode == 'concurrency' else 'req/s'})" for lv in saturated)
        return Param(float(plateau), f"decoding sequences plateaued at {plateau} while the client kept more open ({where})")
    top = max((lv.decoding_p99 for lv in obs.levels), default=0.0)
    highest = max((lv.value for lv in obs.levels if lv.mode == "concurrency"), default=None)
    suggestion = f"{int(2 * max(top, highest or 0)):d}" if top else "64"
    refusals.append(
        f"max_num_seqs: the runs never saturated the server (at most {top:g} sequences decoded at once, and "
        + ("the server never queued a request" if obs.waiting_max is not None else "the client never kept more open than that")
        + f"), so the slot limit is unknown: add a level above it, e.g. load=concurrency with {suggestion} streams "
        "(load=calibrate goes to 64), or pass --max-num-seqs if you know the server's setting"
    )
    return None


def _fit_kv(obs: Observations, given: Optional[int], slots: Optional[int], notes: list[str]) -> Param:
    """KV capacity in tokens: given, from the engine's usage fraction against the tokens it held, or a non-binding bound."""
    if given is not None:
        return Param(float(given), "given (--kv-cache-tokens)")
    est = np.array(obs.kv_tokens_estimates)
    est = est[np.isfinite(est)]
    if len(est) >= 3:
        value = float(np.median(est))
        reached = obs.kv_usage_max is not None and obs.kv_usage_max >= 0.9
        how = f"tokens held / the server's KV usage fraction, median of {len(est)} samples (usage peaked at {100 * (obs.kv_usage_max or 0):.1f} %)"
        if not reached:
            notes.append(
                f"the KV cache was never full (usage peaked at {100 * (obs.kv_usage_max or 0):.1f} %); its size {value:.0f} tokens "
                "is extrapolated from the usage fraction"
            )
        return Param(value, how)
    bound = (slots or 1) * obs.max_context * 2
    notes.append(
        "kv_cache_tokens is not identified (the engine exports no KV usage and the runs never filled it); "
        f"set to {bound} tokens, twice what max_num_seqs requests of the longest seen need, so it never binds "
        "(pass --kv-cache-tokens for a server whose cache is smaller)"
    )
    return Param(float(bound), "not identified: a non-binding bound")
