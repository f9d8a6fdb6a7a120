"""What every medlm command line does with a user error: one line on stderr, exit status 2."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterator

from omegaconf.errors import MissingMandatoryValue

from medlm.errors import ConfigError, MedlmError

USER_ERROR_EXIT = 2


def find_user_error(exc: BaseException) -> MedlmError | None:
    """The MedlmError behind ``exc``, also when Hydra's instantiate or Lightning wrapped it."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedlmError):
            return exc
        if isinstance(exc, MissingMandatoryValue):  # a ??? in a config that the user did not fill in
            return ConfigError(f"{exc.full_key}: no value given; set it on the command line ({exc.full_key}=...)")
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a MedlmError (however wrapped) into ``error: <message>`` and exit 2, with no traceback."""
    try:
        yield
    except Exception as exc:
        err = find_user_error(exc)
        if err is None:
            raise
        print(f"error: {err}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
