"""User-facing errors: what the command line prints as one line, with no traceback."""

from __future__ import annotations


class MedlmError(Exception):
    """A problem with the user's input (a file, a record, a config key), not a bug in medlm.

    Entry points catch it, print ``error: <message>`` on one line and exit with status 2.
    The message names the file, the record or the key and says what is wrong.
    """


class ConfigError(MedlmError, ValueError):
    """A config value that cannot work; raised before any data is read."""


class DataError(MedlmError):
    """A data file or record that cannot be read."""


class TrainingDiverged(MedlmError):
    """A non-finite loss or gradient norm: training stops at that step, before the optimizer
    step."""


class NonFiniteLogits(MedlmError, ValueError):
    """A model gave NaN or infinite next-token logits (its weights have diverged): there is
    nothing to sample from."""
