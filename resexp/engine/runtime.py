"""How a run executes, resolved once from cfg.trainer: device, precision (and why), memory
layout, autocast, determinism, compiling and CUDA-graph capture. Nothing else re-derives these."""

from __future__ import annotations

import os
import platform
from collections.abc import Mapping
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from resexp.errors import ConfigError



@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    precision_reason: str
    memory_format: torch.memory_format
    deterministic: bool
    compile: bool  # torch.compile (Inductor) the model's forward
    graph: bool  # capture the whole training step as one CUDA graph
    graph_required: bool  # trainer.graph=always: a failed capture is an error, not a fallback
    graph_reason: str
    recompute_blocks: int  # > 0: activation checkpointing in segments of this many blocks

    @classmethod
    def from_config(cls, trainer: Mapping[str, Any]) -> Runtime:
        """The runtime of cfg.trainer; also sets this process's determinism flags and CUDA device."""
        device = resolve_device(str(trainer["device"]))
        if device.type == "cuda":  # a capture records on the current device's streams: make it this one
            torch.cuda.set_device(device)
        precision, precision_reason = resolve_precision(str(trainer["precision"]), device)
        graph, graph_reason = resolve_graph(trainer["graph"], device, precision)
        deterministic = bool(trainer["deterministic"])
        set_determinism(deterministic)
        memory_format = torch.channels_last if trainer["channels_last"] else torch.contiguous_format
        return cls(device, precision, precision_reason, memory_format, deterministic, bool(trainer["compile"]),
                   graph, trainer["graph"] == "always", graph_reason, int(trainer["recompute_blocks"]))

    def autocast(self) -> AbstractContextManager:
        if self.precision == "fp32":
            return nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        # BatchNorm runs in fp32 under autocast, so its statistics stay fp32. The weight-cast
        # cache buys nothing (each weight is cast once per forward) and must be off in a CUDA graph.
        return torch.autocast(self.device.type, dtype=dtype, cache_enabled=False)

    def scaler(self) -> torch.amp.GradScaler:
        """fp16 needs loss scaling; bf16 and fp32 do not (a disabled scaler is a no-op)."""
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    @property
    def layout(self) -> str:
        return "channels_last" if self.memory_format == torch.channels_last else "NCHW"

    @property
    def execution(self) -> str:
        """How the step runs, as summary.json and the bench reports name it."""
        return self.describe(self.graph)

    def describe(self, graph: bool) -> str:
        parts = (["torch.compile"] if self.compile else []) + (["whole-step CUDA graph"] if graph else []) + (
            [f"recompute every {self.recompute_blocks} blocks"] if self.recompute_blocks else [])
        return " + ".join(parts) or "eager"

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        return f"cpu ({cpu_model()}, {torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name where Linux tells it (speeds differ by far more than the arch says)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), None)
    return name or platform.processor() or platform.machine()


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown trainer.device '{name}'; choose from: auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device asks for CUDA but no CUDA device is visible; use trainer.device=cpu")
    if device.type == "cuda" and device.index is None:  # streams, set_device and graphs want an index
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type == "cuda" and device.index >= torch.cuda.device_count():
        raise ConfigError(f"trainer.device={name}: only {torch.cuda.device_count()} CUDA device(s) visible "
                          f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def resolve_precision(name: str, device: torch.device) -> tuple[str, str]:
    """The precision to train in, and why (written to summary.json)."""
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA; on CPU use fp32 or bf16")
    if name != "auto":
        return name, "set by trainer.precision"
    if device.type == "cuda":
        return "bf16", "auto: bf16 autocast on CUDA"
    # bf16 convolutions are fast on CPUs with AMX tiles. With only AVX512-BF16 they were 1.2x
    # slower than fp32 when measured (results/bench/), so there fp32 stays the default.
    if torch.cpu._is_amx_tile_supported():
        return "bf16", "auto: this CPU has AMX, where bf16 autocast is faster than fp32"
    return "fp32", "auto: this CPU has no AMX; bf16 autocast measured slower than fp32 without it"


def resolve_graph(choice: str, device: torch.device, precision: str) -> tuple[bool, str]:
    """Whether to capture the whole step as one CUDA graph, and why (or why not)."""
    if choice == "never":
        return False, "eager step: trainer.graph=never"
    why_not = None
    if device.type != "cuda":
        why_not = "CUDA graphs need a CUDA device"
    elif precision == "fp16":
        why_not = "fp16 loss scaling is not captured; bf16 (the CUDA default) needs none"
    if why_not is None:
        return True, "whole step captured as one CUDA graph"
    if choice == "always":
        raise ConfigError(f"trainer.graph=always: {why_not}; use trainer.graph=auto (eager where it cannot capture)")
    return False, f"eager step: {why_not}"


def set_determinism(deterministic: bool) -> None:
    if deterministic:  # cuBLAS needs a fixed workspace to be deterministic
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(deterministic)
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic


@contextmanager
def explain_compile_errors():
    """torch.compile fails at the first step, not where it is asked for (on CPU Inductor needs a
    C++ compiler, say): turn its long traceback into resexp's one-line error."""
    try:
        yield
    except torch._dynamo.exc.BackendCompilerFailed as e:
        cause = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise ConfigError(f"torch.compile failed: {cause}; set trainer.compile=false to train without it") from None
