"""Whether an open-loop level kept up with its arrivals, judged by Little's law, or why it cannot be judged.

Input: a level's per-request times (``RequestTimes``), its steady window and
its common start. Output: ``KeepUp``. A server that keeps up answers each
request within about its service time (plus a short queue); one that falls
behind makes every later request wait longer. So the judgement follows each
request scheduled in the window to its end: kept up when nearly all were
answered within two service times of their schedule. Unlike counting
completions inside the window, this does not mistake requests that are simply
long (still in flight at the window's end) for requests the server failed to
serve. The rate it did serve is estimated by Little's law: a server that falls
behind accumulates requests in flight at the rate arrivals outpace it, so
μ ≈ λ − dN/dt over the window.

It needs a window that starts after the level's ramp (the first requests'
service time, while in-flight climbs from zero) and holds several service
times; otherwise the level is too short to judge, never "saturated".
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from loadgen.analysis.metrics import MISSING, NS_PER_S, RequestTimes, Window, in_flight_at

#: In-flight samples taken over the window.
SAMPLES = 200
#: Standard errors of the in-flight growth allowed before a level is said not to keep up.
GROWTH_SIGMAS = 1.0
#: A request is answered late beyond this many service times after its schedule.
LATE_SERVICES = 2.0
#: The window must hold this many service times, and the warm-up one.
WINDOW_SERVICES = 2.0
RAMP_SERVICES = 1.0


@dataclass
class KeepUp:
    """The keep-up judgement of one open-loop level, with the figures it rests on."""

    offered_rps: float = 0.0  # λ: requests scheduled in the window / window seconds
    growth_rps: float = 0.0  # dN/dt: least-squares slope of the in-flight count over the window
    growth_se: float = 0.0  # its standard error (samples one service time apart count as independent)
    served_rps: float = 0.0  # λ − max(0, dN/dt)
    ratio: Optional[float] = None  # served / offered
    service_s: Optional[float] = None  # time a request holds the server: p50(end − first token) + min(TTFT)
    needed_s: Optional[float] = None  # the level length this latency needs (warm-up + window)
    judgeable: bool = True
    kept_up: bool = True
    reason: str = ""  # why it did not keep up, or why it cannot be judged


def service_time_s(times: RequestTimes) -> Optional[float]:
    """How long a request holds the server once admitted: median decode span plus the quickest TTFTs.

    Queueing shows in TTFT, so the quickest TTFT stands for the
    unqueued prefill; a non-streamed request's span is its E2E (p50).
    """
    ttft, t_ok = times.ttft()
    d_ok = (times.first_token != MISSING) & (times.end != MISSING) & times.ok
    decode = times.end - times.first_token
    t_ok &= times.ok
    if np.any(t_ok) and np.any(d_ok):
        return float(np.percentile(decode[d_ok], 50) + np.min(ttft[t_ok])) / NS_PER_S
    e2e, e_ok = times.e2e()
    e_ok &= times.ok
    return float(np.percentile(e2e[e_ok], 50)) / NS_PER_S if np.any(e_ok) else None


def in_flight_growth(times: RequestTimes, window: Window) -> tuple[float, float, float]:
    """Slope (req/s), the residual std and the mean of the in-flight count over the window."""
    sent = times.sent != MISSING
    t = np.linspace(window.start_ns, window.end_ns, SAMPLES, endpoint=False).astype(np.int64)
    n = in_flight_at(times.sent[sent], times.end[sent], t).astype(np.float64)
    x = (t - t[0]) / NS_PER_S
    slope, intercept = np.polyfit(x, n, 1)
    resid = n - (slope * x + intercept)
    return float(slope), float(np.std(resid, ddof=2)), float(np.mean(n))


def keep_up(times: RequestTimes, window: Window, level_start_ns: Optional[int], tolerance: float) -> KeepUp:
    """Judge whether the level kept up: ≥ ``tolerance`` of its window's requests answered in time, less 1σ."""
    out = KeepUp()
    seconds = window.seconds
    if seconds <= 0:
        out.judgeable, out.kept_up, out.reason = False, False, "the level has no steady window"
        return out
    out.offered_rps = float(np.count_nonzero(window.contains(times.scheduled))) / seconds
    out.service_s = service_time_s(times)
    if out.service_s is None:
        out.kept_up = False
        out.reason = "no request completed: the server served nothing"
        return out
    ramp_s = (window.start_ns - level_start_ns) / NS_PER_S if level_start_ns is not None else float("inf")
    out.needed_s = RAMP_SERVICES * out.service_s + WINDOW_SERVICES * out.service_s
    if ramp_s < RAMP_SERVICES * out.service_s or seconds < WINDOW_SERVICES * out.service_s:
        out.judgeable = False
        out.reason = (
            f"too short to judge: a request holds the server {out.service_s:.3g} s, so the level needs a warm-up of "
            f"≥ {RAMP_SERVICES * out.service_s:.3g} s and a steady window of ≥ {WINDOW_SERVICES * out.service_s:.3g} s "
            f"(it had {ramp_s:.3g} s and {seconds:.3g} s)"
        )
        return out
    slope, resid_std, mean_n = in_flight_growth(times, window)
    # In-flight counts one service time apart are what is independent.
    independent = max(2.0, seconds / max(out.service_s, seconds / SAMPLES))
    spread = resid_std
    out.growth_rps = slope
    out.growth_se = spread * float(np.sqrt(12.0 / independent)) / seconds
    out.served_rps = out.offered_rps - max(0.0, slope)
    # Two signs of falling behind, and a level fails only on both. By Little's law, a server that
    # falls behind accumulates requests in flight at the rate arrivals outpace it (two standard
    # errors allowed: in-flight counts one service time apart are what is independent). By latency,
    # its later requests wait longer and longer, so many are answered late (beyond LATE_SERVICES
    # service times of their schedule). A long but stable queue (one slot at 90 % load) has late
    # requests but no growth; a window of few service times at a low rate can show a growth by
    # noise while every request is answered in time. Neither is saturation.
    out.ratio = out.served_rps / out.offered_rps if out.offered_rps > 0 else None
    if out.ratio is None:
        return out
    allowance = GROWTH_SIGMAS * out.growth_se / out.offered_rps
    growing = out.ratio < tolerance - allowance
    scheduled = window.contains(times.scheduled)
    arrived = int(np.count_nonzero(scheduled))
    late_ns = int(LATE_SERVICES * out.service_s * NS_PER_S)
    in_time = int(np.count_nonzero(scheduled & (times.end != MISSING) & (times.end - times.scheduled <= late_ns)))
    late = arrived > 0 and in_time < tolerance * arrived - np.sqrt(arrived)
    out.kept_up = not (growing and late)
    if not out.kept_up:
        out.reason = (
            f"requests in flight grew {slope:,.3g} ± {out.growth_se:,.2g} req/s over the window: the server served "
            f"about {out.served_rps:,.4g} of {out.offered_rps:,.4g} req/s offered "
            f"({out.ratio:.0%} < {tolerance:g}, less {GROWTH_SIGMAS:g}σ), and only {in_time:,} of the window's "
            f"{arrived:,} requests were answered within {LATE_SERVICES:g} service times of their schedule"
        )
    return out
