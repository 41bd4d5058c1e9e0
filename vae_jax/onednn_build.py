"""Builds csrc/onednn_conv.cc into the shared library that vae_jax.onednn_conv loads.

    pip install -e ".[onednn]"        # oneDNN's library and headers from PyPI (see pyproject.toml)
    python -m vae_jax.onednn_build    # -> csrc/build/libvae_onednn_conv.so   (or: make onednn)

Needs g++ (C++17). Finds the XLA FFI headers with jax.ffi.include_dir() and oneDNN's headers and
libdnnl.so.3 through the installed distributions' file lists (the wheels put them in the
environment's include/ and lib/, not in site-packages), prints where they are, and links with an
rpath to that lib/ so nothing has to be on LD_LIBRARY_PATH. The wheels are oneDNN 3.2 with GNU
OpenMP threading (libgomp), the runtime PyTorch's CPU builds use.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "csrc" / "onednn_conv.cc"
LIB_NAME = "libvae_onednn_conv.so"
DEFAULT_OUT = REPO / "csrc" / "build" / LIB_NAME
# The distributions of pyproject's `onednn` extra: the library, and its headers.
LIB_DIST, DEVEL_DIST = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"


def _find(dist_name: str, suffix: str) -> Path:
    """The installed file of distribution `dist_name` whose path ends with `suffix`."""
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise SystemExit(
            f"{dist_name} is not installed: pip install -e '.[onednn]' (or pip install "
            f"{LIB_DIST} {DEVEL_DIST} at the versions pyproject.toml pins)"
        ) from None
    for f in dist.files or ():
        if ("/" + str(f).replace(os.sep, "/")).endswith("/" + suffix):
            return Path(str(dist.locate_file(f))).resolve()
    raise SystemExit(f"{dist_name} {dist.version} has no file ending in {suffix}")


def locate() -> dict[str, Path]:
    """Where the FFI headers, oneDNN's headers and libdnnl.so.3 are."""
    import jax.ffi

    dnnl_hpp = _find(DEVEL_DIST, "include/oneapi/dnnl/dnnl.hpp")
    libdnnl = _find(LIB_DIST, "libdnnl.so.3")
    return {"xla_ffi_include": Path(jax.ffi.include_dir()), "dnnl_include": dnnl_hpp.parents[2], "libdnnl": libdnnl}


def build(out: Path = DEFAULT_OUT, cxx: str = "g++", verbose: bool = True) -> Path:
    where = locate()
    out.parent.mkdir(parents=True, exist_ok=True)
    libdir = where["libdnnl"].parent
    # Built under a temporary name, then renamed: a process that has the old library loaded keeps
    # its (unlinked) copy instead of seeing the file rewritten under it.
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    cmd = [
        cxx,
        "-O2",
        "-std=c++17",
        "-shared",
        "-fPIC",
        "-isystem",
        str(where["xla_ffi_include"]),
        "-isystem",
        str(where["dnnl_include"]),
        str(SOURCE),
        "-o",
        str(tmp),
        str(where["libdnnl"]),
        f"-Wl,-rpath,{libdir}",
    ]
    if verbose:
        for k, v in where.items():
            print(f"{k}: {v}")
        print(shlex.join(cmd))
    try:
        subprocess.run(cmd, check=True)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    if verbose:
        print(f"built {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output library (default {DEFAULT_OUT})")
    p.add_argument("--cxx", default=os.environ.get("CXX", "g++"))
    a = p.parse_args(argv)
    build(a.out, a.cxx)
    return 0


if __name__ == "__main__":
    sys.exit(main())
