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

Three outcomes. *Not kept up*: both signs of falling behind, the in-flight
count growing beyond the tolerance (by more than its standard error) and most
requests answered late. *Kept up*: neither sign, or late requests with an
in-flight count clearly steadier than a falling-behind queue's (a long but
stable queue: one slot at 90 % load). *Too short to judge*, with the level
length that would tell, when the evidence cannot part the two:

- requests late, but the in-flight slope within the wander of a queue that
  falls behind: such a queue is a random walk, whose slope over W seconds
  wanders by √(6 (λ + μ) / 5W) (±2 req/s at 13 req/s over 6 s, as large as a
  20 % overload's growth);
- the served rate below the tolerance by Little's law while every request was
  still answered in time, in a level too short for lateness to show: at
  offered = served / tolerance a request waits (1/tolerance − 1)·t after t
  seconds, so none is late before 9 service times at 0.9.

A level is never called kept up against its own best estimate of the rate
served.
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
#: Requests wait beyond their service time by more than this many service times: they are queueing.
QUEUE_SERVICES = 0.25
#: A level whose served rate is below the tolerance must run this many times the time at which its
#: first request would be late at that overload before "no request late" clears it.
CONFIRM_FACTOR = 1.5


@dataclass
class KeepUp:
    """The keep-up judgement of one open-loop level, with the figures it rests on."""

    offered_rps: float = 0.0  # λ: requests scheduled in the window / window seconds
    growth_rps: float = 0.0  # dN/dt: least-squares slope of the in-flight count over the window
    growth_se: float = 0.0  # its standard error (samples one service time apart count as independent)
    walk_se: Optional[float] = None  # the slope's standard error if the queue were falling behind (a random walk)
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


def in_flight_growth(times: RequestTimes, window: Window) -> tuple[float, float]:
    """Slope (req/s) and the residual std of the in-flight count over the window."""
    sent = times.sent != MISSING
    t = np.linspace(window.start_ns, window.end_ns, SAMPLES, endpoint=False).astype(np.int64)
    n = in_flight_at(times.sent[sent], times.end[sent], t).astype(np.float64)
    x = (t - t[0]) / NS_PER_S
    slope, intercept = np.polyfit(x, n, 1)
    resid = n - (slope * x + intercept)
    return float(slope), float(np.std(resid, ddof=2))


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
    slope, resid_std = in_flight_growth(times, window)
    # In-flight counts one service time apart are what is independent.
    independent = max(2.0, seconds / max(out.service_s, seconds / SAMPLES))
    out.growth_rps = slope
    out.growth_se = resid_std * float(np.sqrt(12.0 / independent)) / seconds
    out.served_rps = out.offered_rps - max(0.0, slope)
    # Two signs of falling behind, and a level fails only on both. By Little's law, a server that
    # falls behind accumulates requests in flight at the rate arrivals outpace it. By latency, its
    # later requests wait longer and longer, so many are answered late (beyond LATE_SERVICES service
    # times of their schedule). One sign alone is not saturation, but may be a reason to look longer.
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
    # A queue that falls behind is a random walk: its in-flight count drifts by (offered − served)
    # per second with a variance of (offered + served) per second, so its slope over a window of W
    # seconds carries a standard error of √(6 (offered + served) / 5W). A slope within that of an
    # overload at the tolerance (adding `margin` req/s) cannot rule one out.
    margin = (1.0 - tolerance) * out.offered_rps
    out.walk_se = float(np.sqrt(6.0 * (out.offered_rps + out.served_rps) / (5.0 * seconds)))
    within_wander = slope > margin - GROWTH_SIGMAS * out.walk_se
    out.kept_up = not (growing and late)
    if not out.kept_up:
        out.reason = (
            f"requests in flight grew {slope:,.3g} ± {out.growth_se:,.2g} req/s over the window: the server served "
            f"about {out.served_rps:,.4g} of {out.offered_rps:,.4g} req/s offered "
            f"({out.ratio:.0%} < {tolerance:g}, less {GROWTH_SIGMAS:g}σ), and only {in_time:,} of the window's "
            f"{arrived:,} requests were answered within {LATE_SERVICES:g} service times of their schedule"
        )
    elif late:
        # Requests answered late, the in-flight count not clearly growing: a long but stable queue (one
        # slot at 90 % load), or an overload whose growth the window is too short to see. Kept up only
        # when an overload at the tolerance would have drifted visibly more than this level did.
        if within_wander:
            gap = margin - slope
            wanted = seconds * (GROWTH_SIGMAS * out.walk_se / gap) ** 2 if gap > 0 else 4.0 * seconds
            out.judgeable = False
            out.needed_s = (ramp_s if level_start_ns is not None else 0.0) + max(2.0 * seconds, wanted)
            out.reason = (
                f"too short to judge: {arrived - in_time:,} of the window's {arrived:,} requests were answered late "
                f"while requests in flight grew {slope:,.3g} req/s, within the ± {out.walk_se:,.2g} req/s a queue "
                f"that falls behind wanders over {seconds:,.3g} s (a server serving {tolerance:g} of the offered "
                f"{out.offered_rps:,.4g} req/s would add {margin:,.3g} req/s); a level of ≥ {out.needed_s:,.3g} s of "
                f"sending would tell"
            )
    elif level_start_ns is not None:
        # Answered in time. That clears the level only if an overload just beyond the tolerance would
        # have made requests late by its end; in a shorter level it clears nothing when Little's law
        # says the server fell behind, or when requests were already queueing and the in-flight slope
        # cannot rule an overload out (the slope's own figure is too noisy to size one).
        overload = 1.0 / tolerance - 1.0
        confirm_s = CONFIRM_FACTOR * (LATE_SERVICES - 1.0) * out.service_s / overload
        ran_s = (window.end_ns - level_start_ns) / NS_PER_S
        if ran_s < confirm_s:
            wait_s = _late_wait_s(times, window, out.service_s)
            queued = wait_s is not None and wait_s > QUEUE_SERVICES * out.service_s
            if out.ratio < tolerance or (queued and within_wander):
                out.judgeable = False
                out.needed_s = confirm_s
                evidence = (
                    f"requests in flight grew {slope:,.3g} ± {out.growth_se:,.2g} req/s (served about "
                    f"{out.served_rps:,.4g} of {out.offered_rps:,.4g} req/s offered, {out.ratio:.0%} < {tolerance:g})"
                    if out.ratio < tolerance
                    else f"requests near the window's end waited {wait_s:,.3g} s beyond their service time (p90) and "
                    f"requests in flight grew {slope:,.3g} req/s, within the ± {out.walk_se:,.2g} req/s a queue that "
                    f"falls behind wanders"
                )
                out.reason = (
                    f"too short to judge: {evidence}, while its requests were still answered in time; a server "
                    f"serving {tolerance:g} of the offered rate would make them late only after "
                    f"{confirm_s / CONFIRM_FACTOR:,.3g} s, so the level needs ≥ {confirm_s:,.3g} s of sending "
                    f"(it had {ran_s:,.3g} s)"
                )
    return out


def _late_wait_s(times: RequestTimes, window: Window, service_s: float) -> Optional[float]:
    """p90 of how long the requests scheduled in the window's last third took beyond ``service_s`` (s)."""
    last = Window(window.start_ns + (window.end_ns - window.start_ns) * 2 // 3, window.end_ns)
    mine = last.contains(times.scheduled) & (times.end != MISSING) & times.ok
    if not np.any(mine):
        return None
    return float(np.percentile(times.end[mine] - times.scheduled[mine], 90)) / NS_PER_S - service_s
