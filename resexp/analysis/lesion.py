"""The lesion study of Veit, Wilber and Belongie (2016, "Residual Networks Behave Like Ensembles
of Relatively Shallow Networks"), at test time on a trained cifar_resnet run:

- delete each block in turn: the block becomes its shortcut alone (identity; at a downsampling
  block the option-A subsampling and zero channels, or option B's trained projection), i.e.
  relu(shortcut(x)), the block's output with its residual branch removed;
- delete k random blocks, several draws per k;
- swap k random pairs of blocks of the same stage and shape.

A plain net gets the same treatment: its deleted block is replaced by the parameter-free path a
shortcut would have given (identity, or option A at a downsampling block), so the contrast with
its residual twin is measured, not assumed. Expected (Veit et al.): a ResNet's error rises only
slightly for most single deletions and smoothly with k; a plain net's goes to chance.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from matplotlib.figure import Figure
from rich.progress import Progress
from torch import nn

from resexp.analysis.trained import EVAL_BATCH, TrainedRun, expand_runs, load_run, require_arch
from resexp.engine.evaluate import evaluate
from resexp.errors import ResexpError
from resexp.models.surgery import blocks_of, lesioned
from resexp.plotting import save_figure


def swappable(model: nn.Module) -> list[tuple[int, int]]:
    """Blocks that keep their input's shape (not the first of a downsampling stage): any two of
    the same stage can trade places."""
    return [(s, b) for s, b in blocks_of(model) if b > 0 or s == 0]


def draw_pairs(candidates: list[tuple[int, int]], k: int, rng: random.Random) -> list | None:
    """k disjoint random pairs of blocks of the same stage; None if there are not enough."""
    by_stage: dict[int, list[tuple[int, int]]] = {}
    for block in candidates:
        by_stage.setdefault(block[0], []).append(block)
    pool = [b for blocks in by_stage.values() for b in blocks]
    for _ in range(100):  # rejection sampling: retry until k same-stage pairs are found
        rng.shuffle(pool)
        pairs, left = [], list(pool)
        while left and len(pairs) < k:
            first = left.pop()
            partner = next((b for b in left if b[0] == first[0]), None)
            if partner is not None:
                left.remove(partner)
                pairs.append((first, partner))
        if len(pairs) == k:
            return pairs
    return None


def lesion_study(run: TrainedRun, ks: list[int], draws: int, limit: int | None, seed: int,
                 progress: Progress | None = None) -> dict:
    """Test error with each block deleted, with k random blocks deleted and k random pairs swapped."""
    model, rng = run.model, random.Random(seed)
    blocks = blocks_of(model)
    evaluations = len(blocks) + 2 * len(ks) * draws + 1
    task = progress.add_task(run.label, total=evaluations) if progress else None

    def measure(**change) -> float:
        with lesioned(model, **change):
            error = evaluate(model, run.data, EVAL_BATCH, limit=limit)[0]
        if progress:
            progress.advance(task)
        return error

    baseline = measure()
    single = [measure(deleted=[block]) for block in blocks]
    deleted = {k: [measure(deleted=rng.sample(blocks, k)) for _ in range(draws)] for k in ks if k <= len(blocks)}
    swapped = {}
    for k in ks:
        pairs = [draw_pairs(swappable(model), k, rng) for _ in range(draws)]
        if all(p is not None for p in pairs):
            swapped[k] = [measure(swapped=p) for p in pairs]
    return {"run": str(run.path), "label": run.label, "residual": bool(run.config.model.residual),
            "depth": int(run.config.model.depth), "baseline_error": baseline,
            "chance_error": 100.0 * (1 - 1 / run.data.num_classes),
            "blocks": [f"stages.{s}.{b}" for s, b in blocks], "single_deletion_error": single,
            "random_deletion_error": {str(k): v for k, v in deleted.items()},
            "swap_error": {str(k): v for k, v in swapped.items()}}


def lesion(paths: list[str | Path], out_dir: Path, ks: list[int], draws: int = 5, limit: int | None = None,
           device: str = "auto", seed: int = 0, unfinished: bool = False) -> list[Path]:
    """The lesion study of each run given (runs or sweeps): lesion.png/.pdf and lesion.json in out_dir."""
    runs = [load_run(run_dir, device, unfinished) for run_dir in expand_runs(paths)]
    for run in runs:  # every refusal before the first evaluation
        require_arch(run, "cifar_resnet", "resexp lesion")
    with Progress() as progress:
        results = [lesion_study(run, ks, draws, limit, seed, progress) for run in runs]
    results.sort(key=lambda r: (r["residual"], r["depth"], r["run"]))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "lesion.json").write_text(json.dumps(results, indent=1) + "\n")
    return [*save_figure(draw_lesion(results), out_dir / "lesion.png"), out_dir / "lesion.json"]


def parse_counts(text: str) -> list[int]:
    """--k's "1,2,4,8": the numbers of blocks deleted / pairs swapped, sorted, each once."""
    try:
        counts = sorted({int(k) for k in text.split(",")})
    except ValueError:
        counts = []
    if not counts or counts[0] < 1:
        raise ResexpError(f"--k takes positive integers separated by commas, e.g. 1,2,4,8; got '{text}'")
    return counts


def draw_lesion(results: list[dict]) -> Figure:
    """Three panels: error per deleted block, error against k deleted blocks, against k swaps."""
    fig = Figure(figsize=(15, 4.2), layout="constrained")
    per_block, deleted, swapped = fig.subplots(1, 3)
    for i, r in enumerate(results):
        colour, style = f"C{i % 10}", "-" if r["residual"] else "--"
        index = range(1, len(r["blocks"]) + 1)
        per_block.plot(index, r["single_deletion_error"], style, color=colour, marker="o", ms=3, label=r["label"])
        per_block.axhline(r["baseline_error"], color=colour, lw=0.8, ls=":")
        for ax, series in ((deleted, r["random_deletion_error"]), (swapped, r["swap_error"])):
            if not series:
                continue
            ks = [int(k) for k in series]
            errors = torch.tensor([series[str(k)] for k in ks])
            ax.plot([0, *ks], [r["baseline_error"], *errors.mean(1).tolist()], style, color=colour, marker="o",
                    ms=3, label=r["label"])
            ax.fill_between(ks, errors.min(1).values, errors.max(1).values, color=colour, alpha=0.15, lw=0)
    chance = results[0]["chance_error"]
    per_block.set(xlabel="deleted block (network order)", ylabel="test error (%)",
                  title="one block deleted (dotted: nothing deleted)")
    deleted.set(xlabel="blocks deleted at random (k)", title="k random blocks deleted: mean, min-max")
    swapped.set(xlabel="pairs of blocks swapped (k)", title="k random same-stage pairs swapped")
    for ax in (per_block, deleted, swapped):
        ax.axhline(chance, color="0.5", lw=0.8, ls="-.")
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"lesion study (Veit et al. 2016); dash-dot: chance ({chance:.0f}%); plain nets dashed", fontsize=9)
    return fig
