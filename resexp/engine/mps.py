"""CUDA MPS for several runs on one GPU.

Without MPS, processes on one GPU take turns (time slicing); with it their kernels run at the
same time. Measured on one H100 (results/bench/README.md): 6 graphed ResNet-56 processes gave
42.7k images/s without MPS and 64.9k with it. `cuda_mps` starts a private MPS control daemon
(its own pipe and log directories, so no other user's processes join it) for the processes this
one starts, and stops it afterwards. It does nothing where there is nothing to gain or where it
would disturb something: fewer than 2 runs at once, no GPU, no `nvidia-cuda-mps-control`, or
an MPS daemon already running (then the runs use that one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

CONTROL = "nvidia-cuda-mps-control"
DEFAULT_PIPE_DIR = Path("/tmp/nvidia-mps")  # where a system-wide daemon listens
ENV_KEYS = ("CUDA_MPS_PIPE_DIRECTORY", "CUDA_MPS_LOG_DIRECTORY")


def mps_running() -> bool:
    """An MPS daemon this process would already talk to: one named by the environment, or the
    system-wide one."""
    return bool(os.environ.get("CUDA_MPS_PIPE_DIRECTORY")) or (DEFAULT_PIPE_DIR / "control").exists()


@contextmanager
def cuda_mps(runs_at_once: int, gpus: int, notify: Callable[[str], None] = print) -> Iterator[bool]:
    """Within: processes started from here share each GPU through a private MPS daemon. Yields
    whether one was started by this call."""
    control = shutil.which(CONTROL)
    if runs_at_once < 2 or gpus == 0 or control is None or mps_running():
        yield False
        return
    folder = Path(tempfile.mkdtemp(prefix="resexp-mps-"))
    env = {"CUDA_MPS_PIPE_DIRECTORY": str(folder / "pipe"), "CUDA_MPS_LOG_DIRECTORY": str(folder / "log")}
    for path in env.values():
        Path(path).mkdir()
    started = subprocess.run([control, "-d"], env={**os.environ, **env}, capture_output=True, text=True, timeout=60)
    if started.returncode != 0:
        reason = (started.stderr or started.stdout).strip().splitlines()
        notify(f"CUDA MPS did not start ({reason[0] if reason else f'exit {started.returncode}'}); "
               f"the {runs_at_once} runs per GPU share it by time slicing")
        shutil.rmtree(folder, ignore_errors=True)
        yield False
        return
    saved = {key: os.environ.get(key) for key in ENV_KEYS}
    os.environ.update(env)  # inherited by the processes started from here
    notify(f"CUDA MPS started for {runs_at_once} runs per GPU (pipe directory {env['CUDA_MPS_PIPE_DIRECTORY']})")
    try:
        yield True
    finally:
        subprocess.run([control], input="quit\n", env={**os.environ, **env}, capture_output=True, text=True,
                       timeout=60)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(folder, ignore_errors=True)
