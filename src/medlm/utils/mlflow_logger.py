"""Lightning's MLflow logger, made safe to resume: no metric is logged twice at one step.

A job killed after its last checkpoint has logged steps that the resumed run trains again. MLflow
cannot delete metric points, so the resumed run skips a metric at a step the run already holds
(the steps the killed job reached): its step axis continues without a repeat or a gap. With exact
resume the skipped values equal the ones kept. The steps already logged are read once, when this
process first logs; in a new run there are none.
"""

from __future__ import annotations

from collections.abc import Mapping

from lightning.fabric.utilities.logger import _add_prefix
from lightning.fabric.utilities.rank_zero import rank_zero_only
from lightning.pytorch.loggers import MLFlowLogger as _LightningMLFlowLogger


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
