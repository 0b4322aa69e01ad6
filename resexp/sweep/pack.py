"""Several runs in one SLURM job: with hydra.sweeper.runs_per_gpu=K (or cpu_runs=K in a job
without GPUs, hydra.launcher.gpus_per_node=0), the sweep's unfinished runs are dealt into
ceil(N / runs per job) jobs (resexp.sweep.plan.deal), which submitit submits as one job array.

Each job trains its runs as a local sweep of exactly those runs: `resexp sweep` with
hydra.sweeper.pack=FILE and the joblib launcher, in a child process, so that K processes share
each of the job's GPUs under the job's own CUDA MPS daemon, each run in its own run directory,
as on a workstation. The job's file (SWEEP/.packs/ID/pack.json, written before submitting) lists
its runs' overrides; Hydra writes the job's own records beside it.

When SLURM pre-empts the job or its time limit nears (submitit's USR2), or cancels it (TERM),
the job hands the signal to its local sweep, whose runs all checkpoint and stop; then submitit's
handler runs as it would in a one-run job: after USR2 it requeues the job, which comes back and
resumes exactly its unfinished runs (the finished ones are skipped).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
from contextlib import suppress
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from resexp.config import hydra_quote
from resexp.engine.stopping import StopSignal
from resexp.errors import ConfigError
from resexp.files import write_text

ENV = "RESEXP_PACK"  # set in a packed job (hydra.job.env_set): the name of its folder under PACKS
PACKS = ".packs"
PACK_FILE = "pack.json"


def pack_job_overrides(sweep_dir: Path, pack: list[list[str]], packing: dict[str, Any]) -> list[str]:
    """Write a job's file (its runs' overrides and how they share the job), named by its content so
    that the same sweep submitted again writes the same file; returns the job's overrides for the
    launcher: the first run's (a config Hydra can compose for the job) in the job's own folder."""
    text = json.dumps({"runs": pack, **packing}, indent=1)
    name = hashlib.sha1(text.encode()).hexdigest()[:12]
    (sweep_dir / PACKS / name).mkdir(parents=True, exist_ok=True)
    write_text(sweep_dir / PACKS / name / PACK_FILE, text + "\n")
    return [*pack[0], f"hydra.sweep.subdir={PACKS}/{name}", f"++hydra.job.env_set.{ENV}={name}"]


def read_pack(path: str | Path) -> dict[str, Any]:
    """A packed job's file, as pack_job_overrides wrote it."""
    try:
        pack = json.loads(Path(path).read_text())
        runs = pack["runs"]
        if not (isinstance(runs, list) and runs and all(isinstance(r, list) and all(isinstance(o, str) for o in r)
                                                      for r in runs)):
            raise ValueError("runs")
        return pack
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ConfigError(f"hydra.sweeper.pack: {path} is not a packed job's file ({type(error).__name__}: "
                          f"{error})") from None


def run_pack(hydra_cfg: DictConfig) -> str:
    """The body of a packed job: its runs as a local sweep in a child process. A signal to the job
    goes to that sweep (which stops its runs at a checkpoint), then to submitit's handler."""
    folder = Path(hydra_cfg.runtime.output_dir)
    pack = read_pack(folder / PACK_FILE)
    words = [f"hydra.sweeper.pack={hydra_quote(str(folder / PACK_FILE))}",
             f"hydra.sweep.dir={hydra_quote(str(hydra_cfg.sweep.dir))}", "hydra/launcher=joblib",
             f"hydra.sweeper.runs_per_gpu={pack['runs_per_gpu']}", f"hydra.sweeper.cpu_runs={pack['cpu_runs']}",
             f"hydra.sweeper.mps={str(pack['mps']).lower()}"]
    env = {key: value for key, value in os.environ.items() if key != ENV}  # its runs are not packed jobs
    received: list[int] = []
    child: subprocess.Popen | None = None

    def hand_on(number: int, frame: Any) -> None:
        received.append(number)
        if child is not None:
            with suppress(ProcessLookupError):
                child.send_signal(number)

    previous = {number: signal.signal(number, hand_on) for number in StopSignal.SIGNALS}  # the signals a run stops on
    try:
        child = subprocess.Popen([sys.executable, "-m", "resexp.cli", "sweep", *words], env=env)
        if received:  # a signal came before the child could be told
            child.send_signal(received[0])
        code = child.wait()
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
    if received:
        # Pre-emption sends TERM, then USR2 (submitit's signal to requeue): USR2 decides.
        number = signal.SIGUSR2 if signal.SIGUSR2 in received else received[0]
        handler = previous.get(number)
        if callable(handler):  # submitit's: requeue the job and exit (USR2), or only note it (TERM)
            handler(number, None)
        return f"stopped by {signal.Signals(number).name}"
    return "finished" if code == 0 else f"its sweep exited with {code}"
