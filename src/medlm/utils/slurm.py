"""What a run needs to know about SLURM: is this a SLURM job, was it requeued and from which
checkpoint does it resume, how is it requeued, and how many GPUs and tasks the launcher asks for.

The requeue mechanism as a whole (see medlm.callbacks.requeue): SLURM signals the job (the
requeue signal before its time limit, SIGTERM on ``scontrol requeue`` or preemption); the
RequeueOnSignal callback saves ``<run dir>/checkpoints/requeue.ckpt`` at the next step boundary
and submitit requeues the job; the requeued job runs the same Hydra job in the same sweep subdir,
where :func:`requeued_checkpoint` finds that checkpoint and medlm-train resumes from it, into the
MLflow run whose id the run dir holds.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medlm.errors import ConfigError

REQUEUE_CKPT = "requeue.ckpt"
# Lightning's SLURMEnvironment treats these job names as interactive sessions, not batch jobs
INTERACTIVE_JOB_NAMES = ("bash", "interactive")


def job_id() -> str | None:
    """This job's id as scontrol takes it: ``<array id>_<task id>`` for a job array's task."""
    array_id = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array_id is not None:
        return f"{array_id}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def in_batch_job() -> bool:
    """A SLURM batch job's task (not an salloc shell), where requeueing makes sense."""
    return (
        "SLURM_JOB_ID" in os.environ
        and os.environ.get("SLURM_JOB_NAME") not in INTERACTIVE_JOB_NAMES
    )


def restart_count() -> int:
    """How many times SLURM has requeued this job (0 on its first run)."""
    return int(os.environ.get("SLURM_RESTART_COUNT", "0"))


def requeued_checkpoint(output_dir: str | Path) -> str | None:
    """In a requeued SLURM job: the newest checkpoint of its run dir, else None.

    That is the one saved when the job was signalled (``requeue.ckpt``), or ``last.ckpt`` where
    the job was killed without time to save (or saved at an epoch end after the signal).
    """
    if not in_batch_job() or restart_count() == 0:
        return None
    ckpt_dir = Path(output_dir) / "checkpoints"
    found = [p for p in (ckpt_dir / REQUEUE_CKPT, ckpt_dir / "last.ckpt") if p.is_file()]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def requeue_signal() -> signal.Signals:
    """The signal SLURM sends before the time limit: submitit's (``--signal=USR2@N`` unless
    SUBMITIT_PREEMPT_SIGNAL names another), which submitit's own handler in the job listens to."""
    from submitit import JobEnvironment

    try:
        return signal.Signals[f"SIG{JobEnvironment.USR_SIG}"]
    except KeyError:
        raise ConfigError(
            f"SUBMITIT_PREEMPT_SIGNAL: {JobEnvironment.USR_SIG!r} is not a signal name (e.g. USR2)"
        ) from None


def requeue_signals() -> tuple[signal.Signals, ...]:
    """Signals that ask a job to checkpoint and requeue: submitit's, and SIGUSR1, the one
    Lightning's SLURM auto-requeue (and many sites' docs) use."""
    return tuple(dict.fromkeys((requeue_signal(), signal.SIGUSR1)))


def requeue(job: str) -> None:
    """Put the job back in the queue; SLURM then stops its processes (SIGTERM, SIGKILL)."""
    subprocess.run(["scontrol", "requeue", job], check=True, timeout=60)


# --- the launcher's resource counts, from the trainer config (conf/hydra/launcher/slurm.yaml) ---


def _devices(devices: object) -> int | None:
    """trainer.devices as a count; None for auto (or -1): every device there is."""
    if isinstance(devices, (list, tuple)) or OmegaConf.is_list(devices):
        return len(devices)
    if devices in ("auto", -1, "-1"):
        return None
    try:
        count = int(devices)
    except (TypeError, ValueError):
        raise ConfigError(
            f"trainer.devices: {devices!r} is not a count, a list of ids or auto"
        ) from None
    if count < 1:
        raise ConfigError(f"trainer.devices: {count} devices cannot run a SLURM job")
    return count


def parse_gpus_per_node(sinfo: str, partition: str | None) -> int | None:
    """The GPUs per node of ``partition`` from ``sinfo -h -o '%P %G'`` (the default one: ``*``).

    A GRES field looks like ``gpu:4``, ``gpu:a100:8(S:0-1)`` or ``(null)``; None when the
    partition's nodes have no GPUs or differ in their count.
    """
    counts = set()
    for line in sinfo.splitlines():
        if not line.strip():
            continue
        name, _, gres = line.strip().partition(" ")
        if name.rstrip("*") != partition if partition else not name.endswith("*"):
            continue
        gpus = [int(m.group(1)) for m in re.finditer(r"gpu(?::[^:,(\s]+)?:(\d+)", gres)]
        counts.add(sum(gpus))
    return counts.pop() if len(counts) == 1 and 0 not in counts else None


def _partition_gpus(partition: str | None) -> int:
    where = f"partition {partition}" if partition else "the default partition"
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-o", "%P %G"], capture_output=True, text=True, timeout=30, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise ConfigError(
            f"trainer.devices: auto needs sinfo to count the GPUs of {where} ({exc}); "
            "set trainer.devices=<GPUs per node>"
        ) from None
    count = parse_gpus_per_node(out, partition)
    if count is None:
        raise ConfigError(
            f"trainer.devices: auto, but sinfo reports no single GPU count for {where}; "
            "set trainer.devices=<GPUs per node> (or hydra.launcher.partition)"
        )
    return count


def gpus_per_node(accelerator: str, devices: object, partition: str | None) -> int | None:
    """--gpus-per-node: trainer.devices with accelerator gpu (auto: the partition's), else none."""
    if accelerator not in ("gpu", "cuda"):
        return None
    count = _devices(devices)
    return count if count is not None else _partition_gpus(partition)


def tasks_per_node(accelerator: str, devices: object, partition: str | None) -> int:
    """--ntasks-per-node: one task per device, as Lightning's SLURMEnvironment expects."""
    gpus = gpus_per_node(accelerator, devices, partition)
    if gpus is not None:
        return gpus
    count = _devices(devices) if accelerator == "cpu" else 1
    return count or 1


def cpus_per_task(num_workers: object) -> int:
    """--cpus-per-task: the data loader's worker processes plus the training process itself."""
    return int(num_workers or 0) + 1


def local_gpus(accelerator: str, devices: object) -> int:
    """GPUs submitit's local executor leaves visible to a job (it sets CUDA_VISIBLE_DEVICES): the
    trainer's devices, every GPU of this machine for devices=auto, none for accelerator cpu."""
    if accelerator == "cpu":
        return 0
    import torch

    available = torch.cuda.device_count()
    count = _devices(devices)
    return available if count is None else min(count, available)


def register_resolvers(guard: Callable[[], AbstractContextManager] = nullcontext) -> None:
    """``${medlm.slurm_*:...}`` and ``${medlm.local_gpus:...}`` for conf/hydra/launcher/.

    Hydra resolves the launcher config outside the task function, where a ConfigError would come
    out as a traceback; entry points pass ``guard=user_errors`` to make it one line and exit 2.
    """

    def guarded(fn: Callable) -> Callable:
        def resolve(*args: Any) -> Any:
            with guard():
                return fn(*args)

        return resolve

    resolvers = {
        "medlm.slurm_gpus_per_node": gpus_per_node,
        "medlm.slurm_tasks_per_node": tasks_per_node,
        "medlm.slurm_cpus_per_task": cpus_per_task,
        "medlm.local_gpus": local_gpus,
    }
    for name, fn in resolvers.items():
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, guarded(fn))
