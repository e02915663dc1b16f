"""Fault injection: which faults hit a request, drawn from ``FaultConfig`` and seeded per request.

Input: a ``FaultConfig``, a request id and the request's output length. Output:
a ``FaultPlan``. The same seed and request id always give the same plan, and
each fault kind has its own draw, so changing one rate leaves the others' picks
unchanged.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Optional

from loadgen.config import ConfigError, FaultConfig


@dataclass(frozen=True)
class FaultPlan:
    """The faults one request gets; a ``*_after`` field is the token count written before it strikes."""

    http_status: Optional[int] = None  # answer with this error status instead of generating
    reset_after: Optional[int] = None  # reset the connection (TCP RST)
    truncate_after: Optional[int] = None  # end the response cleanly without [DONE]
    garbage_after: Optional[int] = None  # write one malformed SSE event, then go on
    stall_after: Optional[int] = None  # hold the stream back for stall_s, then go on
    stall_s: float = 0.0

    @property
    def names(self) -> str:
        """Comma-separated names of the faults in the plan ("" for none)."""
        kinds = ("http_error", "reset", "truncate", "garbage", "stall")
        values = (self.http_status, self.reset_after, self.truncate_after, self.garbage_after, self.stall_after)
        return ",".join(kind for kind, value in zip(kinds, values) if value is not None)

    def events(self) -> list[tuple[int, int, str]]:
        """(tokens written, order, kind) of the in-stream faults, latest first (pop from the end)."""
        in_stream = (
            ("garbage", self.garbage_after),
            ("stall", self.stall_after),
            ("reset", self.reset_after),
            ("truncate", self.truncate_after),
        )
        due = [(after, order, kind) for order, (kind, after) in enumerate(in_stream) if after is not None]
        return sorted(due, reverse=True)


def check_faults(cfg: FaultConfig) -> FaultConfig:
    """Return the config, or raise ConfigError naming the ``target.faults`` key that is wrong."""

    def fail(key: str, expected: str) -> None:
        raise ConfigError(f"config key 'target.faults.{key}' is {getattr(cfg, key)!r}; expected {expected}.")

    for key in ("http_error_rate", "reset_rate", "truncate_rate", "garbage_rate", "stall_rate"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            fail(key, "a probability between 0 and 1")
    if not 400 <= cfg.http_error_status <= 599:
        fail("http_error_status", "an HTTP error status (400-599)")
    for key in ("reset_after_tokens", "stall_after_tokens"):
        if getattr(cfg, key) < 0:
            fail(key, "a non-negative token count")
    for key in ("stall_s", "accept_delay_s"):
        if not getattr(cfg, key) >= 0:
            fail(key, "a non-negative number of seconds")
    return cfg


def injects(cfg: FaultConfig) -> bool:
    """Whether any per-request fault can be drawn (accept_delay_s applies to every request anyway)."""
    return any((cfg.http_error_rate, cfg.reset_rate, cfg.truncate_rate, cfg.garbage_rate, cfg.stall_rate))


def draw(cfg: FaultConfig, request_id: str, output_tokens: int) -> FaultPlan:
    """The faults for one request. In-stream faults strike before its last token (at 0 for one-token outputs)."""
    rng = random.Random(f"{cfg.seed}:{request_id}")
    u_http, u_reset, u_truncate, u_garbage, u_stall = (rng.random() for _ in range(5))
    if u_http < cfg.http_error_rate:
        return FaultPlan(http_status=cfg.http_error_status)
    latest = max(output_tokens - 1, 0)
    return FaultPlan(
        reset_after=min(cfg.reset_after_tokens, latest) if u_reset < cfg.reset_rate else None,
        truncate_after=output_tokens // 2 if u_truncate < cfg.truncate_rate else None,
        garbage_after=min(1, latest) if u_garbage < cfg.garbage_rate else None,
        stall_after=min(cfg.stall_after_tokens, latest) if u_stall < cfg.stall_rate else None,
        stall_s=cfg.stall_s,
    )
