"""Signals: stop cleanly on SIGTERM / Ctrl-C, and run handlers on the thread's own stack.

A preemptible worker gets SIGTERM before it is killed. Raising `Stopped` (a KeyboardInterrupt) from
the handler lets the code that is running unwind: Optuna fails the running trial with the reason,
results written so far stay on disk, and the CLI exits 128 + the signal's number.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

_pending: int | None = None  # the stop signal received inside stop_on_signals, if any


class Stopped(KeyboardInterrupt):
    """The process was asked to stop (SIGTERM or SIGINT)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


@contextlib.contextmanager
def stop_on_signals(*signums: int) -> Iterator[None]:
    """Raise Stopped in the main thread on each of `signums` (default SIGTERM and SIGINT) while inside."""
    signums = signums or (signal.SIGTERM, signal.SIGINT)
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: object) -> None:
        global _pending
        _pending = signum
        raise Stopped(signum)

    global _pending
    _pending = None
    previous = {s: signal.signal(s, stop) for s in signums}
    for s in signums:
        on_thread_stack(s)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _pending = None


def raise_if_stopped() -> None:
    """Raise Stopped if a stop signal arrived and its exception was swallowed: a signal that lands while
    Python runs a finalizer (a weakref callback during garbage collection) raises there, and Python
    only prints "Exception ignored". Long loops call this between units of work."""
    if _pending is not None:
        raise Stopped(_pending)


def on_thread_stack(signum: int) -> None:
    """Have `signum`'s handler run on the thread's own stack, not on an alternate signal stack (Linux).

    CPython installs its handlers with SA_ONSTACK. OpenVINO's CPU plugin gives each thread that runs a
    newly compiled model a 20 KiB alternate stack, and once the thread has used AMX tiles (bf16 / int8
    on Sapphire Rapids and later) the kernel's signal frame no longer fits there: the process dies with
    SIGSEGV when the trial timer fires (seen here with OpenVINO 2026.4). The thread's stack is large.
    """
    if sys.platform != "linux":
        return
    import ctypes

    class SigAction(ctypes.Structure):  # glibc's struct sigaction on Linux
        _fields_ = [
            ("handler", ctypes.c_void_p),
            ("mask", ctypes.c_ulong * 16),
            ("flags", ctypes.c_int),
            ("restorer", ctypes.c_void_p),
        ]

    sa_onstack = 0x08000000
    libc = ctypes.CDLL(None, use_errno=True)
    act = SigAction()
    if libc.sigaction(signum, None, ctypes.byref(act)) == 0 and act.flags & sa_onstack:
        act.flags &= ~sa_onstack
        libc.sigaction(signum, ctypes.byref(act), None)
