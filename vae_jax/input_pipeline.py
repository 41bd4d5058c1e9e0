"""The batches of an epoch: its shuffled order, cut into batches, read from a dataset's records
ahead of the train step (the Grain streaming pipeline, its worker processes watched), each JAX process
reading only its rows of every global batch. `Feed` hands the training loop the batches of one split.
"""

from __future__ import annotations

import collections
import gc
import multiprocessing
import os
import re
import signal
import threading
from multiprocessing import resource_tracker
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.config import Config
from vae_jax.datasets import ArraySource, Dataset
from vae_jax.errors import DataError, ReadError
from vae_jax.readers import read_records


def binarize(key: jax.Array, images) -> jax.Array:
    """Dynamic binarization: float32 0/1 drawn as Bernoulli(images) from `key`."""
    return jax.random.bernoulli(key, jnp.asarray(images)).astype(jnp.float32)


def epoch_permutation(key: jax.Array, num_examples: int, shuffle: bool = True) -> jax.Array:
    """The order of one epoch: a permutation drawn from `key`, or 0..n-1 when not shuffling."""
    if num_examples < 1:
        raise DataError(f"epoch of {num_examples} examples -- the dataset is empty")
    if not shuffle:
        return jnp.arange(num_examples, dtype=jnp.int32)
    return jax.random.permutation(key, num_examples).astype(jnp.int32)


def batch_slices(num_examples: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch; the last, partial batch is kept (drop_last=False)."""
    if num_examples < 1 or batch_size < 1:
        raise DataError(f"cannot batch {num_examples} examples by {batch_size} -- both must be positive")
    return [(start, min(start + batch_size, num_examples)) for start in range(0, num_examples, batch_size)]


# ------------------------------------------------------------------------------------------ streaming


def read_batch(source, indices) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of the records at `indices`, as stored (uint8 pixels)."""
    if isinstance(source, ArraySource):
        labels = source.labels[indices] if source.labels is not None else np.zeros(len(indices), np.int32)
        return source.images[indices], labels
    return read_records(source, indices, with_labels=True, threads=1)


class _ReadBatch:
    """Grain map transform: a batch's record indices -> (images, labels); picklable for workers."""

    def __init__(self, source):
        self.source = source

    def __call__(self, indices):
        return read_batch(self.source, indices)


def process_rows(batch_rows: int, process_index: int, process_count: int) -> slice:
    """The rows of a global batch that one JAX process reads: an equal contiguous share when the
    batch divides by the process count, else all of them (the batch is then replicated)."""
    if process_count == 1 or batch_rows % process_count:
        return slice(None)
    share = batch_rows // process_count
    return slice(process_index * share, (process_index + 1) * share)


def stream_batches(
    ds: Dataset,
    order,
    batch_size: int,
    *,
    start: int = 0,
    stop: int | None = None,
    rows=lambda n: slice(None),
    threads: int = 2,
    prefetch: int = 4,
    workers: int = 0,
):
    """Iterate the batches [start, stop) of one epoch of `ds` in `order`, as numpy (images, labels).

    A Grain pipeline over the random-access source: the batches' record indices are the elements,
    each read (decoded, cropped, resized: uint8) by one of `threads` threads -- or `workers` worker
    processes -- up to `prefetch` batches ahead of the consumer. Each JAX process reads only its
    rows of every global batch (`rows(batch_rows)`, see `process_rows`): sharding by process, the
    global batch unchanged.
    """
    import grain  # slow to import: only a streamed split needs it

    order = np.asarray(order)
    slices = batch_slices(len(order), batch_size)[start:stop]
    index_lists = [order[a:b][rows(b - a)] for a, b in slices]
    if not index_lists:
        return iter(())
    data = grain.MapDataset.source(index_lists).map(_ReadBatch(ds.source))
    data = data.to_iter_dataset(grain.ReadOptions(num_threads=max(1, threads), prefetch_buffer_size=prefetch))
    if workers > 0:
        from absl import flags  # absl comes with Grain (not a dependency of vae-jax itself)

        if not flags.FLAGS.is_parsed():  # Grain's worker processes read absl flags (defaults suffice)
            flags.FLAGS.mark_as_parsed()
        _start_quiet_resource_tracker()
        _watch_workers()
        data = data.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    return _worker_deaths_reported(iter(data))


# ---------------------------------------------------------------------------- the worker processes


_DEADLY = {9: "SIGKILL", 11: "SIGSEGV", 7: "SIGBUS"}  # how the out-of-memory killer or a crash ends a worker
_watch: dict[str, Any] = {}


def _watch_workers() -> None:
    """Once per process: a thread that checks this process's worker processes twice a second, and when
    one was killed (SIGKILL, as by the out-of-memory killer; SIGSEGV, SIGBUS) interrupts the main thread
    with a ReadError (signal SIGUSR1): Grain's iterator may otherwise wait forever for its batch."""
    if _watch or threading.current_thread() is not threading.main_thread():
        return

    def interrupted(signum, frame):
        code = _watch.pop("died", None)
        if code is not None:
            raise _worker_death(code)

    signal.signal(signal.SIGUSR1, interrupted)

    main = threading.main_thread().ident
    assert main is not None  # the main thread has started: this is it

    def watch():
        seen = set()
        while True:
            for child in list(multiprocessing.process._children):  # type: ignore[attr-defined]
                code = child.exitcode
                if code is not None and -code in _DEADLY and child.pid not in seen:
                    seen.add(child.pid)
                    _watch["died"] = code
                    signal.pthread_kill(main, signal.SIGUSR1)
            threading.Event().wait(0.5)

    _watch["thread"] = threading.Thread(target=watch, name="vae-jax worker watch", daemon=True)
    _watch["thread"].start()


def _worker_death(code: int) -> ReadError:
    how = f"killed by {signal_name(-code)}" if code < 0 else f"exit code {code}"
    return ReadError(
        f"a data worker process died ({how}; the out-of-memory killer sends SIGKILL)",
        "if memory is short, pass a lower --data-workers (0: threads, no worker processes)",
    )


def _worker_deaths_reported(batches):
    """The batches of a Grain iterator; a worker process that died (killed by the out-of-memory
    killer, say) is one ReadError. When the batches end early, the iterator is closed and its
    queues and semaphores released at once: a process that exits right after (os._exit) then
    leaves none behind for multiprocessing's resource tracker to report."""
    died, finished = None, False
    try:
        yield from batches
        finished = True
        return
    except RuntimeError as e:
        died = re.search(r"Worker process was terminated unexpectedly with exit code (-?\d+)", str(e))
        if not died:
            raise
    finally:
        if not finished:
            _close(batches)
        del batches
    # raised here, not in the except clause: the ReadError must not hold Grain's error, whose
    # traceback holds the iterator (and its semaphores)
    raise _worker_death(int(died.group(1)))


def _start_quiet_resource_tracker() -> None:
    """Start multiprocessing's resource tracker, before Grain's workers would, with its stderr on
    /dev/null. A worker that is killed leaves the shared memory it had filled; the tracker frees
    it when this process ends, and its report of that (a warning, sometimes tracebacks) would
    follow vae-jax's one line on the console. Nothing if the tracker already runs."""
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        resource_tracker.ensure_running()
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _close(batches) -> None:
    """Stop a Grain iterator's threads or worker processes now, and free what they held."""
    close = getattr(batches, "close", None)
    if close is not None:
        close()
    gc.collect()


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# ------------------------------------------------------------------------------------ a split's feed


# --data-mode auto keeps a split whole on the device up to this size (as stored, uint8): MNIST's
# 60000 images are 47 MB; CelebA's train split at 64x64 is 2.0 GB and streams.
MEMORY_BYTES = 64 * 2**20


class Placement(Protocol):
    """What puts a run's arrays on its devices (vae_jax.trainer.Trainer): one device, or a mesh."""

    def put(self, tree): ...

    def put_batch(self, arrays, rows: int): ...

    def batch_rows(self, rows: int) -> slice: ...


class Feed:
    """One split on its way to the step: whole on the device ('memory': the step gathers its batch by
    index) or streamed ('stream': a Grain pipeline decodes the next batches on the host and they are
    transferred while the step runs). --data-mode auto streams splits over MEMORY_BYTES.

    The training loop asks `batches` for the step's data arguments; `placement` (the Trainer) puts
    them on the devices, each process supplying its rows of every global batch."""

    def __init__(self, ds: Dataset, placement: Placement, config: Config):
        self.ds, self.placement, self.config = ds, placement, config
        self.streamed = config.data_mode == "stream" or (config.data_mode == "auto" and ds.nbytes > MEMORY_BYTES)
        self.arrays = None if self.streamed else placement.put(ds.stored_arrays())

    def host_batches(self, order, batch_size, start=0, stop=None):
        """(images, labels) numpy batches [start, stop) of `order`, this process's rows, as the step sees them."""
        rows = self.placement.batch_rows
        if self.streamed:
            return stream_batches(
                self.ds, order, batch_size, start=start, stop=stop, rows=rows, workers=self.config.data_workers
            )
        return (
            read_batch(self.ds.source, order[a:b][rows(b - a)])
            for a, b in batch_slices(len(order), batch_size)[start:stop]
        )

    def blocks(self, order, batch_size, start, stop, k: int):
        """(i, n, the step's data arguments) for batches [start, stop) of `order`: up to k consecutive
        full batches at a time (n > 1: Trainer.train_steps takes them in one dispatch), the data on the
        device; a batch of another size (the last), a lone full batch or streamed data one at a time
        (n = 1). An epoch uncut is k at a time, then the rest of its full batches in one dispatch."""
        if self.streamed or k == 1:
            for i, args in enumerate(self.batches(order, batch_size, start, stop), start):
                yield i, 1, args
            return
        assert self.arrays is not None  # put on the device when not streamed
        slices = batch_slices(len(order), batch_size)
        stop = len(slices) if stop is None else stop
        i = start
        while i < stop:
            n = 0
            while n < k and i + n < stop and slices[i + n][1] - slices[i + n][0] == batch_size:
                n += 1
            n = max(n, 1)
            idx = order[slices[i][0] : slices[i + n - 1][1]]
            yield i, n, (*self.arrays, *self.placement.put_batch((idx if n == 1 else idx.reshape(n, -1),), len(idx)))
            i += n

    def batches(self, order, batch_size, start=0, stop=None):
        """The step's data arguments for batches [start, stop) of `order` (a host int array): the split
        on the device and the batch's indices ('memory'), or the batch itself ('stream')."""
        place = self.placement
        slices = batch_slices(len(order), batch_size)[start:stop]
        if not self.streamed:
            assert self.arrays is not None  # put on the device when not streamed
            for a, b in slices:
                yield (*self.arrays, *place.put_batch((order[a:b][place.batch_rows(b - a)],), b - a))
            return
        # device_put is asynchronous: the next batch moves while a step runs
        ahead: collections.deque[Any] = collections.deque()
        for (a, b), batch in zip(slices, self.host_batches(order, batch_size, start, stop), strict=False):
            ahead.append(place.put_batch(batch, b - a))
            if len(ahead) > 1:
                yield ahead.popleft()
        while ahead:
            yield ahead.popleft()
