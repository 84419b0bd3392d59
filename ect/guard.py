"""Guards around a training run: one writer per run directory, preemption signals, divergence.

- :class:`RunLock`: an exclusive ``flock`` on ``<run>/writer.lock``, held for the life of the process. The OS
  drops it when the process ends, however it ends, so a crash never leaves a run locked; the file records the
  holder (pid, host, start time) for the error a second writer gets. (On Lustre, ``flock`` needs the ``flock``
  mount option; NFSv4 and local file systems support it.)
- :class:`StopSignals`: SIGTERM and SIGUSR1 (what SLURM sends before a time limit or preemption) ask the loop to
  write a checkpoint at the next iteration boundary and stop with :data:`PREEMPTED_EXIT` (75, EX_TEMPFAIL).
- :class:`JobDeadline`: the same stop, a margin (``ECT_STOP_MARGIN`` seconds) before the SLURM job's end time, so
  a job stops cleanly before its time limit even where no signal reaches the training process.
- :class:`DivergenceError`: a non-finite loss or weight stops the run, naming the iteration.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

from ect.errors import UserError
from ect.runs import LOCK

if TYPE_CHECKING:  # torch is imported where processes agree on a stop: the workflow's planning imports this module
    import torch

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: "try again later"; any non-zero status makes Snakemake's retries resubmit
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
STOP_MARGIN_ENV = "ECT_STOP_MARGIN"
DEFAULT_STOP_MARGIN = 300  # seconds: room for the iteration in progress and the checkpoint write
REFRESH_ENV = "ECT_DEADLINE_REFRESH"
DEFAULT_REFRESH = 60  # seconds between squeue queries (`scontrol update` or preemption can move the end time)
NO_END_TIME = ("", "N/A", "NONE", "UNKNOWN", "UNLIMITED", "INFINITE")


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


def _now() -> float:
    return time.time()


def _seconds(environ: Mapping[str, str], name: str, default: int) -> int:
    value = environ.get(name, "").strip()
    if not value:
        return default
    try:
        seconds = int(value)
    except ValueError:
        seconds = -1
    if seconds < 0:
        raise UserError(f"{name}={value!r}: expected a whole number of seconds >= 0")
    return seconds


def stop_margin(environ: Mapping[str, str] = os.environ) -> int:
    """Seconds before the job's end time at which training stops: ``ECT_STOP_MARGIN``, else 300."""
    return _seconds(environ, STOP_MARGIN_ENV, DEFAULT_STOP_MARGIN)


def parse_end_time(text: str) -> float | None:
    """A SLURM end time as Unix seconds: ``SLURM_JOB_END_TIME`` (Unix seconds) or squeue's ``%e`` (ISO local time,
    e.g. 2026-12-03T11:29:52); None for no limit (N/A, Unknown, NONE, empty)."""
    text = text.strip()
    if text.upper() in NO_END_TIME:
        return None
    if text.isdigit():
        return float(text) or None
    try:
        return datetime.datetime.fromisoformat(text).timestamp()  # naive: the local time zone, as squeue prints it
    except ValueError:
        raise ValueError(f"unreadable SLURM end time {text!r}") from None


def squeue_end_time(job_id: str) -> float | None:
    """The job's current end time from ``squeue -j JOB -h -o %e``; raises OSError/ValueError when unavailable."""
    try:
        out = subprocess.run(["squeue", "-j", job_id, "-h", "-o", "%e"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
    except subprocess.CalledProcessError as exc:
        raise OSError(f"squeue -j {job_id} failed: {exc.stderr.strip() or exc.returncode}") from None
    except subprocess.TimeoutExpired:
        raise OSError(f"squeue -j {job_id} did not answer within 30 s") from None
    lines = out.split()
    if not lines:
        raise OSError(f"squeue -j {job_id} does not list the job")
    return parse_end_time(lines[0])


class JobDeadline:
    """Whether the SLURM job this process runs in is within ``margin`` seconds of its end time.

    The end time comes from ``SLURM_JOB_END_TIME`` where SLURM sets it, else from squeue; squeue is asked again at
    most every ``refresh`` seconds (a time limit raised with ``scontrol update``, or a preemption with a grace time,
    moves it), never once per iteration. Outside a SLURM job (no ``SLURM_JOB_ID`` nor ``SLURM_JOB_END_TIME``) it
    is never reached. If squeue fails, the last known end time stands and one warning goes to stderr.
    """

    def __init__(self, margin: float, environ: Mapping[str, str] = os.environ, clock: Callable[[], float] = _now,
                 query: Callable[[str], float | None] = squeue_end_time, refresh: float = DEFAULT_REFRESH) -> None:
        self.margin, self.clock, self.query, self.refresh = margin, clock, query, refresh
        self.job_id = environ.get("SLURM_JOB_ID")
        self.end: float | None = None
        self._asked: float | None = None  # when squeue was last asked
        self._warned = False
        if environ.get("SLURM_JOB_END_TIME"):
            try:
                self.end = parse_end_time(environ["SLURM_JOB_END_TIME"])
            except ValueError as exc:
                raise UserError(f"SLURM_JOB_END_TIME: {exc}") from None
            self._asked = clock()
        self.active = bool(self.job_id or self.end is not None)

    @classmethod
    def from_environment(cls) -> JobDeadline:
        """The margin from ``ECT_STOP_MARGIN``, squeue asked every ``ECT_DEADLINE_REFRESH`` (default 60) seconds."""
        return cls(stop_margin(), refresh=_seconds(os.environ, REFRESH_ENV, DEFAULT_REFRESH))

    def _update(self, now: float) -> None:
        if self.job_id is None or (self._asked is not None and now - self._asked < self.refresh):
            return
        self._asked = now
        try:
            self.end = self.query(self.job_id)
        except (OSError, ValueError) as exc:
            if not self._warned:
                print(f"warning: cannot read the end time of SLURM job {self.job_id} ({exc}); "
                      f"{'keeping the last one read' if self.end else 'only signals will stop training'}",
                      file=sys.stderr)
                self._warned = True

    def reached(self) -> bool:
        if not self.active:
            return False
        now = self.clock()
        self._update(now)
        return self.end is not None and now >= self.end - self.margin

    @property
    def description(self) -> str:
        end = datetime.datetime.fromtimestamp(self.end or 0).isoformat(timespec="seconds")
        return f"the job's time limit ({STOP_MARGIN_ENV}={self.margin:g} s before its end at {end})"


class StopSignals:
    """Context manager recording SIGTERM/SIGUSR1 instead of dying; previous handlers restored on exit.

    With a :class:`JobDeadline`, reaching it asks for the same stop.
    """

    def __init__(self, deadline: JobDeadline | None = None) -> None:
        self.signum: int | None = None
        self.deadline = deadline
        self.deadline_reached = False
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
        """Whether any process got a stop signal or reached the deadline; with several processes all agree (one
        tiny all-reduce)."""
        if self.signum is None and not self.deadline_reached and self.deadline is not None:
            self.deadline_reached = self.deadline.reached()
        local = self.signum is not None or self.deadline_reached
        if world == 1:
            return local
        import torch

        flag = torch.tensor([float(local)], device=device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return bool(flag.item())

    @property
    def name(self) -> str:
        if self.signum is not None:
            return signal.Signals(self.signum).name
        if self.deadline_reached and self.deadline is not None:
            return self.deadline.description
        return "a stop request on another process"
