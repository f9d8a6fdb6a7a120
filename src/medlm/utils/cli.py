"""What every medlm command line does with a user error: one line on stderr, exit status 2."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from omegaconf import OmegaConf
from omegaconf.errors import MissingMandatoryValue

from medlm.errors import ConfigError, MedlmError
from medlm.utils.project import project_root
from medlm.utils.quiet import quiet_libraries
from medlm.utils.slurm import register_resolvers

USER_ERROR_EXIT = 2


def find_config_dir() -> str:
    """The Hydra config tree: a checkout's top-level ``conf/`` (the one users edit; an editable
    install runs from it), else the copy installed with the package (``medlm/conf``)."""
    package = Path(__file__).resolve().parents[1]  # src/medlm, or site-packages/medlm
    checkout = package.parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "conf" / "train.yaml").is_file():
        return str(checkout / "conf")
    return str(package / "conf")


CONFIG_DIR = find_config_dir()
# The project dir (paths.root_dir: mlruns/, logs/, .cache/): $MEDLM_HOME, else this checkout, else
# the current directory (medlm.utils.project). A resolver, not ${hydra:runtime.cwd}: a sweeper lays
# out its job dirs before Hydra's runtime config exists. medlm.cwd is kept for configs that use it.
if not OmegaConf.has_resolver("medlm.root"):
    OmegaConf.register_new_resolver("medlm.root", lambda: str(project_root(CONFIG_DIR)))
if not OmegaConf.has_resolver("medlm.cwd"):
    OmegaConf.register_new_resolver("medlm.cwd", os.getcwd)


def find_user_error(exc: BaseException) -> MedlmError | None:
    """The MedlmError behind ``exc``, also when Hydra's instantiate or Lightning wrapped it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedlmError):
            return exc
        if isinstance(
            exc, MissingMandatoryValue
        ):  # a ??? in a config that the user did not fill in
            return ConfigError(
                f"{exc.full_key}: no value given; set it on the command line ({exc.full_key}=...)"
            )
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def is_hydra_user_error(exc: BaseException) -> bool:
    """A Hydra error that is the user's: an unknown group option or key, a malformed override, a
    target that does not take a key. An error raised inside a constructor is not (it is a bug, or a
    MedlmError that :func:`find_user_error` finds)."""
    from hydra.errors import HydraException, InstantiationException

    if not isinstance(exc, HydraException):
        return False
    return not (
        isinstance(exc, InstantiationException)
        and not isinstance(exc.__cause__, (TypeError, type(None)))
    )


def is_user_error(exc: BaseException) -> bool:
    """A mistake in the user's input (config, data, paths), not a bug: one line, exit 2."""
    return find_user_error(exc) is not None or is_hydra_user_error(exc)


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a MedlmError (however wrapped) into ``error: <message>`` and exit 2, with no
    traceback."""
    try:
        yield
    except Exception as exc:
        err = find_user_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)


# the launchers' GPU/task counts (conf/hydra/launcher/*.yaml); a bad value is one error line
register_resolvers(guard=user_errors)


class OneLineErrorParser(argparse.ArgumentParser):
    """Usage mistakes as one ``error:`` line and exit 2, like every other user error."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {message} (see {self.prog} --help)", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)


def _one_line(text: str) -> str:
    """Hydra's message on one line: its lines joined, without the config-search and debugging
    hints."""
    noise = (
        "full_key:",
        "object_type=",
        "reference_type=",
        "Config search path",
        "provider=",
        "Set the environment variable HYDRA_FULL_ERROR",
    )
    lines = [line.strip() for line in text.splitlines()]
    return "; ".join(line for line in lines if line and not line.startswith(noise)).replace(
        ":;", ":"
    )


def run_hydra(hydra_main: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` function so that Hydra's own errors (an unknown group option or key, a
    malformed override, a target that does not take a key) are one ``error:`` line and exit 2, as
    every other user error. A crash inside medlm still shows its traceback."""
    from hydra.errors import HydraException

    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing and exiting 1
    quiet_libraries()
    try:
        return hydra_main()
    except HydraException as err:
        if not is_hydra_user_error(err):  # an error inside a constructor: a bug
            raise
        print(f"error: {_one_line(str(err))}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
