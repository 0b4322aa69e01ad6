"""Checkpoints written atomically (temporary file + rename) and read back with weights_only."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """A killed process leaves either the old checkpoint or the new one, never half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    # weights_only: a checkpoint is data, never code to execute.
    return torch.load(path, map_location=device, weights_only=True)
