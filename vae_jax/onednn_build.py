"""Where the oneDNN kernels' build finds its inputs: the XLA FFI headers (jaxlib's), oneDNN's headers
and its library libdnnl.so.3, looked up in the installed distributions' file lists (oneDNN's wheels put
them in the environment's include/ and lib/, not in site-packages).

    python -m vae_jax.onednn_build            # says where each is, or what is missing
    python vae_jax/onednn_build.py --cmake    # the same as a CMake list (CMakeLists.txt runs this)

The build itself is CMakeLists.txt, run by the build backend (scikit-build-core) on `pip install`:
oneDNN 3.2 with GNU OpenMP threading (libgomp, the runtime PyTorch's CPU builds use), from the
onednn-devel-cpu-gomp build requirement. This file runs as a plain script in the build environment,
so it imports nothing from vae_jax.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import sys
from pathlib import Path

LIB_NAME = "libvae_onednn_conv.so"
# oneDNN's library, and its headers (pyproject.toml: a dependency and a build requirement).
LIB_DIST, DEVEL_DIST = "onednn-cpu-gomp", "onednn-devel-cpu-gomp"


class NotFoundError(LookupError):
    """An input of the build is not installed. args: (what is missing and how to get it,)."""


def installed_file(dist_name: str, suffix: str) -> Path:
    """The installed file of distribution `dist_name` whose path ends with `suffix`."""
    try:
        dist = md.distribution(dist_name)
    except md.PackageNotFoundError:
        raise NotFoundError(f"{dist_name} is not installed") from None
    for f in dist.files or ():
        if ("/" + str(f).replace(os.sep, "/")).endswith("/" + suffix):
            return Path(str(dist.locate_file(f))).resolve()
    raise NotFoundError(f"{dist_name} {dist.version} has no file ending in {suffix}")


def locate() -> dict[str, Path]:
    """Where the FFI headers, oneDNN's headers and libdnnl.so.3 are. Raises NotFoundError."""
    try:
        import jax.ffi  # here: a missing jax is a NotFoundError (this file runs as a plain script)
    except ImportError:
        raise NotFoundError("jax is not installed") from None
    dnnl_hpp = installed_file(DEVEL_DIST, "include/oneapi/dnnl/dnnl.hpp")
    libdnnl = installed_file(LIB_DIST, "libdnnl.so.3")
    return {"xla_ffi_include": Path(jax.ffi.include_dir()), "dnnl_include": dnnl_hpp.parents[2], "libdnnl": libdnnl}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cmake", action="store_true", help="print the three paths as a CMake list")
    a = p.parse_args(argv)
    try:
        where = locate()
    except NotFoundError as e:
        print(e.args[0], file=sys.stderr)
        return 1
    if a.cmake:
        print(";".join(str(v) for v in where.values()))
    else:
        for k, v in where.items():
            print(f"{k}: {v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
