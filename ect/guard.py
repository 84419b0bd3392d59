"""Guards around a training run: one writer per run directory, preemption signals, divergence.

- :class:`RunLock`: an exclusive ``flock`` on ``<run>/writer.lock``, held for the life of the process. The OS
  drops it when the process ends, however it ends, so a crash never leaves a run locked; the file records the
  holder (pid, host, start time) for the error a second writer gets. (On Lustre, ``flock`` needs the ``flock``
  mount option; NFSv4 and local file systems support it.)
- :class:`StopSignals`: SIGTERM and SIGUSR1 (what SLURM sends before a time limit or preemption) ask the loop to
  write a checkpoint at the next iteration boundary and stop with :data:`PREEMPTED_EXIT` (75, EX_TEMPFAIL).
- :class:`DivergenceError`: a non-finite loss or weight stops the run, naming the iteration.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import signal
import socket
from pathlib import Path
from types import FrameType

import torch

from ect.errors import UserError
from ect.runs import LOCK

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again later"; any non-zero status makes Snakemake's retries resubmit
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class RunBusyError(UserError):
    """Another process holds the run directory."""


class DivergenceError(UserError):
    """Training produced a non-finite loss or non-finite weights."""


class PreemptedError(UserError):
    """Training stopped on a signal after writing its checkpoint; rerunning resumes it."""

    exit_status = PREEMPTED_EXIT


class RunLock:
    """Context manager: hold ``<out_dir>/writer.lock`` exclusively or fail at once naming the holder."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self._file = None

    def __enter__(self) -> RunLock:
        try:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            f = (self.out_dir / LOCK).open("a+")
        except OSError as exc:
            raise UserError(f"cannot use {self.out_dir} as a run directory: {exc.strerror or exc}") from exc
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunBusyError(f"{self.out_dir} is being written by {holder}; one writer per run directory "
                               "(wait for it to finish or stop it, then rerun)") from None
        f.seek(0)
        f.truncate()
        start = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        f.write(f"pid {os.getpid()} on host {socket.gethostname()} (since {start})\n")
        f.flush()
        self._file = f
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
            self._file = None


class StopSignals:
    """Context manager recording SIGTERM/SIGUSR1 instead of dying; previous handlers restored on exit."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.signum = signum

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread: signals stay as they were
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def requested(self, world: int, device: torch.device) -> bool:
        """Whether any process got a stop signal; with several processes all agree (one tiny all-reduce)."""
        if world == 1:
            return self.signum is not None
        flag = torch.tensor([float(self.signum is not None)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else "a signal on another process"
