"""SIGINT and SIGTERM end a command at any moment with one line (vae_jax.cli.main): both raise
KeyboardInterrupt in the main thread, the exit code says which (130, 143).

Python runs a signal's handler between two bytecodes, which may be inside a garbage-collector
callback (JAX's `_xla_gc_callback`) or a `__del__`: an exception raised there is dropped (at best
printed as "Exception ignored in ...") and the command went on. There the handler sends the signal
again a moment later instead, and an interrupt dropped anyway (sys.unraisablehook) is sent again too.
Imports nothing heavy: installed before JAX loads.
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading

EXIT_CODES: dict[int, int] = {signal.SIGINT: 130, signal.SIGTERM: 143}  # 128 + the number, as a shell says
_received: list[int] = []  # the signals received, in order


def _dropping(frame) -> bool:
    """Whether the frame runs inside a garbage-collector callback or a __del__, where an exception is
    dropped (reported as unraisable at best)."""
    callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
    while frame is not None:
        if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
            return True
        frame = frame.f_back
    return False


def _later(signum: int) -> None:
    threading.Timer(0.01, os.kill, (os.getpid(), signum)).start()


def _raise(signum, frame):
    if _dropping(frame):  # the handler runs again in a moment, outside the callback
        _later(signum)
        return
    _received.append(signum)
    raise KeyboardInterrupt(signal.Signals(signum).name)


def _redeliver(unraisable) -> None:
    """sys.unraisablehook: an interrupt raised where Python drops exceptions is sent again (the
    next handler call runs outside the callback); anything else goes to the default hook."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        _later(_received.pop() if _received else signal.SIGINT)
        return
    sys.__unraisablehook__(unraisable)


def install() -> None:
    """SIGTERM raises KeyboardInterrupt as SIGINT does (SIGINT stays ignored where the parent ignored
    it, as for a background job of a shell), and a dropped interrupt is delivered again."""
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _raise)
    signal.signal(signal.SIGTERM, _raise)
    sys.unraisablehook = _redeliver


def exit_code() -> int:
    """The exit code of an interrupted command: 143 after SIGTERM, else 130 (SIGINT, Ctrl-C)."""
    return EXIT_CODES.get(_received[-1], 130) if _received else 130


def name() -> str:
    """How the interrupt is said in the one line: 'interrupted' (SIGINT), 'terminated (SIGTERM)'."""
    return "terminated (SIGTERM)" if _received and _received[-1] == signal.SIGTERM else "interrupted"


def ignore_more() -> None:
    """Once the one line is being written: further signals wait (the process exits right after)."""
    for s in EXIT_CODES:
        if signal.getsignal(s) is _raise:
            signal.signal(s, signal.SIG_IGN)
