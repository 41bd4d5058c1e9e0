"""Files written safely: atomically, never through a link, never over something of the user's; the
writer lock of a run directory.

The rules (as orbax's checkpoints and git's lock files): a file appears complete or not at all; an
interrupted write leaves the old state; nothing is created by following a link; one writer per run.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path

from vae_jax.errors import ConfigError


def atomic_write(path, data, *, replace: bool = True) -> Path:
    """Write `data` (str or bytes) to `path` all at once: into a new temporary file in the same
    folder (opened O_EXCL | O_NOFOLLOW: never an existing file, never through a link), flushed to
    disk, then renamed into place. An interrupted write leaves the old state (and no partial file
    under `path`). replace=False: refuse when anything, even a dangling link, is at `path`
    (the rename is a hard link, which never replaces)."""
    path = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path, follow_symlinks=False)
            except FileExistsError:
                raise ConfigError(f"{path} already exists -- choose another path; nothing was overwritten") from None
            os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself on disk
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    return path


def json_text(obj, indent: int | None = 2) -> str:
    """Standard JSON of a record (what vae-jax writes to files and prints): a non-finite float becomes
    null (no NaN or Infinity tokens, which other readers reject); numpy scalars and paths as values."""

    def plain(o):
        if isinstance(o, dict):
            return {k: plain(v) for k, v in o.items()}
        if isinstance(o, (list, tuple)):
            return [plain(v) for v in o]
        if hasattr(o, "item") and getattr(o, "shape", None) == ():  # a numpy or JAX scalar
            o = o.item()
        if isinstance(o, float) and not math.isfinite(o):
            return None
        return str(o) if isinstance(o, Path) else o

    return json.dumps(plain(obj), indent=indent, allow_nan=False)


def sha256_file(path) -> str:
    """The hex sha256 of a file's bytes, read in blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


CHECKSUMS = ".vae-jax-sha256"  # in a folder written whole (a checkpoint's step): {relative path: sha256}


def write_checksums(folder) -> None:
    """CHECKSUMS in `folder`: the sha256 of every file under it, written atomically once it is complete."""
    folder = Path(folder)
    sums = {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    sums.pop(CHECKSUMS, None)
    atomic_write(folder / CHECKSUMS, json.dumps(sums, indent=1) + "\n")


def checksum_failure(folder) -> str | None:
    """What in `folder` differs from its CHECKSUMS ('the sha256 of X differs', 'X is missing'), or None
    when every file matches -- or when the folder has none (written before checksums were)."""
    folder = Path(folder)
    try:
        sums = json.loads((folder / CHECKSUMS).read_text())
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError, ValueError):
        return f"its {CHECKSUMS} is damaged"
    if not isinstance(sums, dict):
        return f"its {CHECKSUMS} is damaged"
    for name, want in sums.items():
        try:
            if sha256_file(folder / name) != want:
                return f"the sha256 of {name} differs from the one written with it"
        except OSError:
            return f"{name} is missing"
    return None


_LOCKS: dict[str, int] = {}  # run directory -> the open descriptor whose flock this process holds


def lock_run_dir(folder: Path) -> None:
    """Take the run directory's writer lock for the rest of this process (flock on the directory
    itself: no lock file to leave behind; the OS releases it when the process dies). A second writer
    gets one line naming the process that holds it. Readers (eval, plot, export) never take it."""
    key = os.path.realpath(folder)
    if key in _LOCKS:
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        holder = _flock_holder(folder)
        raise ConfigError(
            f"workdir {folder} is in use by another vae-jax process"
            f"{f' (pid {holder})' if holder else ''} -- wait for it to finish, stop it, or choose "
            "another --workdir"
        ) from None
    _LOCKS[key] = fd


def unlock_run_dir(folder: Path) -> None:
    fd = _LOCKS.pop(os.path.realpath(folder), None)
    if fd is not None:
        os.close(fd)


@contextlib.contextmanager
def writer_lock_if_inside(out: Path, workdir: Path):
    """Writing inside a run directory (plot's default <workdir>/plots) takes the run's writer lock for
    the time of the write: never beside a live `train` of that run, which owns the folder."""
    real, run = os.path.realpath(out), os.path.realpath(workdir)
    if not real.startswith(run.rstrip(os.sep) + os.sep):
        yield
        return
    lock_run_dir(workdir)
    try:
        yield
    finally:
        unlock_run_dir(workdir)


def _flock_holder(folder: Path):
    """The pid holding a flock on `folder`, from /proc/locks (Linux), or None."""
    try:
        st = os.stat(folder)
        dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
        for line in Path("/proc/locks").read_text().splitlines():
            fields = line.split()
            if "FLOCK" in fields and dev in fields:
                return int(fields[fields.index(dev) - 1])
    except (OSError, ValueError, IndexError):
        pass
    return None


# The folders vae-jax owns inside a run directory: it replaces or prunes what is in them (old checkpoints,
# event files, figures), so nothing of the user's may be written there.
OWNED_FOLDERS = ("checkpoints", "tensorboard", "figures", "plots")


def check_outside_owned(path, what: str) -> None:
    """ConfigError when `path` lies inside a folder a run directory's vae-jax owns (OWNED_FOLDERS of a
    folder that holds config.json): what is written there would be deleted with an old checkpoint or
    a replaced folder of figures."""
    real = Path(os.path.realpath(path))
    for folder in real.parents:
        run = folder.parent
        if folder.name in OWNED_FOLDERS and (run / "config.json").is_file():
            raise ConfigError(
                f"{what} {path} is inside {folder.name}/ of the run {run}, a folder vae-jax owns (it deletes "
                f"old checkpoints and replaces figures there) -- choose a path outside it, e.g. beside {run}"
            )


MANIFEST = ".vae-jax-files"  # in a folder vae-jax writes whole (figures, plots): the names it wrote
# The chapter's figures (vae_jax.evaluate.make_figures): owned by name in folders written before manifests.
FIGURE_FILES = frozenset(
    ("reconstruction.png", "samples.png", "latent.png", "manifold.png", "loss_curves.png")
    + ("interpolation_linear.png", "interpolation_spherical.png")
)


def foreign_entries(folder) -> list[str]:
    """The names in `folder` that vae-jax did not write there: every entry but those its manifest lists
    (without a manifest, as folders of figures written before it: the chapter's figure names).
    [] for a folder that is vae-jax's to replace."""
    folder = Path(folder)
    try:
        ours = set((folder / MANIFEST).read_text().split("\n")) if (folder / MANIFEST).exists() else FIGURE_FILES
    except (OSError, UnicodeDecodeError):
        ours = set()
    return sorted(p.name for p in folder.iterdir() if p.name != MANIFEST and p.name not in ours)


def check_replaceable(folder, what: str) -> None:
    """ConfigError unless `folder` holds only what vae-jax wrote there (its manifest says so)."""
    folder = Path(folder)
    if folder.is_symlink() or not folder.is_dir():
        raise ConfigError(f"{what} {folder} exists and is not a folder -- remove it or choose another path")
    other = foreign_entries(folder)
    if other:
        raise ConfigError(
            f"{what} {folder} holds {other[0]!r}{f' and {len(other) - 1} more' if len(other) > 1 else ''}, "
            "which vae-jax did not write -- move it away or choose another path; nothing was deleted"
        )


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(path, *, replace: bool = False, what: str = "folder"):
    """Yield a new temporary folder beside `path`; when the block completes it becomes `path`, with a
    manifest of what it holds. replace=True: an existing folder at `path` is swapped out and removed
    after the swap -- only one that holds nothing but what vae-jax wrote (check_replaceable, before
    the block and again before the swap). An interrupted block leaves no trace and `path` as it was."""
    path = Path(path)
    if os.path.lexists(path):
        if not replace:
            raise ConfigError(f"{path} already exists -- choose another path (or --force); nothing was overwritten")
        check_replaceable(path, what)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.tmp-"))
    os.chmod(tmp, 0o777 & ~_umask())  # a folder as mkdir makes it (mkdtemp's are private)
    try:
        yield tmp
        atomic_write(tmp / MANIFEST, "".join(f"{p.name}\n" for p in sorted(tmp.iterdir())))
        old = None
        if os.path.lexists(path):
            check_replaceable(path, what)
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old-"))
            os.replace(path, old / path.name)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
