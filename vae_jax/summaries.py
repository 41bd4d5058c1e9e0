"""TensorBoard event files beside metrics.jsonl (`<workdir>/tensorboard/`), as the Flax examples write
them: the train/test ELBO terms per epoch, the training loss every --log-every steps, steps per second.

    tensorboard --logdir runs/          # every run under runs/, one curve each

Only process 0 of a run writes them. tensorboardX is imported when a writer is made.
"""

from __future__ import annotations

from pathlib import Path


class Summaries:
    """Scalars for TensorBoard; `enabled=False` (another process than 0, or --no-tensorboard) writes nothing."""

    def __init__(self, workdir, *, enabled: bool = True):
        self._writer = None
        if enabled:
            from tensorboardX import SummaryWriter

            self._writer = SummaryWriter(str(Path(workdir) / "tensorboard"), flush_secs=30)

    def scalars(self, step: int, values: dict) -> None:
        """`values` ({tag: number}) at optimizer step `step`."""
        if self._writer is None:
            return
        for tag, value in values.items():
            self._writer.add_scalar(tag, float(value), int(step))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
