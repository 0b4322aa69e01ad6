"""Transformer norm placement: a norms sweep's runs, one group per placement.

A norms sweep trains ViTs (model.arch: vit), one model.name per placement (vit_post, vit_pre,
...), at several depths, with and without learning-rate warmup (optim.warmup_iters > 0), at one
or several learning rates (resexp.norms.lr).
the norms table and figure report on it one row (column) per placement group.

Notebook use:
    runs = find_runs("runs/norms")
    placement_groups(runs)   # {"vit_post": [Run, ...], "vit_pre": [...], ...}
"""

from __future__ import annotations

from resexp.rundir import flatten_keys
from resexp.errors import ResexpError
from resexp.runs import Run, group_by_setting

PLACEMENT_NAMES = {"post": "Post-LN", "pre": "Pre-LN", "sandwich": "Sandwich-LN", "deepnorm": "DeepNorm",
                   "rezero": "ReZero", "none": "no norm", "mix": "Mix-LN", "lns": "LayerNorm Scaling",
                   "dyt": "DyT", "peri": "Peri-LN", "derf": "Derf", "hybrid": "HybridNorm"}
# What a norms sweep varies inside one placement's row; any other config difference makes its own row.
VARIED_KEYS = ("model.depth", "optim.warmup_iters", "optim.lr")


def placement_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """The ViT runs, one group per placement row, keyed by model.name, in placement order.

    A group holds runs equal in config up to depth, warmup, learning rate and seed. Where two
    groups share a name (residual=false of vit_post, two weight decays) the config values that
    tell them apart are appended to the label, as group_runs does.
    """
    vit = vit_runs(runs)
    if not vit:
        raise ResexpError(f"no ViT runs (model.arch: vit) among the {len(runs)} runs found: "
                          "--kind norms reports on norm-placement sweeps")
    labelled = group_by_setting(
        vit, lambda run: {k: v for k, v in flatten_keys(run.identity).items() if k not in VARIED_KEYS})
    return dict(sorted(labelled.items(), key=lambda item: (*placement_order(item[1][0]), item[0])))


def vit_runs(runs: list[Run]) -> list[Run]:
    """The runs a norms report reads: the ViTs (model.arch: vit)."""
    return [r for r in runs if r.config.model.get("arch") == "vit"]


def run_placement(run: Run) -> str:
    """The run's model.norm_placement ("post", "pre", ...); "?" if its config has none."""
    return str(run.config.model.get("norm_placement", "?"))


def placement_order(run: Run) -> tuple[int, bool]:
    """Sort key: the placement's place in PLACEMENT_NAMES (unknown ones last), residual runs first."""
    order = list(PLACEMENT_NAMES)
    placement = run_placement(run)
    return (order.index(placement) if placement in order else len(order), not run.residual)


def run_warmup(run: Run) -> int:
    """The run's optim.warmup_iters; 0 if it has none."""
    return int(run.value("optim.warmup_iters") or 0)
