"""The environment variables JAX and XLA read, checked before JAX loads: a value they refuse is one
ConfigError naming the variable and what it accepts, not JAX's ValueError at import or XLA's fatal
log line (which ends the process with exit code 1, past any handler). Imports nothing heavy."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from vae_jax.errors import ConfigError

# XLA_FLAGS that need no probe (the ones the docs and tests set): a number of host devices.
_PLAIN_XLA_FLAGS = re.compile(r"(\s*--xla_force_host_platform_device_count=[1-9][0-9]*\s*)*")
_JAX_FLAG_VALUE = re.compile(r'Invalid value "(.*)" for JAX flag (\w+)')


def _probe(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


def check_xla_flags() -> None:
    """ConfigError when XLA would refuse XLA_FLAGS (an unknown flag, a value it cannot parse): told by
    a child process that starts the backend (about a second), run only for flags beyond the plain ones."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _PLAIN_XLA_FLAGS.fullmatch(flags):
        return
    r = _probe("import jax; jax.devices()", dict(os.environ))
    if r.returncode == 0 or "flag" not in r.stderr.lower():  # fine, or another failure: the command says it
        return
    logged = [
        line.split("] ", 1)[1] for line in r.stderr.splitlines() if re.match(r"[EF]\d{4} ", line) and "] " in line
    ]
    said = logged[0] if logged else (r.stderr.strip().splitlines() or ["refused"])[-1]
    raise ConfigError(
        f"XLA_FLAGS={flags.strip()!r} is refused by XLA ({said.strip()[:160]}) -- fix or remove that flag, or unset "
        "XLA_FLAGS"
    )


def jax_flag_line(e: BaseException) -> str | None:
    """For JAX's `Invalid value "X" for JAX flag NAME` (an environment variable NAME in capitals, read
    when JAX is imported): one line naming the variable and the values JAX accepts, else None."""
    m = _JAX_FLAG_VALUE.search(str(e)) if isinstance(e, ValueError) else None
    if not m:
        return None
    value, flag = m.groups()
    var = flag.upper()
    env = {k: v for k, v in os.environ.items() if k != var}
    r = _probe(f"import jax\ntry: jax.config.update({flag!r}, '?')\nexcept ValueError as e: print(e)", env)
    accepted = re.search(r"in \[(.*?)\]", r.stdout)
    values = accepted.group(1).replace("'", "") if accepted else "see JAX's documentation of " + flag
    return f"{var}={value} is not a value JAX accepts -- unset {var} or set it to one of: {values}"
