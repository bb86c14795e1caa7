"""Processes that must not outlive the process that started them.

Linux's parent-death signal (PR_SET_PDEATHSIG) is sent to a child when the *thread* that
forked it exits, and it is the only notice a child gets when its parent is killed with
SIGKILL (as the out-of-memory killer does): no handler of the parent's runs. The embedded
Redis and every worker of `serve --workers` ask for it, so a supervisor that dies takes
them with it instead of leaving processes that hold the port and pass a liveness probe.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal

log = logging.getLogger("supportbot.server")

_PR_SET_PDEATHSIG = 1


def die_with_parent(sig: int = signal.SIGTERM) -> None:
    """Ask the kernel to send `sig` to this process when its parent thread exits.

    Safe between fork and exec (a `preexec_fn`): one system call, no allocation that matters.
    """
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, int(sig))


def bind_to_supervisor(supervisor_pid: int | None) -> None:
    """In a worker that is starting: end with the supervisor, at once. SIGKILL: a worker still
    loading has no answer to drain, and uvicorn holds a SIGTERM until the app's startup (the
    models) is done, tens of seconds on a loaded machine (bench/chaos.py found a worker that
    outlived its killed supervisor by 30 s that way). `serve_with_supervisor` takes over once
    the worker serves.

    The supervisor may have died between starting this process and this call; then no
    signal would ever come, so the worker ends itself.
    """
    if supervisor_pid is None:
        return
    die_with_parent(signal.SIGKILL)
    if os.getppid() != supervisor_pid:
        log.error("the supervisor (pid %d) is gone; this worker stops", supervisor_pid)
        os._exit(1)


def serve_with_supervisor(supervisor_pid: int | None) -> None:
    """In a worker that has started: end with the supervisor by SIGTERM, so answers in flight
    get the drain."""
    if supervisor_pid is None:
        return
    die_with_parent(signal.SIGTERM)
    if os.getppid() != supervisor_pid:
        log.error("the supervisor (pid %d) is gone; this worker stops", supervisor_pid)
        os.kill(os.getpid(), signal.SIGTERM)


def supervisor_lost(supervisor_pid: int | None) -> bool:
    """A worker whose supervisor died has been adopted by another process (init, usually)."""
    return supervisor_pid is not None and os.getppid() != supervisor_pid
