"""The package as a user installs it: `python -m build` makes an sdist and, from it, a wheel that
carries the oneDNN kernels (built by scikit-build-core from CMakeLists.txt); the wheel, installed into
a fresh environment outside the checkout, trains a conv model with them. Without a C++ compiler the
package still builds and installs, and a run says once that its convolutions use XLA's forms.

Offline: the builds run --no-isolation from this environment (the `test` extra holds build,
scikit-build-core and oneDNN's headers), and the fresh environments install the wheel alone
(--no-deps) and borrow this environment's site-packages for its dependencies (a .pth file: the
checkout's editable install is not among them)."""

import json
import os
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

from vae_jax import onednn_conv
from vae_jax.onednn_build import LIB_NAME

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--train-limit", "100", "--test-limit", "20", "--epochs", "1", "--batch-size", "50", "--no-figures"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", onednn_conv.LIB_ENV)}
    return {**env, "JAX_PLATFORMS": "cpu", **extra}


def _build(args, out: Path, **env) -> None:
    cmd = [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), *args]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(**env), timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _fresh_env(folder: Path, wheel: Path) -> Path:
    """A new virtual environment at `folder` holding `wheel` alone; its dependencies are this one's."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(folder)], check=True)
    python = folder / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index"]
    subprocess.run([*pip, str(wheel)], check=True, env=_env())
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(site) / "borrowed.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return folder / "bin"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(sdist, wheel with the kernels, wheel built without a compiler), the wheels from the sdist."""
    out = tmp_path_factory.mktemp("dist")
    _build([str(ROOT)], out)  # the sdist, then the wheel from it
    (sdist,), (wheel,) = out.glob("*.tar.gz"), out.glob("*.whl")
    bare = tmp_path_factory.mktemp("dist-bare")
    _build(["--wheel", str(sdist)], bare, CXX="/nonexistent/c++")
    return sdist, wheel, next(bare.glob("*.whl"))


def test_the_sdist_holds_the_sources_and_the_wheel_the_built_kernels(built):
    sdist, wheel, bare = built
    with tarfile.open(sdist) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    assert {"CMakeLists.txt", "vae_jax/onednn_conv.cc", "vae_jax/onednn_build.py", "pyproject.toml"} <= names
    with zipfile.ZipFile(wheel) as z:
        files = set(z.namelist())
    assert f"vae_jax/{LIB_NAME}" in files
    assert "vae_jax/configs/digits.py" in files and "vae_torch_ref/models.py" in files
    assert not any(f.endswith(".cc") for f in files)  # the source stays in the sdist
    with zipfile.ZipFile(bare) as z:
        assert not any(n.endswith(".so") for n in z.namelist())


def _train(bin_dir: Path, workdir: Path):
    """`vae-jax train` of a conv model on the embedded digits, run from outside the checkout."""
    args = [str(bin_dir / "vae-jax"), "train", "--model", "conv_vae28", "--workdir", str(workdir), *TINY]
    done = subprocess.run(args, capture_output=True, text=True, cwd=workdir.parent, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr, json.loads((workdir / "config.json").read_text())


def test_the_installed_wheel_trains_a_conv_model_on_the_onednn_kernels(built, tmp_path):
    bin_dir = _fresh_env(tmp_path / "env", built[1])
    where = subprocess.run(
        [str(bin_dir / "python"), "-c", "import vae_jax.onednn_conv as o; print(o.lib_path())"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_env(),
        check=True,
    ).stdout.strip()
    assert Path(where).is_relative_to(tmp_path / "env") and Path(where).is_file(), where
    version = subprocess.run([str(bin_dir / "vae-jax"), "--version"], capture_output=True, text=True, env=_env())
    assert version.returncode == 0 and "0." in version.stdout + version.stderr
    console, config = _train(bin_dir, tmp_path / "run")
    assert config["conv_form"] == "onednn"
    assert "convolutions: onednn" in console


def test_without_a_compiler_the_package_installs_and_says_once_it_runs_the_xla_forms(built, tmp_path):
    bin_dir = _fresh_env(tmp_path / "env", built[2])
    console, config = _train(bin_dir, tmp_path / "run")
    assert config["conv_form"] == "xla"
    said = [line for line in console.splitlines() if "oneDNN" in line]
    assert len(said) == 1 and said[0].startswith("convolutions: xla") and LIB_NAME in said[0], said
