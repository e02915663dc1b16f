"""A calibrated twin of a real engine: fit the simulator's engine model to a run, then predict offline.

``fit`` estimates a ``SimProfile`` from run directories (records and scraped server
metrics) and says how well it fits, or refuses with the reason; ``profile`` reads
and writes ``twin.yaml``; ``predict`` runs a load config through the engine model
in virtual time and writes a run directory marked as predicted; ``fleet`` puts N
replicas behind a load balancer; ``cli`` is ``loadgen-twin``.
"""

from __future__ import annotations

from loadgen.twin.fit import FitError, FitResult, fit_runs
from loadgen.twin.fleet import BALANCERS, Fleet
from loadgen.twin.predict import predict
from loadgen.twin.profile import read_twin, write_twin

__all__ = ["BALANCERS", "FitError", "FitResult", "Fleet", "fit_runs", "predict", "read_twin", "write_twin"]
