"""The MLflow logger medlm runs with: opened safely when jobs start together, and safe to resume.

- Opening: MLflow creates a new sqlite store's tables, and the logger the run's experiment, when
  they are first used; jobs that start together (a sweep on SLURM or submitit) raced on both and
  failed ("table ... already exists", "Online migration expected to match one row"). Here one
  process at a time opens a local store, holding an exclusive lock beside the database while the
  store and the experiment are created (:func:`open_mlflow_logger`).
- Reaching it: a run pointed at a tracking server (``MLFLOW_TRACKING_URI=http://login1:5000``)
  that does not answer from this node stops at the start with one error line naming the URI
  (:func:`check_tracking_server`), instead of training for hours and losing the run (MLflow's
  client retries for minutes, then raises inside training).
- Resuming: a job killed after its last checkpoint has logged steps that the resumed run trains
  again. MLflow cannot delete metric points, so the resumed run skips a metric at a step the run
  already holds: its step axis continues without a repeat or a gap. With exact resume the skipped
  values equal the ones kept. The steps already logged are read once, when this process first
  logs; in a new run there are none (:class:`MLFlowLogger`).
"""

from __future__ import annotations

import fcntl
import socket
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from hydra.utils import instantiate
from lightning.fabric.utilities.logger import _add_prefix
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import MLFlowLogger as _LightningMLFlowLogger
from omegaconf import DictConfig

from medlm.errors import MedlmError


class MLFlowLogger(_LightningMLFlowLogger):
    _logged_before: dict[str, int] | None = None

    def _last_steps_before(self) -> dict[str, int]:
        """The last step of each metric the run held when this process started logging to it."""
        if self._logged_before is None:
            client, run_id = self.experiment, self.run_id
            self._logged_before = {}
            for key in client.get_run(run_id).data.metrics:
                history = client.get_metric_history(run_id, key)
                self._logged_before[key] = max((m.step for m in history), default=-1)
        return self._logged_before

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        before = self._last_steps_before()
        if before:
            at = step or 0
            named = _add_prefix(dict(metrics), self._prefix, self.LOGGER_JOIN_CHAR)
            metrics = {
                k: v for (k, v), name in zip(metrics.items(), named) if at > before.get(name, -1)
            }
            if not metrics:
                return
        super().log_metrics(metrics, step)


SQLITE_PREFIX = "sqlite:///"
HTTP_PREFIXES = ("http://", "https://")
# seconds a tracking server has to answer at the start of a run: a closed port fails at once,
# a firewall that drops packets takes all of it
SERVER_CHECK_TIMEOUT_S = 10.0
SERVER_CHECK_PATH = "/api/2.0/mlflow/experiments/search?max_results=1"


def check_tracking_server(
    tracking_uri: str | None, timeout: float = SERVER_CHECK_TIMEOUT_S
) -> None:
    """Raise one MedlmError line when the tracking server at ``tracking_uri`` cannot be used.

    Only ``http(s)://`` URIs are checked (a sqlite or file store is local), with one cheap API
    request. A connection that fails or times out is an error; so is the server refusing the host
    name in the URI (``mlflow server`` accepts only localhost and private IPs unless started with
    ``--allowed-hosts``). Any other answer, an error status included (authentication, a proxy),
    counts as reachable and is left to MLflow's client.
    """
    if not tracking_uri or not tracking_uri.startswith(HTTP_PREFIXES):
        return
    url = tracking_uri.rstrip("/") + SERVER_CHECK_PATH
    where = f"the MLflow tracking server {tracking_uri}"
    try:
        with urllib.request.urlopen(url, timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        body = err.read(500).decode("utf-8", "replace")
        if err.code == 403 and "Invalid Host header" in body:
            host = urllib.parse.urlsplit(tracking_uri).netloc
            raise MedlmError(
                f"{where} refuses the host name {host} ({body.strip()}): start it with "
                f"--allowed-hosts {host} (mlflow server accepts localhost and private IPs "
                "only by default), or use its IP address in MLFLOW_TRACKING_URI; nothing was run"
            ) from None
        return
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", None) or err
        raise MedlmError(
            f"{where} does not answer from {socket.gethostname()} ({reason}); start it "
            "(mlflow server --host 0.0.0.0 ...) or point MLFLOW_TRACKING_URI "
            "(logger.mlflow.tracking_uri) at one this node reaches; nothing was run"
        ) from None


def sqlite_path(tracking_uri: str | None) -> Path | None:
    """The database file of a ``sqlite:///<path>`` tracking URI; None for any other store."""
    if not tracking_uri or not tracking_uri.startswith(SQLITE_PREFIX):
        return None
    return Path(tracking_uri[len(SQLITE_PREFIX) :])


@contextmanager
def store_lock(tracking_uri: str | None) -> Iterator[None]:
    """An exclusive lock on ``<database>.lock`` while held; nothing for a tracking server."""
    db = sqlite_path(tracking_uri)
    if db is None:
        yield
        return
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def open_mlflow_logger(lcfg: DictConfig, run_id: str | None) -> _LightningMLFlowLogger:
    """The configured MLflow logger (continuing run ``run_id`` when given), with its store's tables
    and its experiment created one process at a time. The run itself is created when the logger is
    first used, so that a run failing before then leaves none."""
    extra = {"run_id": run_id} if run_id else {}
    with store_lock(lcfg.get("tracking_uri")):
        logger = instantiate(lcfg, **extra)  # opens the store: creates a new one's tables
        name = lcfg.get("experiment_name")
        if not run_id and name:
            from mlflow import MlflowClient  # mlflow: ~1 s to import, only when a run opens

            client = MlflowClient(lcfg.get("tracking_uri"))
            if client.get_experiment_by_name(name) is None:
                client.create_experiment(name, artifact_location=lcfg.get("artifact_location"))
    return logger
