"""Short run labels for comparisons, plots and reports.

Input: run summaries (their config, run directory and Hydra's saved
``.hydra/overrides.yaml``). Output: one distinct short label per run: the
run's ``label=`` config key when set; else its directory name when that is
short; else the command-line overrides whose values differ between the
compared runs (a multirun's ``target=sim,sim-70b`` gives ``sim`` and
``sim-70b``); else the directory name shortened in the middle.
"""

from __future__ import annotations

import os
from typing import Any, Optional, Sequence

import yaml

#: Longest directory name used as is.
SHORT = 24
#: Longest label built from overrides before it is shortened.
LONGEST = 40


def overrides(run_dir: str) -> dict[str, str]:
    """Hydra's command-line overrides of a run, {key: value} in order ({} when not saved)."""
    path = os.path.join(run_dir, ".hydra", "overrides.yaml")
    try:
        with open(path, encoding="utf-8") as f:
            items = yaml.safe_load(f) or []
    except (OSError, yaml.YAMLError):
        return {}
    out = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _short_override(key: str, value: str) -> str:
    """'target=sim-70b' → 'sim-70b' (a group choice says itself); 'workload.output_tokens=64' → 'output_tokens=64'."""
    return value if "." not in key else f"{key.rsplit('.', 1)[1]}={value}"


def _middle(text: str, width: int) -> str:
    """``text`` cut in the middle to ``width`` characters (ends are what tell runs apart)."""
    if len(text) <= width:
        return text
    half = (width - 1) // 2
    return text[:half] + "…" + text[len(text) - (width - 1 - half) :]


def differing(all_overrides: Sequence[dict[str, str]]) -> list[list[tuple[str, str]]]:
    """Per run, the (key, value) overrides whose value is not the same in every run."""
    keys: list[str] = []
    for ov in all_overrides:
        keys += [k for k in ov if k not in keys]
    varying = [k for k in keys if len({ov.get(k) for ov in all_overrides}) > 1]
    return [[(k, ov[k]) for k in varying if k in ov] for ov in all_overrides]


def _explicit(config: dict[str, Any]) -> Optional[str]:
    label = config.get("label")
    return str(label) if label not in (None, "") else None


def run_labels(summaries: Sequence[Any]) -> list[str]:
    """Distinct short labels of ``summaries`` (objects with ``run_dir`` and ``config``), in order."""
    names = [os.path.basename(os.path.normpath(s.run_dir)) or s.run_id for s in summaries]
    diffs = differing([overrides(s.run_dir) for s in summaries])
    labels = []
    for s, name, diff in zip(summaries, names, diffs):
        explicit = _explicit(s.config or {})
        if explicit:
            labels.append(explicit)
        elif len(name) <= SHORT:
            labels.append(name)
        elif diff:
            labels.append(_middle(" ".join(_short_override(k, v) for k, v in diff), LONGEST))
        else:
            labels.append(_middle(name, SHORT))
    return _distinct(labels)


def run_label(summary: Any, width: int = 60) -> str:
    """One run's title label: ``label=``, a short directory name, else its overrides in short form (cut to ``width``)."""
    explicit = _explicit(summary.config or {})
    name = os.path.basename(os.path.normpath(summary.run_dir)) or summary.run_id
    if explicit or len(name) <= SHORT:
        return explicit or name
    ovs = overrides(summary.run_dir)
    return _middle(" ".join(_short_override(k, v) for k, v in ovs.items()) if ovs else name, width)


def _distinct(labels: list[str]) -> list[str]:
    """Repeated labels get ' #2', ' #3' … (the first keeps its name)."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} #{seen[label]}")
    return out
