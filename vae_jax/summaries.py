"""TensorBoard event files beside metrics.jsonl (`<workdir>/tensorboard/`), as the Flax examples write
them: the train/test ELBO terms per epoch, the training loss every --log-every steps, steps per second,
per-epoch pictures (test images above their reconstructions, samples) and the run's options as
hyperparameters (TensorBoard's HParams tab), in the run's own event file.

    tensorboard --logdir runs/          # every run under runs/, one curve each

Only process 0 of a run writes them. tensorboardX is imported when a writer is made (it is slow to
import, and the other processes and --no-tensorboard need none).
"""

from __future__ import annotations

import time
from pathlib import Path


class Summaries:
    """Scalars for TensorBoard; `enabled=False` (another process than 0, or --no-tensorboard) writes nothing."""

    def __init__(self, workdir, *, enabled: bool = True):
        self._writer = None
        self._last_step_loss: tuple[int, float] | None = None  # (step, time) of the last train/step_loss
        if enabled:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=30)

    def scalars(self, step: int, values: dict) -> None:
        """`values` ({tag: number}) at optimizer step `step`."""
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), int(step))

    def step_loss(self, step: int, value: float) -> None:
        """train/step_loss at optimizer step `step`, and train/steps_per_sec since the one before."""
        now, last = time.perf_counter(), self._last_step_loss
        rate = {} if last is None else {"train/steps_per_sec": (step - last[0]) / (now - last[1])}
        self.scalars(step, {"train/step_loss": value, **rate})
        self._last_step_loss = (step, now)

    def hparams(self, options: dict, metrics: tuple[str, ...]) -> None:
        """The run's options (numbers, strings, flags; others as text) for the HParams tab, with the
        scalar tags it compares runs by."""
        if self._writer is None:
            return
        from tensorboardX.summary import hparams

        values = {k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in options.items()}
        for summary in hparams(values, dict.fromkeys(metrics, 0.0)):
            self._writer.file_writer.add_summary(summary)

    def images(self, step: int, pictures: dict) -> None:
        """`pictures` ({tag: HWC float array in [0, 1]}) at optimizer step `step`."""
        if self._writer is None:
            return
        for tag, picture in pictures.items():
            self._writer.add_image(tag, picture, int(step), dataformats="HWC")

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
