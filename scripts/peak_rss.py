"""Run a command and print its peak resident memory (the largest process's ru_maxrss).

    python scripts/peak_rss.py -- vae-jax train --dataset mnist --data-dir ../shared/data --epochs 10 --workdir runs/m
    python scripts/peak_rss.py --limit-mb 1536 -- vae-jax eval --workdir runs/m --data-dir ../shared/data --iwae-k 5000

Exit code: the command's; 1 when --limit-mb is given and exceeded.
"""

import argparse
import resource
import subprocess
import sys
import time


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit-mb", type=float, default=None, help="fail when the peak is above this")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not cmd:
        ap.error("give the command to measure after --")
    t0 = time.perf_counter()
    code = subprocess.call(cmd)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB
    verdict = "" if a.limit_mb is None else (" (within" if peak <= a.limit_mb else " (ABOVE") + f" {a.limit_mb:.0f} MB)"
    print(f"peak RSS {peak:.0f} MB{verdict}, wall {wall:.1f} s, exit {code}: {' '.join(cmd)}", file=sys.stderr)
    if code == 0 and a.limit_mb is not None and peak > a.limit_mb:
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
