"""Where a project's runs live: one MLflow store (``mlruns/``), run folders (``logs/``) and the
token cache (``.cache/medlm``) under one root, whichever folder a command is started from.

The root is, in order:

1. ``$MEDLM_HOME`` when it is set (a project kept outside the checkout, a shared group folder);
2. the checkout medlm runs from: the folder holding ``pyproject.toml`` and the ``conf/`` tree that
   Hydra reads (an editable install, ``make train``);
3. the current directory, for a non-editable install, which has no checkout to point at.

Before this, the root was always the current directory: ``medlm-train`` started from another
folder silently made a second ``mlruns/`` there, and ``make ui`` never showed the run.
"""

from __future__ import annotations

import os
from pathlib import Path

HOME_ENV = "MEDLM_HOME"


def checkout_of(config_dir: str | os.PathLike) -> Path | None:
    """The checkout whose ``conf/`` is ``config_dir``, or None for the copy inside an installed
    package (``site-packages/medlm/conf``)."""
    conf = Path(config_dir).resolve()
    root = conf.parent
    if conf.name == "conf" and (root / "pyproject.toml").is_file():
        return root
    return None


def project_root(config_dir: str | os.PathLike) -> Path:
    """``$MEDLM_HOME``, else the checkout holding ``config_dir``, else the current directory."""
    home = os.environ.get(HOME_ENV, "").strip()
    if home:
        return Path(home).expanduser().resolve()
    return checkout_of(config_dir) or Path.cwd()
