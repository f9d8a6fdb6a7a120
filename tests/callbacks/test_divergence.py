"""The divergence guard and the finite-only best checkpoint: on a scripted model whose losses are
known exactly, and end to end through medlm-train with a learning rate that makes it diverge."""

from __future__ import annotations

import math
import re
from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from medlm.callbacks.divergence import DivergenceGuard
from medlm.callbacks.finite_checkpoint import FiniteModelCheckpoint
from medlm.callbacks.samples import SampleGenerations
from medlm.errors import TrainingDiverged
from medlm.training import train
from tests.cli.test_train_command import QUICK, run_main
from tests.helpers import compose_train, mlflow_runs

NAN = float("nan")


class Scripted(L.LightningModule):
    """One weight ``w`` (1 at the start); the loss of a batch is ``w * x`` for its one value x, so
    the first step's loss is exactly x. ``val_losses[i]`` is the i-th validation's val/loss."""

    def __init__(
        self, xs: list[float], val_losses: list[float] = (), inf_grad_at_step: int | None = None
    ) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))
        self.xs, self.val_losses, self.inf_grad_at_step = xs, list(val_losses), inf_grad_at_step
        self.validations = 0

    def training_step(self, batch, batch_idx):
        return (self.w * batch[0]).sum()

    def on_after_backward(self) -> None:
        if self.trainer.global_step + 1 == self.inf_grad_at_step:
            self.w.grad.fill_(float("inf"))

    def validation_step(self, batch, batch_idx):
        self.log("val/loss", torch.tensor(self.val_losses[self.validations]))

    def on_validation_epoch_end(self) -> None:
        self.validations += 1

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.tensor(self.xs)), batch_size=1)

    def val_dataloader(self):
        return DataLoader(TensorDataset(torch.zeros(1)), batch_size=1)


def fit(model: Scripted, tmp_path: Path, callbacks: list, **trainer_kwargs) -> L.Trainer:
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        callbacks=callbacks,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=1 if model.val_losses else 0,
        **{"max_epochs": 1, **trainer_kwargs},
    )
    trainer.fit(model)
    return trainer


# ----------------------------------------------------------------------------------------------
# The guard on a scripted model


def test_nan_loss_stops_before_the_optimizer_step_naming_the_last_finite_loss(
    tmp_path: Path,
) -> None:
    model = Scripted([10.83, NAN, 5.0])
    with pytest.raises(TrainingDiverged) as err:
        fit(model, tmp_path, [DivergenceGuard()])
    assert (
        str(err.value) == "training diverged at step 2: loss nan (last finite loss 10.83 at step 1)"
    )
    assert model.trainer.global_step == 1  # step 2's optimizer step never ran
    assert math.isfinite(model.w.item())  # the NaN gradient never reached the weight


def test_with_gradient_accumulation_a_step_is_its_micro_batches(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged) as err:
        fit(
            Scripted([1.0, 2.0, 3.0, NAN]), tmp_path, [DivergenceGuard()], accumulate_grad_batches=2
        )
    # step 1 is the mean of its two micro-batch losses, not the loss Lightning divided by 2
    assert (
        str(err.value) == "training diverged at step 2: loss nan (last finite loss 1.5 at step 1)"
    )


def test_infinite_gradient_with_a_finite_loss(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged) as err:
        fit(Scripted([1.0, 2.0, 3.0], inf_grad_at_step=2), tmp_path, [DivergenceGuard()])
    # w = 1 - 0.01 * 1 after step 1, so step 2's loss is 0.99 * 2
    assert str(err.value) == (
        "training diverged at step 2: gradient norm inf with loss 1.98 "
        "(last finite loss 1 at step 1)"
    )
    # without the gradient check the infinite step is taken, and the next loss says so
    with pytest.raises(TrainingDiverged) as err:
        off = Scripted([1.0, 2.0, 3.0], inf_grad_at_step=2)
        fit(off, tmp_path / "off", [DivergenceGuard(check_grad_norm=False)])
    assert (
        str(err.value) == "training diverged at step 3: loss -inf (last finite loss 1.98 at step 2)"
    )


def test_nan_from_the_first_step(tmp_path: Path) -> None:
    with pytest.raises(TrainingDiverged, match=r"at step 1: loss inf \(no finite loss before it\)"):
        fit(Scripted([float("inf"), 1.0]), tmp_path, [DivergenceGuard()])


def test_finite_run_is_untouched(tmp_path: Path) -> None:
    guard = DivergenceGuard()
    model = Scripted([1.0, 2.0, 3.0, 4.0])
    fit(model, tmp_path, [guard], max_epochs=2)
    assert model.trainer.global_step == 8
    # the last step: w = 1 - 0.01 * (1+2+3+4 + 1+2+3) = 0.84, times x = 4
    assert guard.last_finite[0] == 8 and guard.last_finite[1] == pytest.approx(0.84 * 4)
    restored = DivergenceGuard()
    restored.load_state_dict(guard.state_dict())  # a resumed run names the same last good step
    assert restored.last_finite == guard.last_finite


def test_nan_validation_loss_stops_before_its_checkpoint(tmp_path: Path) -> None:
    ckpt = FiniteModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", save_last=True)
    with pytest.raises(TrainingDiverged) as err:
        fit(Scripted([1.0, 1.0], val_losses=[2.0, NAN]), tmp_path, [DivergenceGuard(), ckpt],
            max_epochs=3)  # fmt: skip
    assert str(err.value) == (
        "training diverged at step 4: val/loss nan at validation (last finite loss 0.97 at step 4)"
    )
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "epoch=0-step=2.ckpt",
        "last.ckpt",
    ]
    assert torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=True)["global_step"] == 2
    assert ckpt.best_model_score == 2.0


# ----------------------------------------------------------------------------------------------
# The best checkpoint is never a non-finite one (the guard off)


@pytest.mark.parametrize(
    "val_losses, best",
    [([NAN, NAN], None), ([3.0, NAN, 1.0], 1.0), ([NAN, 2.0, float("inf")], 2.0)],
)
def test_non_finite_validation_loss_is_never_the_best(
    val_losses: list[float], best: float | None, tmp_path: Path
) -> None:
    ckpt = FiniteModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss", save_top_k=2)
    fit(Scripted([1.0], val_losses=val_losses), tmp_path, [ckpt], max_epochs=len(val_losses))
    if best is None:
        assert ckpt.best_model_path == "" and ckpt.best_model_score is None
    else:
        assert ckpt.best_model_score == best and Path(ckpt.best_model_path).is_file()
    assert all(math.isfinite(v) for v in ckpt.best_k_models.values())


def test_lightning_alone_keeps_a_nan_checkpoint_as_best(tmp_path: Path) -> None:
    """Why FiniteModelCheckpoint exists: Lightning keeps the first checkpoints unconditionally and
    scores a NaN as inf."""
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/loss")
    fit(Scripted([1.0], val_losses=[NAN, NAN]), tmp_path, [ckpt], max_epochs=2)
    assert ckpt.best_model_path and ckpt.best_model_score == float("inf")


def test_samples_are_skipped_with_a_warning_when_the_model_has_diverged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from medlm.data.tokenizer import load_tokenizer
    from tests.cli.test_generate import tiny_gpt2

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = tiny_gpt2()
            with torch.no_grad():
                self.net.lm_head.weight.fill_(NAN)

    class DataModule:
        tokenizer = load_tokenizer("gpt2")

        def sample_prompts(self, n: int) -> list[str]:
            return ["Is aspirin safe?"] * n

    class Trainer:
        sanity_checking, is_global_zero, datamodule = False, True, DataModule()
        global_step, current_epoch, default_root_dir = 7, 0, "/nonexistent"

    callback = SampleGenerations(num_prompts=2, max_new_tokens=4)
    callback.on_validation_end(Trainer(), Module())
    assert callback.history == []
    assert "samples: none at step 7: the model gave nan next-token logits" in caplog.text


# ----------------------------------------------------------------------------------------------
# End to end: optim.lr=1e6 diverges at step 2


DIVERGING = [
    *QUICK,
    "optim.lr=1e6",
    "callbacks.samples.max_new_tokens=4",
    "+trainer.val_check_interval=1",  # a validation, and so a checkpoint, after every step
    "+callbacks.model_checkpoint.save_on_train_epoch_end=false",
]


@pytest.mark.usefixtures("shared_data_dir")
def test_diverging_run_is_one_line_and_keeps_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    argv = [a for a in DIVERGING if a != "callbacks.samples=null"]  # samples on, as by default
    code, err = run_main(argv, tmp_path, monkeypatch, capsys)
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    assert re.fullmatch(
        r"error: training diverged at step 2: gradient norm nan with loss \S+ "
        r"\(last finite loss 10\.\d+ at step 1\)",
        errors[0],
    ), errors[0]
    [ckpt_dir] = (tmp_path / "logs").glob("quickstart/runs/*/checkpoints")
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["epoch000-step000001.ckpt", "last.ckpt"]
    last = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert last["global_step"] == 1
    assert all(
        torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point()
    )
    [state] = [v for k, v in last["callbacks"].items() if k.startswith("ModelCheckpoint{")]
    assert math.isfinite(float(state["best_model_score"]))


@pytest.mark.usefixtures("shared_data_dir")
def test_guard_off_a_nan_run_has_no_best_and_train_returns_none(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    overrides = [a for a in QUICK if a != "callbacks.samples=null"]
    cfg = compose_train(
        tmp_path,
        [
            *overrides,
            "optim.lr=1e6",
            "callbacks.divergence=null",
            "callbacks.samples.max_new_tokens=4",
        ],
    )
    assert train(cfg) is None  # the only validation, after step 3, is NaN: there is no best
    assert not list((tmp_path / "run" / "checkpoints").glob("epoch*.ckpt"))
    [run] = mlflow_runs(tmp_path)
    assert run["tags"]["best_checkpoint"] == "none"
    assert "val/loss is nan at step 3: this checkpoint is not kept as a best one" in caplog.text
    assert "samples: none at step 3" in caplog.text  # sampling did not crash


def test_finite_checkpoint_keeps_model_checkpoints_state_key(tmp_path: Path) -> None:
    """Checkpoints written by a plain ModelCheckpoint (runs from before the guard) resume with
    their best and last records: Lightning matches a callback's state by this key."""
    settings = {"dirpath": tmp_path, "monitor": "val/loss", "mode": "min", "save_last": True}
    assert FiniteModelCheckpoint(**settings).state_key == ModelCheckpoint(**settings).state_key
