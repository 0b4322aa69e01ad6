"""Stopping a local sweep: one stop for the sweep's process and every worker it started.

The sweep's process holds a control folder and names it to its workers in the environment
(RESEXP_SWEEP_CONTROL). A signal to the sweep (SIGTERM, SIGINT, SIGHUP) writes `stop` there;
a worker's run polls it about once a second (resexp.engine.stopping.StopSignal), checkpoints and
stops, and a queued run that finds it never starts. A worker that receives a signal itself
(its handlers are installed when it takes its first run, and stay) writes the same file, so one
Ctrl-C or `kill` stops the whole sweep the same way. A worker
whose sweep process is gone (kill -9) stops too: nobody would collect its result.

Only local launchers (basic, joblib) get a control: a SLURM job runs on another host, where
submitit's own signal handling requeues it.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections import Counter
from contextlib import suppress
from pathlib import Path
from typing import Any

ENV = "RESEXP_SWEEP_CONTROL"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR2)  # USR2: SLURM pre-empting a packed job
# After a stop, how long the running runs get to finish their step and save a checkpoint before
# they are killed (their previous checkpoint stays). A step is milliseconds on a GPU and about a
# second on a CPU; a run still compiling or capturing its graph is what this bounds.
GRACE_S = 60.0


class SweepControl:
    """The control folder: `stop` (why the sweep stops, as JSON) and `workers/<pid>` (the
    processes training a run now). Implements resexp.engine.stopping.StopSource for a worker."""

    def __init__(self, folder: Path, sweep_pid: int) -> None:
        self.folder, self.sweep_pid = folder, sweep_pid

    @classmethod
    def create(cls) -> SweepControl:
        control = cls(Path(tempfile.mkdtemp(prefix="resexp-sweep-")), os.getpid())
        (control.folder / "workers").mkdir()
        return control

    @classmethod
    def from_env(cls) -> SweepControl | None:
        value = os.environ.get(ENV)
        if not value:
            return None
        pid, _, folder = value.partition(":")
        return cls(Path(folder), int(pid))

    def env_value(self) -> str:
        return f"{self.sweep_pid}:{self.folder}"

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- stopping --

    def request_stop(self, name: str, number: int) -> None:
        """Record the first stop; later ones keep it."""
        stop = self.folder / "stop"
        tmp = self.folder / f".stop.{os.getpid()}"
        tmp.write_text(json.dumps({"signal": name, "number": number, "pid": os.getpid()}))
        try:
            os.link(tmp, stop)  # atomic and exclusive: the first stop wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)

    def stop_request(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.folder / "stop").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def stop_reason(self) -> str | None:
        """Why this worker's run must stop: the sweep was stopped, or its process is gone."""
        request = self.stop_request()
        if request is not None:
            return f"{request['signal']} (sweep stopped)"
        if self.orphaned():
            return f"sweep process {self.sweep_pid} gone"
        return None

    def orphaned(self) -> bool:
        """This worker's sweep process is gone (kill -9): nobody will collect its result."""
        return self.sweep_pid != os.getpid() and not _alive(self.sweep_pid)

    def signalled(self, name: str) -> None:
        """A worker received a signal itself: the whole sweep stops, as if the sweep had."""
        self.request_stop(name, int(signal.Signals[name]))

    # -- the workers --

    def enter_worker(self) -> None:
        """A worker process takes a run: it is listed, and from now on (between runs too) a signal
        it receives stops the sweep instead of killing it, which would break joblib's pool."""
        (self.folder / "workers" / str(os.getpid())).touch()
        if os.getpid() != self.sweep_pid and threading.current_thread() is threading.main_thread():
            for number in STOP_SIGNALS:
                signal.signal(number, lambda n, frame: self.signalled(signal.Signals(n).name))

    def leave_worker(self) -> None:
        (self.folder / "workers" / str(os.getpid())).unlink(missing_ok=True)

    def workers(self) -> list[int]:
        pids = [int(p.name) for p in (self.folder / "workers").iterdir() if p.name.isdigit()]
        return [pid for pid in pids if pid != os.getpid() and _alive(pid)]

    def take_gpu(self, gpus: int) -> int:
        """The GPU for this worker's run: the one with the fewest live runs of the sweep (runs
        end at different times, so job number mod GPUs would pile the later runs onto one GPU).
        Recorded in its workers/<pid> file until leave_worker; chosen under a lock, so that two
        workers starting at once do not both take the same free GPU."""
        with (self.folder / "gpu.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            live = Counter()
            for pid in self.workers():
                try:
                    text = (self.folder / "workers" / str(pid)).read_text().strip()
                except FileNotFoundError:  # its run just ended
                    continue
                if text.isdigit() and int(text) < gpus:  # empty: a worker on the CPU, or not placed yet
                    live[int(text)] += 1
            gpu = min(range(gpus), key=lambda index: (live[index], index))
            (self.folder / "workers" / str(os.getpid())).write_text(str(gpu))
        return gpu


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process took the number: ours is gone
        return False
    return True


class SweepStopHandler:
    """In the sweep's process, while it launches: SIGTERM, SIGINT and SIGHUP stop the sweep (no
    queued run starts, running ones checkpoint and stop) instead of killing this process, which
    would leave its workers training on. Runs still alive GRACE_S after the stop are killed."""

    def __init__(self, control: SweepControl, notify=lambda text: print(text, file=sys.stderr, flush=True)) -> None:
        self.control, self.notify = control, notify
        self.previous: dict[int, Any] = {}
        self.timer: threading.Timer | None = None

    def __enter__(self) -> SweepStopHandler:
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        if self.timer is not None:
            self.timer.cancel()
        for number, handler in self.previous.items():
            signal.signal(number, handler)

    def _handle(self, number: int, frame) -> None:
        """Never raises: an exception here would surface in joblib's wait and kill every worker
        (a closed terminal makes even a print fail)."""
        name = signal.Signals(number).name
        first = self.timer is None
        if first:
            self.timer = threading.Timer(GRACE_S, self._kill_late)
            self.timer.daemon = True
            self.timer.start()
        with suppress(Exception):
            self.control.request_stop(name, number)  # a worker may have written it first (Ctrl-C reaches all)
            running = len(self.control.workers())
            self.notify(f"resexp: sweep: {name}: no queued run will start; {running} running run(s) save a "
                        f"checkpoint and stop (killed after {GRACE_S:.0f} s if they have not)" if first else
                        f"resexp: sweep: {name}: already stopping; waiting for {running} run(s) to save a checkpoint")

    def _kill_late(self) -> None:
        late = self.control.workers()  # processes of this sweep: their files name live children
        for pid in late:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if late:
            self.notify(f"resexp: sweep: killed {len(late)} run(s) that had not stopped within {GRACE_S:.0f} s "
                        f"(pids {', '.join(map(str, late))}); each resumes from its previous checkpoint")

