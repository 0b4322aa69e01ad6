"""Layer responses (He et al. 2015, Figure 7): the standard deviation of each 3x3 conv's
output after its BN and before the addition / ReLU, over the evaluation split, in eval mode.
The paper's finding: ResNets respond more weakly than their plain twins, deeper ResNets more
weakly still, which supports residual functions that are closer to zero than unreferenced ones.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from resexp.analysis.trained import EVAL_BATCH, TrainedRun, expand_runs, load_run, require_arch
from resexp.plotting import save_figure
from resexp.rundir import RESPONSES_STEM


def response_layers(model: nn.Module) -> list[tuple[str, nn.BatchNorm2d]]:
    """The BN after each 3x3 conv of a cifar_resnet model, in network order: the stem's, then
    every block's bn1 and bn2."""
    layers = [("stem.1", model.stem[1])]
    for s, stage in enumerate(model.stages):
        for b, block in enumerate(stage):
            layers += [(f"stages.{s}.{b}.bn1", block.bn1), (f"stages.{s}.{b}.bn2", block.bn2)]
    return layers


@torch.no_grad()
def layer_responses(model: nn.Module, images: torch.Tensor) -> list[float]:
    """Std of every response layer's output over all its elements (images, channels, positions),
    for `images` (normalised, on the model's device) fed in batches. Sums in float64, so the
    one-pass variance is exact to far below the std's own precision."""
    layers = response_layers(model)
    sums = torch.zeros(len(layers), 2, dtype=torch.float64, device=images.device)
    counts = [0] * len(layers)

    def record(index: int):
        def hook(module: nn.Module, inputs, output: torch.Tensor) -> None:
            values = output.detach().double()
            sums[index, 0] += values.sum()
            sums[index, 1] += values.square().sum()
            counts[index] += values.numel()
        return hook

    handles = [bn.register_forward_hook(record(i)) for i, (_, bn) in enumerate(layers)]
    try:
        for start in range(0, len(images), EVAL_BATCH):
            model(images[start:start + EVAL_BATCH])
    finally:
        for handle in handles:
            handle.remove()
    n = torch.tensor(counts, dtype=torch.float64, device=images.device)
    mean = sums[:, 0] / n
    return (sums[:, 1] / n - mean.square()).clamp_min(0).sqrt().tolist()


def eval_images(run: TrainedRun, limit: int | None) -> torch.Tensor:
    """The evaluation split as the model sees it (normalised, un-augmented), first `limit` images."""
    batches = [images for images, _ in run.data.eval_batches(EVAL_BATCH, torch.contiguous_format)]
    images = torch.cat(batches)
    return images if limit is None else images[:limit]


def responses(paths: list[str | Path], out_dir: Path, limit: int | None = None, device: str = "auto",
              unfinished: bool = False) -> list[Path]:
    """Figure 7 for the runs (or sweeps) given: responses.png/.pdf, .json and .csv in out_dir."""
    results = []
    for run_dir in expand_runs(paths):
        run = load_run(run_dir, device, unfinished)
        require_arch(run, "cifar_resnet", "resexp responses")
        images = eval_images(run, limit)
        stds = layer_responses(run.model, images)
        results.append({"run": str(run.path), "label": run.label, "depth": int(run.config.model.depth),
                        "residual": bool(run.config.model.residual), "images": len(images),
                        "layers": [name for name, _ in response_layers(run.model)], "std": stds})
    results.sort(key=lambda r: (r["residual"], r["depth"], r["run"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{RESPONSES_STEM}.json").write_text(json.dumps(results, indent=1) + "\n")
    with open(out_dir / f"{RESPONSES_STEM}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["run", "label", "layer_index", "layer", "std"])
        for r in results:
            writer.writerows([r["run"], r["label"], i + 1, name, std]
                             for i, (name, std) in enumerate(zip(r["layers"], r["std"])))
    return [*save_figure(draw_responses(results), out_dir / f"{RESPONSES_STEM}.png"),
            out_dir / f"{RESPONSES_STEM}.json", out_dir / f"{RESPONSES_STEM}.csv"]


def net_curves(results: list[dict]) -> dict[str, dict]:
    """The seeds of each net as one curve: per layer the mean std over its runs and the min and
    max, for the layers in network order and sorted by magnitude (each run sorted on its own, as
    the paper's bottom panel). Keyed by the net's label, in the order of results."""
    nets: dict[str, list[dict]] = {}
    for r in results:
        nets.setdefault(r["label"], []).append(r)
    curves = {}
    for label, runs in nets.items():
        original = np.array([r["std"] for r in runs])
        ordered = -np.sort(-original, axis=1)
        curves[label] = {"depth": runs[0]["depth"], "residual": runs[0]["residual"], "runs": len(runs),
                         "original": (original.mean(0), original.min(0), original.max(0)),
                         "sorted": (ordered.mean(0), ordered.min(0), ordered.max(0))}
    return curves


def draw_responses(results: list[dict]) -> Figure:
    """The paper's two panels: std per layer in network order (top) and sorted descending (bottom).
    The seeds of a net are one line (their mean) in a band (their min to max); plain nets dashed,
    ResNets solid, one colour per depth."""
    fig = Figure(figsize=(7.5, 6.5), layout="constrained")
    top, bottom = fig.subplots(2, 1)
    curves = net_curves(results)
    depths = sorted({c["depth"] for c in curves.values()})
    colours = {d: f"C{i % 10}" for i, d in enumerate(depths)}
    for label, c in curves.items():
        colour = colours[c["depth"]]
        seeds = f" ({c['runs']} seeds)" if c["runs"] > 1 else ""
        for ax, key in ((top, "original"), (bottom, "sorted")):
            mean, low, high = c[key]
            index = np.arange(1, len(mean) + 1)
            ax.plot(index, mean, color=colour, ls="-" if c["residual"] else "--", lw=1.2, label=label + seeds)
            if c["runs"] > 1:
                ax.fill_between(index, low, high, color=colour, alpha=0.2, lw=0)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    highest = max(max(r["std"]) for r in results)
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.set_ylim(0, 1.05 * highest if math.isfinite(highest) else None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, ncols=2)
    images = sorted({r["images"] for r in results})
    fig.suptitle(f"std of each 3x3 layer's response (after BN, before addition/ReLU), pooled over "
                 f"{'/'.join(map(str, images))} evaluation images, channels and positions;\n"
                 "plain nets dashed, ResNets solid; a net's seeds: mean line, min-max band", fontsize=9)
    return fig
