"""CUDA MPS for several runs on one GPU.

Without MPS, processes on one GPU take turns (time slicing); with it their kernels run at the
same time. Measured on one H100 (results/bench/README.md): 6 ResNet-56 processes, each
replaying its whole-step graph, gave 22.4k images/s without MPS and 41.4k with it.

`cuda_mps` starts a private MPS control daemon (its own pipe and log directories, so no other
user's processes join it) for the processes this one starts, checks that a CUDA client can
work through it, and stops it afterwards. It does nothing where there is nothing to
gain or where it would disturb something: fewer than 2 runs at once, no GPU, no
`nvidia-cuda-mps-control`, or an MPS daemon already running (then the runs use that one).
Where it tried and failed, the processes started inside are told so (FAILED_ENV), so a sweep
started inside (`resexp bench --sweep`) does not try again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"
DEFAULT_PIPE_DIR = Path("/tmp/nvidia-mps")  # where a system-wide daemon listens
ENV_KEYS = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")
FAILED_ENV = "RESEXP_MPS_FAILED"  # set, within a cuda_mps that could not start one, to why
CONTROL_TIMEOUT_S = 60
CLIENT_TIMEOUT_S = 120


def mps_running() -> bool:
    """An MPS daemon this process would already talk to: one named by the environment, or the
    system-wide one."""
    return bool(os.environ.get("CUDA_MPS_PIPE_DIRECTORY")) or (DEFAULT_PIPE_DIR / "control").exists()


def client_works(env: dict[str, str]) -> str | None:
    """Why a CUDA process cannot run through this daemon (the server starts with its first
    client: an exclusive-process GPU or another user's server shows only now), or None."""
    try:
        result = subprocess.run([sys.executable, "-c", "import torch; torch.ones(1, device='cuda').sum().item()"],
                                env={**os.environ, **env}, capture_output=True, text=True, timeout=CLIENT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return f"a CUDA client did not start within {CLIENT_TIMEOUT_S} s"
    lines = (result.stderr or result.stdout).strip().splitlines()
    return None if result.returncode == 0 else (lines[-1] if lines else f"exit {result.returncode}")


@contextmanager
def cuda_mps(runs_at_once: int, gpus: int, notify: Callable[[str], None] = print,
             check: Callable[[dict[str, str]], str | None] = client_works) -> Iterator[bool]:
    """Within: processes started from here share each GPU through a private MPS daemon. Yields
    whether one was started by this call. Processes started inside must end inside."""
    control = shutil.which(CONTROL)
    if runs_at_once < 2 or gpus == 0 or control is None or mps_running() or os.environ.get(FAILED_ENV):
        yield False
        return
    folder = Path(tempfile.mkdtemp(prefix="resexp-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    failure = _start(control, env)
    if failure is None:
        failure = check(env)
        if failure is not None:
            _stop(control, env)
    if failure is not None:
        notify(f"CUDA MPS did not start ({failure}); the {runs_at_once} runs per GPU share it by time slicing")
        shutil.rmtree(folder, ignore_errors=True)
        os.environ[FAILED_ENV] = failure
        try:
            yield False
        finally:
            os.environ.pop(FAILED_ENV, None)
        return
    saved = {key: os.environ.get(key) for key in ENV_KEYS}
    os.environ.update(env)  # inherited by the processes started from here
    notify(f"CUDA MPS started for {runs_at_once} runs per GPU (pipe directory {env['CUDA_MPS_PIPE_DIRECTORY']})")
    try:
        yield True
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        stopped = _stop(control, env)
        if stopped is None:
            shutil.rmtree(folder, ignore_errors=True)
        else:  # keep its pipe directory, the only way to reach it
            notify(f"CUDA MPS did not stop ({stopped}); stop it with: "
                   f"echo quit | CUDA_MPS_PIPE_DIRECTORY={env['CUDA_MPS_PIPE_DIRECTORY']} {CONTROL}")


def _start(control: str, env: dict[str, str]) -> str | None:
    """Start the control daemon; why not, or None."""
    try:
        for path in env.values():
            Path(path).mkdir()
        started = subprocess.run([control, "-d"], env={**os.environ, **env}, capture_output=True, text=True,
                                 timeout=CONTROL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    lines = (started.stderr or started.stdout).strip().splitlines()
    return None if started.returncode == 0 else (lines[0] if lines else f"exit {started.returncode}")


def _stop(control: str, env: dict[str, str]) -> str | None:
    """Ask the daemon to quit; why it did not, or None."""
    try:
        stopped = subprocess.run([control], input="quit\n", env={**os.environ, **env}, capture_output=True,
                                 text=True, timeout=CONTROL_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{type(e).__name__}: {e}"
    return None if stopped.returncode == 0 else f"exit {stopped.returncode}"
