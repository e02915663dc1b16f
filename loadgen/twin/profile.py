"""twin.yaml: a fitted simulator profile and the account of its fit, in one file.

Input/output: ``write_twin(path, profile, fit)`` writes a ``SimProfile`` as a
``conf/target/``-shaped YAML (``kind: sim``, ``engine: sim``, a ``sim:`` block) plus a
``fit:`` block (source runs, parameter estimates, residuals, R², notes);
``read_twin(path)`` gives back the checked profile and the fit account. Because the
file is shaped like a target option, ``loadgen target.sim_profile=twin.yaml`` and
``loadgen-sim --profile twin.yaml`` serve it unchanged (they ignore ``fit:``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import yaml

from loadgen.config import SimProfile
from loadgen.sim.cli import load_profile


def write_twin(path: str, profile: SimProfile, fit: Optional[dict[str, Any]] = None) -> str:
    """Write ``profile`` (and the fit's account) to ``path`` as twin.yaml; return ``path``."""
    header = (
        "# A twin: loadgen's simulator profile fitted to a measured engine (loadgen-twin fit; docs/twin.md).\n"
        "#   loadgen target=sim target.sim_profile=THIS_FILE ...     # serve it live\n"
        "#   loadgen-twin predict THIS_FILE [loadgen overrides]      # predict a run offline, in virtual time\n"
    )
    body = {"kind": "sim", "engine": "sim", "sim": _plain(dataclasses.asdict(profile), rounded=False)}
    if fit is not None:
        body["fit"] = _plain(fit)
    with open(path, "w", encoding="utf-8") as f:
        f.write(header)
        yaml.safe_dump(body, f, sort_keys=False, default_flow_style=False, width=120)
    return path


def read_twin(path: str) -> tuple[SimProfile, dict[str, Any]]:
    """The checked profile in ``path`` and its ``fit:`` account (empty for a hand-written profile)."""
    profile = load_profile(path)
    with open(path, encoding="utf-8") as f:
        data = yaml.safe_load(f) or {}
    fit = data.get("fit") if isinstance(data, dict) else None
    return profile, dict(fit or {})


def _plain(obj: Any, rounded: bool = True) -> Any:
    """Numpy scalars and tuples turned into plain YAML-safe values (``rounded``: floats to 6 significant digits)."""
    if isinstance(obj, dict):
        return {str(k): _plain(v, rounded) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v, rounded) for v in obj]
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        obj = obj.item()
    if isinstance(obj, float) and rounded:
        return float(f"{obj:.6g}")
    return obj
