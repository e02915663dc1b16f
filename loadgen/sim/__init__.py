"""The embedded simulator: a continuous-batching engine model behind an OpenAI-compatible HTTP front.

``engine`` models the engine (and its closed-form ``capacity``), ``server`` serves
it over HTTP, ``process`` runs it as a child process, ``cli`` is ``loadgen-sim``.
"""

from __future__ import annotations

from loadgen.sim.engine import Capacity, Engine, capacity, simulate
from loadgen.sim.process import SimProcess, SimStartError, start_sim
from loadgen.sim.server import SimServer

__all__ = ["Capacity", "Engine", "SimProcess", "SimServer", "SimStartError", "capacity", "simulate", "start_sim"]
