"""Where loadgen's bundled files live: the Hydra ``conf/`` directory, in a checkout or an installed wheel."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import loadgen


def conf_dir() -> Path:
    """The ``conf/`` directory: the checkout's when running from source, else the packaged ``loadgen.conf``."""
    checkout = Path(loadgen.__file__).resolve().parent.parent / "conf"
    if (checkout / "config.yaml").is_file():
        return checkout
    # joinpath yields a concrete path even when loadgen.conf is a namespace package
    return Path(str(files("loadgen.conf").joinpath("config.yaml"))).parent
