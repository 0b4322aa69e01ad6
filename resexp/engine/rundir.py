"""A run directory's guard: one process at a time (an OS lock), only the same run continues it
(resexp.config.run_identity), and a finished run is never degraded."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, Any

from omegaconf import DictConfig, OmegaConf

from resexp.config import identity_changes, run_identity
from resexp.engine.tracking import read_json
from resexp.errors import ResexpError

LOCK_NAME = ".lock"
CHECKPOINT = Path("checkpoints/last.pt")  # the run's one checkpoint, relative to its directory
DONE = ("finished", "diverged")


class RunDirLock:
    """An exclusive flock on RUN/.lock while a process trains in RUN. The kernel releases it
    when the holder exits, however it exits (kill -9 included), so the lock of a dead run is
    simply taken over; the file keeps the holder's pid for the refusal message. A run that
    ends in an error (a refusal) removes the file if it created it: it leaves no trace."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_NAME
        self.file: IO[str] | None = None
        self.created = False  # by this process: there was no lock file before

    def __enter__(self) -> RunDirLock:
        created = not self.path.exists()
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            holder = file.read().strip() or "unknown"
            file.close()
            raise ResexpError(f"{self.path.parent} is in use by another resexp process (pid {holder}); "
                              "wait for it to end or stop it, then run the same command to resume") from None
        if not self._is_current(file):  # removed by its holder between our open and flock: lock the new one
            file.close()
            return self.__enter__()
        file.seek(0), file.truncate()
        file.write(f"{os.getpid()}\n")
        file.flush()
        self.file, self.created = file, created
        return self

    def _is_current(self, file: IO[str]) -> bool:
        try:
            return os.path.samestat(os.fstat(file.fileno()), os.stat(self.path))
        except FileNotFoundError:
            return False

    def __exit__(self, error_type: type[BaseException] | None, *exc_info: Any) -> None:
        if self.file is None:
            return
        if error_type is not None and self.created:
            # Removed while still held: whoever opened it meanwhile finds it gone once it gets the flock.
            self.path.unlink(missing_ok=True)
        fcntl.flock(self.file, fcntl.LOCK_UN)
        self.file.close()


def read_config(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # YAML and OmegaConf errors alike: the file is not a config
        raise ResexpError(f"{path} is corrupt ({type(e).__name__}); restore it or choose another run.name") from None
    if not isinstance(cfg, DictConfig) or not {"model", "data", "optim", "seed", "trainer"} <= set(cfg):
        raise ResexpError(f"{path} is not a resexp run config; restore it or choose another run.name")
    return cfg


def check_run_dir(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """Whether cfg may train in run_dir. Returns the run's summary when it is done and there is
    nothing to train; raises (one line, nothing written) for another run's directory, or for
    fewer iterations than a finished run already has."""
    if run_dir.exists() and not run_dir.is_dir():
        raise ResexpError(f"run directory {run_dir} exists and is not a directory; choose another run.dir")
    config_path = run_dir / "config.yaml"
    if not config_path.is_file():
        return None
    if not cfg.run.resume:
        raise ResexpError(f"{run_dir} already holds a run and run.resume=false; choose another run.name or run.dir")
    changes = identity_changes(run_identity(read_config(config_path)), run_identity(cfg))
    if changes:
        raise ResexpError(f"{run_dir} holds another run: {'; '.join(changes[:3])}; choose another run.name or run.dir")
    summary = read_json(run_dir / "summary.json")
    if summary is None or summary.get("status") not in DONE:
        return None
    done, wanted = int(summary.get("iterations", 0)), int(cfg.trainer.max_iters)
    if wanted < done:
        raise ResexpError(f"{run_dir} has already trained {done} iterations ({summary['status']}); "
                          f"trainer.max_iters={wanted} asks for fewer, so nothing was changed "
                          "(a shorter run needs its own run.name)")
    if summary["status"] == "diverged" or wanted == done:
        return summary
    return None  # a finished run asked for more iterations: it continues from its checkpoint


def checkpoint_iteration(run_dir: Path) -> int | None:
    """The iteration the run's checkpoint holds (where the same command resumes), None without
    one; a checkpoint that cannot be read is a one-line ResexpError, as it is for train."""
    path = run_dir / CHECKPOINT
    if not path.is_file():
        return None
    import torch  # here: reading a run directory's status needs no torch

    from resexp.engine.checkpoint import load_checkpoint

    state = load_checkpoint(path, torch.device("cpu"))
    if not isinstance(state, dict) or "iteration" not in state:
        raise ResexpError(f"{path} is not a resexp checkpoint (no iteration)")
    return int(state["iteration"])
