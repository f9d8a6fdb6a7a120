"""DDP for real: ``python -m medlm.cli.train ... trainer.strategy=ddp trainer.devices=2`` on CPU
(gloo),
as a user runs it. Lightning's subprocess launcher starts rank 1 by running the same command again
(with Hydra's run dir), so the test runs the command line in a subprocess and reads what each rank
reports through the callbacks of tests/cli/ddp_helpers.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medlm.data.shard_writer import prepare_shards
from tests.data.test_shards import make_docs, write_jsonl
from tests.helpers import mlflow_runs

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shard_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ddp_shards")
    src = write_jsonl(tmp / "docs.jsonl", make_docs(800, seed=11))
    prepare_shards(
        [str(src)], tmp / "out", shard_tokens=4000, val_tokens=1500, workers=1, progress=False
    )
    return tmp / "out"


def medlm_train(root: Path, overrides: list[str]) -> None:
    """``python -m medlm.cli.train`` with ``root`` as the project dir (mlruns/ there, the run in
    run/)."""
    root.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MEDLM_HOME"] = str(root)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO)])
    proc = subprocess.run(
        [sys.executable, "-m", "medlm.cli.train", *overrides, f"hydra.run.dir={root / 'run'}"],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]


def common(shard_dir: Path, report: Path) -> list[str]:
    return [
        "data=shards",
        f"data.path={shard_dir}",
        "data.block_size=32",
        "model.config.block_size=32",
        "trainer.accelerator=cpu",
        "trainer.max_epochs=1",
        "++trainer.limit_train_batches=5",
        "++trainer.limit_val_batches=2",
        "callbacks.samples=null",
        "trainer.enable_progress_bar=false",
        "+callbacks.record._target_=tests.cli.ddp_helpers.RecordBatches",
        f"+callbacks.record.path={report}",
    ]


def test_two_ddp_ranks_equal_one_process_with_twice_the_batch(
    tmp_path: Path, shard_dir: Path
) -> None:
    ddp, single = tmp_path / "ddp", tmp_path / "single"
    medlm_train(
        ddp,
        [
            *common(shard_dir, tmp_path / "report_ddp"),
            "trainer.devices=2",
            "trainer.strategy=ddp",
            "data.batch_size=3",
            "+callbacks.audit._target_=tests.cli.ddp_helpers.AuditWrites",
            f"+callbacks.audit.path={tmp_path / 'report_ddp'}",
            f"+callbacks.audit.watch={ddp}",
        ],
    )
    medlm_train(
        single,
        [*common(shard_dir, tmp_path / "report_single"), "trainer.devices=1", "data.batch_size=6"],
    )

    # the ranks read disjoint halves of every global batch, which is the single process's batch
    rank0, rank1 = (
        json.loads((tmp_path / "report_ddp" / f"batches_rank{r}.json").read_text()) for r in (0, 1)
    )
    one = json.loads((tmp_path / "report_single" / "batches_rank0.json").read_text())
    assert (
        [b["step"] for b in rank0]
        == [b["step"] for b in rank1]
        == [b["step"] for b in one]
        == list(range(5))
    )
    assert {b["rank"] for b in rank0} == {0} and {b["rank"] for b in rank1} == {1}
    for b0, b1, b in zip(rank0, rank1, one):
        assert len(b0["rows"]) == len(b1["rows"]) == 3
        assert not {tuple(r) for r in b0["rows"]} & {tuple(r) for r in b1["rows"]}
        assert b0["rows"] + b1["rows"] == b["rows"]
    seen = [tuple(r) for b in rank0 + rank1 for r in b["rows"]]
    assert len(seen) == len(set(seen)) == 30  # no window twice within the epoch

    # after 5 steps the weights agree with the single process's (float summation order aside)
    w_ddp = torch.load(ddp / "run" / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
    w_one = torch.load(single / "run" / "checkpoints" / "last.ckpt", weights_only=True)[
        "state_dict"
    ]
    assert w_ddp.keys() == w_one.keys()
    start = torch.load(ddp / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert start["global_step"] == 5
    for name in w_one:
        torch.testing.assert_close(w_ddp[name], w_one[name], rtol=1e-4, atol=1e-5, msg=name)

    # one MLflow run, each step logged once; only rank 0 wrote records and checkpoints
    [run] = mlflow_runs(ddp)
    assert [s for s, _ in run["metrics"]["train/loss"]] == list(range(5))
    assert run["params"]["trainer.strategy"] == "ddp"
    audits = {
        r: json.loads((tmp_path / "report_ddp" / f"writes_rank{r}.json").read_text())
        for r in (0, 1)
    }
    assert any(p.endswith("last.ckpt") for p in audits[0]["writes"]) and audits[0]["sqlite"], (
        "the audit saw rank 0 write nothing: it does not work"
    )
    records = (
        "mlruns",
        "checkpoints",
        "config.yaml",
        "overrides.yaml",
        "mlflow_run_id",
        "samples",
        "plots",
    )
    assert not [
        p
        for p in audits[1]["writes"]
        if any(part in Path(p).parts or Path(p).name == part for part in records)
    ], audits[1]
    assert audits[1]["sqlite"] == []


def test_a_ddp_run_resumes_mid_epoch_exactly(tmp_path: Path, shard_dir: Path) -> None:
    """Two ranks, dropout on, killed before step 10 (last checkpoint: step 8, mid-epoch)."""
    args = [
        "data=shards",
        f"data.path={shard_dir}",
        "data.block_size=32",
        "model.config.block_size=32",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "data.batch_size=3",
        "trainer.max_epochs=2",
        "++trainer.limit_train_batches=6",
        "++trainer.limit_val_batches=2",
        "trainer.enable_progress_bar=false",
        "+callbacks.model_checkpoint.every_n_train_steps=4",
        "model.config.resid_dropout=0.1",
        "callbacks.samples.max_new_tokens=4",
    ]
    medlm_train(tmp_path / "a", args)
    with pytest.raises(AssertionError, match="stopped at step 10"):
        medlm_train(
            tmp_path / "b",
            [
                *args,
                "+callbacks.stop._target_=tests.resume_helpers.StopAtStep",
                "+callbacks.stop.step=10",
            ],
        )
    medlm_train(tmp_path / "b", [*args, "ckpt_path=auto"])
    a = torch.load(tmp_path / "a" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(tmp_path / "b" / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 12
    for name, tensor in a["state_dict"].items():
        assert torch.equal(b["state_dict"][name], tensor), name
    [run_a], [run_b] = mlflow_runs(tmp_path / "a"), mlflow_runs(tmp_path / "b")
    for key in ("train/loss", "train/lr", "train/tokens_seen", "train/loss_epoch", "val/loss"):
        assert run_b["metrics"][key] == run_a["metrics"][key], key
