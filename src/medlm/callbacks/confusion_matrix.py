"""The confusion matrix of every validation and test epoch of a classifier, as a CSV and a heat map,
saved in the run folder and logged to MLflow. Does nothing for a module that keeps no matrices."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L

from medlm.utils.plots import write_confusion_matrix
from medlm.utils.tracking import log_artifact


class ConfusionMatrixPlot(L.Callback):
    """Draws ``pl_module.confusion_matrices[stage]`` (counts, when), which the module sets at the
    end
    of each val/test epoch (:class:`~medlm.modules.classifier.SequenceClassification`)."""

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._draw(trainer, pl_module, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._draw(trainer, pl_module, "test")

    def _draw(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        found = getattr(pl_module, "confusion_matrices", {}).pop(stage, None)
        if found is None or not trainer.is_global_zero:
            return
        matrix, when = found
        name, title = f"{stage}_{when}", f"{stage}, {when.replace('_', ', ')}"
        stem = Path(trainer.default_root_dir) / "confusion" / name
        for path in write_confusion_matrix(matrix.tolist(), pl_module.label_names, stem, title):
            log_artifact(trainer.loggers, path, "confusion")
