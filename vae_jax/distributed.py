"""Several JAX processes as one run (several hosts, or several processes on one host).

`initialize` wraps `jax.distributed.initialize`: the coordinator's address, the number of processes
and this process's index, or nothing where JAX reads them from the cluster's environment (SLURM,
Open MPI, TPU pods). It must run before anything else touches JAX. On CPU the processes exchange
gradients through gloo (`jax_cpu_collectives_implementation`).

Failures are bounded: a process whose peer died gets an error from the next collective (gloo:
"Connection closed by peer") and the console script exits at once with one line (it skips JAX's
shutdown barrier, which would wait for the dead peer); a peer that stops answering is declared dead
after HEARTBEAT_TIMEOUT_S, and a process that never joins after INIT_TIMEOUT_S.
"""

from __future__ import annotations

import os

from vae_jax.errors import ConfigError

INIT_TIMEOUT_S = 120  # every process must join within this
HEARTBEAT_TIMEOUT_S = 30  # a silent peer is dead after this
SHUTDOWN_TIMEOUT_S = 300  # at a normal exit, the slowest process may finish this much later


def cluster_detected() -> bool:
    """A scheduler launched several tasks of this command (SLURM's srun, Open MPI's mpirun)."""
    for var in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
        try:
            if int(os.environ.get(var, "1")) > 1:
                return True
        except ValueError:
            pass
    return False


def initialize(
    coordinator_address: str | None = None, num_processes: int | None = None, process_id: int | None = None
) -> bool:
    """Join a multi-process run; returns False (and does nothing) for a single-process run.

    Give all three arguments, or none of them on a cluster that JAX detects (see cluster_detected).
    """
    import jax

    given = [v is not None for v in (coordinator_address, num_processes, process_id)]
    if any(given) and not all(given):
        raise ConfigError(
            "a multi-process run needs --coordinator-address HOST:PORT, --num-processes N and "
            "--process-id I together (or none of them under SLURM/Open MPI)"
        )
    if not any(given) and not cluster_detected():
        return False
    if all(given):
        assert coordinator_address is not None and num_processes is not None and process_id is not None
        host, _, port = coordinator_address.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(
                f"--coordinator-address {coordinator_address!r} is not HOST:PORT -- e.g. "
                "10.0.0.1:12345, the address of process 0"
            )
        if not 0 <= process_id < num_processes:
            raise ConfigError(
                f"--process-id {process_id} is not in 0..{num_processes - 1} (--num-processes {num_processes})"
            )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used only by CPU devices
    try:
        jax.distributed.initialize(
            coordinator_address,
            num_processes,
            process_id,
            initialization_timeout=INIT_TIMEOUT_S,
            heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S,
            shutdown_timeout_seconds=SHUTDOWN_TIMEOUT_S,
        )
    except (RuntimeError, ValueError) as e:
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(
            f"cannot join the multi-process run ({detail}) -- check --coordinator-address, "
            "--num-processes and --process-id, and that process 0 is running"
        ) from None
    return True


def is_peer_failure(e: BaseException) -> bool:
    """An error from a collective whose peer process died or cannot be reached."""
    import jax

    text = str(e)
    return jax.process_count() > 1 and any(
        s in text for s in ("Gloo", "gloo", "Connection closed", "DEADLINE", "heartbeat", "UNAVAILABLE")
    )
