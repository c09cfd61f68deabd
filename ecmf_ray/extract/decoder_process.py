"""Decoder calls in a child process, so that a call that hangs can be ended.

A native decoder call (decord, FFmpeg through PyAV) cannot be interrupted from Python: a thread left
behind on a timeout keeps its CPU, memory and open file inside the (reused) Ray worker for as long as
the call blocks, possibly forever. So each process that decodes (a Ray decode worker, or the sequential
loop) keeps one decoder child: spawned on first use, reused for every later clip, killed with SIGKILL
and reaped when a call overruns its deadline, and replaced on the next call.

The child is a fresh interpreter (``python -m ecmf_ray.extract.decoder_process FD``), never a fork of a
Ray worker (forking a process with gRPC threads is unsafe). Calls and results travel pickled over a Unix
socket pair: a clip's frames are a few MB of uint8, a copy of which costs well under a millisecond
against tens of milliseconds of decoding. The child exits on its own when its parent goes away.
"""

from __future__ import annotations

import atexit
import importlib
import os
import pickle
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import TypeVar

T = TypeVar("T")

# Spawning the child imports numpy, PyAV and decord once; slow on a loaded machine, and not a decode.
START_TIMEOUT_S = 120.0
# Imported by the child before it reports ready, so no call's deadline pays for them. That includes the
# module of the functions it runs: decode imports pandas and pyarrow (through storage), 1.4 s on an idle
# machine and many times that under load, which once made the first clip after a hang time out.
PRELOAD = ("numpy", "av", "decord", "ecmf_ray.extract.decode")


class DecodeTimeout(TimeoutError):
    """A decoder call that did not finish within ``extract.decode.timeout_s``; its process was killed."""


class DecoderDied(RuntimeError):
    """The decoder process ended during a call (e.g. a native crash in a decoder)."""


class DecoderProcess:
    """One decoder child, started on demand; :meth:`call` runs a function in it under a deadline."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._lock = threading.Lock()

    @property
    def pid(self) -> int | None:
        """The running child's pid, or None when none is running."""
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def call(self, fn: Callable[..., T], args: tuple, timeout_s: float, what: str) -> T:
        """``fn(*args)`` in the child; its exception is raised here. ``fn`` must be a module-level function.

        On a timeout the child is killed (with whatever it was doing) and :class:`DecodeTimeout` raised;
        the next call starts a new child.
        """
        with self._lock:
            conn = self._ensure_started()
            try:
                conn.send((fn.__module__, fn.__qualname__, args))
                finished = conn.poll(timeout_s)
                if finished:
                    ok, value = conn.recv()
            except (EOFError, OSError):  # the child died (a native crash, an OOM kill)
                code = self._proc.wait() if self._proc is not None else None
                self.close()
                raise DecoderDied(
                    f"{what}: the decoder process exited (code {code}) during the call"
                ) from None
            except BaseException:  # interrupted mid-call (a cancelled Ray task): its late reply must never
                self.close()  # be read as the next call's, so the child goes with the call
                raise
            if not finished:
                pid = self.close()
                raise DecodeTimeout(
                    f"{what} did not finish within {timeout_s:g} s; decoder process {pid} killed"
                )
        if ok:
            return value
        raise value

    def close(self) -> int | None:
        """Kill and reap the child if there is one; returns its pid."""
        proc, conn = self._proc, self._conn
        self._proc = self._conn = None
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        return proc.pid

    def _ensure_started(self) -> Connection:
        if self._proc is not None and self._proc.poll() is None and self._conn is not None:
            return self._conn
        self.close()
        ours, theirs = socket.socketpair()
        with ours, theirs:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", __name__, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                close_fds=True,
            )
            self._conn = Connection(ours.detach())
        try:
            ready = self._conn.poll(START_TIMEOUT_S) and self._conn.recv() == "ready"
        except (EOFError, OSError):  # it exited while starting (its error is in this worker's log)
            ready = False
        if not ready:
            self.close()
            raise DecoderDied(f"the decoder process did not start within {START_TIMEOUT_S:g} s")
        return self._conn


_PROCESS = DecoderProcess()
atexit.register(_PROCESS.close)


def call(fn: Callable[..., T], args: tuple, timeout_s: float, what: str) -> T:
    """``fn(*args)`` in this process's decoder child, under ``timeout_s`` (see :meth:`DecoderProcess.call`)."""
    return _PROCESS.call(fn, args, timeout_s, what)


def current_pid() -> int | None:
    """The pid of this process's decoder child, or None when none is running."""
    return _PROCESS.pid


# ------------------------------------------------------------------------------------------ the child


def _exit_with_parent(parent: int) -> None:
    """End the child when its parent is gone, even in the middle of a (blocking, GIL-free) decoder call."""
    while True:
        time.sleep(1.0)
        if os.getppid() != parent:
            os._exit(0)


def _portable(err: BaseException) -> BaseException:
    """``err`` if it survives pickling, else a RuntimeError with its type name and message."""
    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")


def serve(fd: int) -> None:
    """The child's loop: receive ``(module, name, args)``, reply ``(True, result)`` or ``(False, error)``."""
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    for name in PRELOAD:
        importlib.import_module(name)
    conn = Connection(fd)
    conn.send("ready")
    while True:
        try:
            module, qualname, args = conn.recv()
        except EOFError:  # the parent closed its end
            return
        try:
            reply = (True, getattr(importlib.import_module(module), qualname)(*args))
        except Exception as err:
            reply = (False, _portable(err))
        conn.send(reply)


if __name__ == "__main__":
    serve(int(sys.argv[1]))
