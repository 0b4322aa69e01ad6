"""Finished (or unfinished) runs on disk: their config, summary.json and TensorBoard scalars.

Notebook use:
    runs = find_runs("runs/fig6")
    groups = group_runs(runs)                 # {"plain-20": [Run, Run], "ResNet-56": [...]}
    steps, values = runs[0].series["test/error"]
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from resexp.errors import ResexpError

Series = dict[str, tuple[list[int], list[float]]]

# What makes two runs the same experiment up to the seed; device, logging and data paths do not.
TRAINER_IDENTITY_KEYS = ("max_iters", "batch_size")
DATA_LOCATION_KEYS = ("root", "download")


@dataclass
class Run:
    """One run directory. `series` reads the TensorBoard events on first use, then caches them."""

    path: Path
    config: DictConfig  # a plain dict is converted
    summary: dict[str, Any]

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if not isinstance(self.config, DictConfig):  # a plain dict, e.g. built in a notebook
            self.config = OmegaConf.create(self.config)

    @cached_property
    def series(self) -> Series:
        return read_series(self.path)

    @property
    def status(self) -> str:
        return self.summary.get("status", "unknown")

    @property
    def seed(self) -> int:
        return int(self.config.seed)

    @property
    def depth(self) -> int:
        return int(self.config.model.depth)

    @property
    def residual(self) -> bool:
        # Archs without the key (VGG) have no shortcuts: they belong with the plain nets.
        return bool(self.config.model.get("residual", False))

    @property
    def eval_split(self) -> str:
        return self.summary.get("eval_split", "test")

    @cached_property
    def identity(self) -> dict[str, Any]:
        """The config that defines the experiment, without the seed: runs equal here are seeds."""
        cfg = OmegaConf.to_container(self.config, resolve=True)
        data = {k: v for k, v in cfg["data"].items() if k not in DATA_LOCATION_KEYS}
        trainer = {k: cfg["trainer"][k] for k in TRAINER_IDENTITY_KEYS if k in cfg["trainer"]}
        return {"model": cfg["model"], "data": data, "optim": cfg.get("optim", {}), "trainer": trainer}

    @property
    def base_label(self) -> str:
        """The paper's names: "plain-20", "ResNet-56"; other archs by their config name."""
        model = self.config.model
        if model.get("arch") == "cifar_resnet":
            return f"{'ResNet' if self.residual else 'plain'}-{self.depth}"
        return str(model.name)


def find_runs(sweep_dir: str | Path) -> list[Run]:
    """Every run directory under sweep_dir (at any depth, sweep_dir itself included), by path.

    A run directory holds config.yaml and summary.json; directories with only a config.yaml
    (Hydra's .hydra/, runs that failed before starting) are skipped.
    """
    runs = []
    for config_path in sorted(Path(sweep_dir).rglob("config.yaml")):
        summary_path = config_path.with_name("summary.json")
        if summary_path.is_file():
            runs.append(Run(config_path.parent, OmegaConf.load(config_path), json.loads(summary_path.read_text())))
    return runs


def require_runs(sweep_dir: str | Path) -> list[Run]:
    """find_runs, but an error with a one-line message when there is nothing to report on."""
    if not Path(sweep_dir).is_dir():
        raise ResexpError(f"{sweep_dir} is not a directory")
    runs = find_runs(sweep_dir)
    if not runs:
        raise ResexpError(f"no run directories (config.yaml with summary.json) under {sweep_dir}")
    return runs


def read_series(run_dir: str | Path) -> Series:
    """Every scalar the run logged: {tag: (steps, values)}, steps ascending, all points kept.

    size_guidance 0 keeps every point; EventAccumulator's default keeps a random sample of
    1000 per tag. Its purge logic drops points a killed run logged after its last checkpoint.
    """
    tb_dir = Path(run_dir) / "tb"
    if not tb_dir.is_dir():  # e.g. a sweep copied without its event files: nothing to plot
        return {}
    accumulator = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0})
    accumulator.Reload()
    series: Series = {}
    for tag in accumulator.Tags()["scalars"]:
        # One value per step; if a step was written twice the later write wins.
        by_step = {e.step: e.value for e in sorted(accumulator.Scalars(tag), key=lambda e: e.wall_time)}
        steps = sorted(by_step)
        series[tag] = (steps, [by_step[s] for s in steps])
    return series


def group_runs(runs: list[Run]) -> dict[str, list[Run]]:
    """Runs grouped by experiment (config equal up to the seed), by seed, keyed by a unique label.

    The label is the model's name ("plain-20"); where several experiments share it (an lr
    sweep, two datasets) the config values that tell them apart are appended.
    """
    groups: dict[str, list[Run]] = {}
    for run in sorted(runs, key=lambda r: r.seed):
        groups.setdefault(json.dumps(run.identity, sort_keys=True), []).append(run)
    by_label: dict[str, list[list[Run]]] = {}
    for members in groups.values():
        by_label.setdefault(members[0].base_label, []).append(members)
    labelled = {}
    for label, same_name in by_label.items():
        flat = [flatten_keys(members[0].identity) for members in same_name]
        differing = sorted(k for k in set().union(*flat) if len({repr(f.get(k)) for f in flat}) > 1)
        for members, values in zip(same_name, flat):
            suffix = ", ".join(f"{k}={values.get(k)}" for k in differing)
            labelled[f"{label} ({suffix})" if suffix else label] = members
    return labelled


def flatten_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_keys(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
