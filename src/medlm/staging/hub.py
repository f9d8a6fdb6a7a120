"""The Hugging Face Hub as staging meets it: the commit a revision names, and one-line errors.

Every call goes through the libraries' public functions, looked up when called
(``huggingface_hub.HfApi().repo_info``, ``huggingface_hub.snapshot_download``,
``datasets.load_dataset``), so that tests replace them at that boundary and the real calls stay
the default.
"""

from __future__ import annotations

import errno
from collections.abc import Iterator
from contextlib import contextmanager

from medlm.errors import MedlmError

OFFLINE_HINT = "run medlm-prepare stage on a machine that reaches the Hub (a login node)"


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:300]


def _is_network_error(err: BaseException) -> bool:
    """A connection that failed (DNS, refused, timeout, proxy), whichever HTTP library raised it."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    names = {c.__name__ for c in type(err).__mro__}
    return bool(names & {"TransportError", "ConnectError", "TimeoutException", "RequestException"})


def describe_hub_error(err: BaseException, what: str, revision: str | None) -> str:
    """One line for a failed Hub call about ``what`` (``dataset qiaojin/PubMedQA``)."""
    from huggingface_hub import errors

    why = f"{type(err).__name__}: {first_line(err)}"
    if isinstance(err, errors.RevisionNotFoundError):
        return f"{what}: revision {revision!r} not found on the Hugging Face Hub ({why})"
    if isinstance(err, errors.GatedRepoError):
        return (
            f"{what}: gated on the Hugging Face Hub: accept its terms on huggingface.co and log in "
            f"(hf auth login), then stage again ({why})"
        )
    if isinstance(err, errors.RepositoryNotFoundError):
        return (
            f"{what}: no such repository on the Hugging Face Hub (a private one needs "
            f"hf auth login) ({why})"
        )
    if isinstance(err, errors.OfflineModeIsEnabled):
        return (
            f"cannot reach the Hugging Face Hub for {what}: HF_HUB_OFFLINE is set; unset it and "
            f"{OFFLINE_HINT}"
        )
    if _is_network_error(err):
        return f"cannot reach the Hugging Face Hub for {what} ({why}); {OFFLINE_HINT}"
    return f"{what}: the Hugging Face Hub request failed ({why})"


@contextmanager
def hub_errors(what: str, revision: str | None = None) -> Iterator[None]:
    """Turn a failed Hub call into a one-line MedlmError; a full disk stays an OSError."""
    try:
        yield
    except MedlmError:
        raise
    except OSError as err:
        if err.errno == errno.ENOSPC:
            raise
        raise MedlmError(describe_hub_error(err, what, revision)) from None
    except Exception as err:
        raise MedlmError(describe_hub_error(err, what, revision)) from None


def resolve_revision(repo_id: str, repo_type: str, revision: str | None) -> str:
    """The commit sha that ``revision`` (a branch, tag or sha; None: the default branch) names."""
    import huggingface_hub

    what = f"{repo_type} {repo_id}"
    with hub_errors(what, revision):
        info = huggingface_hub.HfApi().repo_info(repo_id, repo_type=repo_type, revision=revision)
    sha = getattr(info, "sha", None)
    if not sha:
        raise MedlmError(f"{what}: the Hugging Face Hub gave no commit for revision {revision!r}")
    return sha
