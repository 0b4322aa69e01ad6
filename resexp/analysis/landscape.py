"""Loss landscapes of trained runs (Li, Xu, Taylor, Studer, Goldstein 2018, "Visualizing the Loss
Landscape of Neural Nets"): the loss along one or two filter-normalised random directions through
the trained weights, as in their net_plotter.py and plot_surface.py.

Filter normalisation is what makes landscapes of different nets comparable: each filter of a
direction gets the norm of the same filter of the trained weights, so a step of 1 moves every
filter by its own size, whatever scale BN let the weights drift to.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogFormatterSciNotation, LogLocator
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from torch import nn

from resexp.analysis.trained import EVAL_BATCH, TrainedRun, load_run
from resexp.data import Data
from resexp.engine.evaluate import evaluate
from resexp.errors import ResexpError
from resexp.files import atomic_path, write_json
from resexp.plotting import save_figure

Direction = list[torch.Tensor]  # one tensor per model.parameters() entry, same shapes
CONTOUR_LEVELS = 30


def check_settings(grid: int, span: float, dims: int, limit: int | None) -> None:
    """One line for settings that cannot make a landscape, before any run is loaded."""
    if dims not in (1, 2):
        raise ResexpError(f"dims must be 1 (a line) or 2 (a surface), not {dims}")
    if grid < 3 or grid % 2 == 0:
        raise ResexpError(f"grid must be an odd number >= 3 (so that the trained weights, at 0, are a grid point), "
                          f"not {grid}")
    if not span > 0:
        raise ResexpError(f"span must be > 0 (the grid runs from -span to span), not {span}")
    if limit is not None and limit < 1:
        raise ResexpError(f"limit must be >= 1 evaluation images (or unset for all), not {limit}")


def filter_normalised_direction(model: nn.Module, generator: torch.Generator) -> Direction:
    """A Gaussian direction with each filter (slice along dim 0) of every weight with dim > 1
    rescaled to the norm of the trained filter; zero for BN parameters and biases (dim <= 1),
    which Li et al. leave at their trained values because their scale carries no meaning of
    its own. Drawn on the CPU so that a seed gives the same direction on every device."""
    direction = []
    for weight in model.parameters():
        if weight.dim() <= 1:
            direction.append(torch.zeros_like(weight))
            continue
        gaussian = torch.randn(weight.shape, generator=generator, dtype=weight.dtype).to(weight.device)
        filter_dims = tuple(range(1, weight.dim()))
        filter_norms = torch.linalg.vector_norm(weight.detach(), dim=filter_dims, keepdim=True)
        gaussian_norms = torch.linalg.vector_norm(gaussian, dim=filter_dims, keepdim=True)
        # The epsilon only guards an all-zero Gaussian filter; net_plotter.py adds the same.
        direction.append(gaussian * filter_norms / (gaussian_norms + 1e-10))
    return direction


def random_directions(model: nn.Module, dims: int, seed: int) -> list[Direction]:
    """`dims` filter-normalised directions drawn one after another from one seeded generator:
    the same seed gives the same plane, so a landscape can be recomputed or extended."""
    generator = torch.Generator().manual_seed(seed)
    return [filter_normalised_direction(model, generator) for _ in range(dims)]


def grid_coordinates(grid: int, span: float) -> np.ndarray:
    """linspace(-span, span, grid); with an odd grid its middle entry is exactly 0."""
    return np.linspace(-span, span, grid)


@torch.no_grad()
def evaluate_grid(
    model: nn.Module,
    data: Data,
    directions: list[Direction],
    coords: np.ndarray,
    limit: int | None = None,
    description: str = "landscape",
) -> tuple[np.ndarray, np.ndarray]:
    """Loss and error (%) of the weights theta + alpha*d1 (+ beta*d2) at every point of the grid
    coords[0] (x coords[1]) on the first `limit` evaluation images; arrays indexed [alpha(, beta)].

    BN keeps the trained running statistics (the model's eval mode), as in Li et al. The model's
    weights are restored exactly afterwards, also when the evaluation fails or is interrupted.
    """
    weights = list(model.parameters())
    trained = [w.detach().clone() for w in weights]
    shape = tuple(len(axis) for axis in coords)
    loss, error = np.empty(shape), np.empty(shape)
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    try:
        with Progress(*columns) as progress:
            for index in progress.track(list(np.ndindex(shape)), description=description):
                steps = [float(axis[i]) for axis, i in zip(coords, index)]
                for weight, theta, *components in zip(weights, trained, *directions):
                    weight.copy_(theta + sum(step * d for step, d in zip(steps, components)))
                error[index], loss[index] = evaluate(model, data, EVAL_BATCH, limit=limit)
    finally:
        for weight, theta in zip(weights, trained):
            weight.copy_(theta)
    return loss, error


def landscape_settings(run: TrainedRun, grid: int, span: float, dims: int, limit: int | None,
                       seed: int) -> dict[str, Any]:
    """What a saved grid depends on: a saved grid is reused only when all of it matches (the run's
    path as given, so that committed grids replot in a fresh clone, and its checkpoint iteration,
    so that a run trained further is evaluated afresh)."""
    return {"run": str(run.path), "iteration": run.iteration, "grid": grid, "span": span, "dims": dims,
            "limit": limit, "seed": seed}


def load_saved_grid(path: Path, settings: dict[str, Any]) -> dict[str, np.ndarray] | None:
    """The arrays of a grid saved with exactly these settings, else None (absent, other settings,
    or unreadable: it is only a cache, rewritten by the next evaluation)."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as saved:
            if json.loads(str(saved["settings"])) != settings:
                return None
            return {key: saved[key] for key in ("coords", "loss", "error")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None


def save_grid(npz_path: Path, json_path: Path, run: TrainedRun, settings: dict[str, Any],
              result: dict[str, np.ndarray]) -> None:
    """The numbers (.npz, settings as JSON text so that no pickle is needed to read them) and a
    small JSON summary for reading without numpy."""
    with atomic_path(npz_path) as tmp, tmp.open("wb") as f:  # a file object: savez would append .npz to a name
        np.savez(f, settings=np.array(json.dumps(settings)), **result)
    loss, error = result["loss"], result["error"]
    centre = tuple(len(axis) // 2 for axis in result["coords"])
    write_json(json_path, {
        "label": run.label, "run": str(run.path), "settings": settings,
        "centre_loss": float(loss[centre]), "centre_error": float(error[centre]),
        "min_loss": float(np.nanmin(loss)), "max_loss": float(np.nanmax(loss)),
    })


def landscape(
    run_dirs: list[str | Path],
    out_dir: Path,
    grid: int = 51,
    span: float = 1.0,
    dims: int = 2,
    limit: int | None = None,
    device: str = "auto",
    seed: int = 0,
    unfinished: bool = False,
    force: bool = False,
) -> list[Path]:
    """Evaluate (or reuse from out_dir, unless force) each run's landscape, save its numbers as
    out_dir/landscape_<run dir name>.npz and .json, and draw all runs side by side in
    out_dir/landscape.png and .pdf. Returns every path written."""
    check_settings(grid, span, dims, limit)
    names = [Path(d).name for d in run_dirs]
    if not names:
        raise ResexpError("no runs given; give one or more run directories")
    if len(set(names)) < len(names):
        raise ResexpError(f"two runs share a directory name ({', '.join(sorted(names))}); their saved grids would "
                          "overwrite each other: draw them into separate output directories")
    out_dir = Path(out_dir)
    coords = np.stack([grid_coordinates(grid, span)] * dims)
    runs, results, written = [], [], []
    for run_dir in run_dirs:
        run = load_run(run_dir, device, unfinished)
        settings = landscape_settings(run, grid, span, dims, limit, seed)
        npz_path = out_dir / f"landscape_{run.path.name}.npz"
        result = None if force else load_saved_grid(npz_path, settings)
        if result is None:
            directions = random_directions(run.model, dims, seed)
            loss, error = evaluate_grid(run.model, run.data, directions, coords, limit, run.label)
            result = {"coords": coords, "loss": loss, "error": error}
        out_dir.mkdir(parents=True, exist_ok=True)  # once the run has loaded: a wrong path creates nothing
        json_path = npz_path.with_suffix(".json")
        save_grid(npz_path, json_path, run, settings, result)
        runs.append(run)
        results.append(result)
        written += [npz_path, json_path]
    titles = [run.label for run in runs]
    if len(set(titles)) < len(titles):  # e.g. two seeds of one model: the directory tells them apart
        titles = [f"{run.label} ({run.path.name})" for run in runs]
    fig = draw_surfaces(titles, results) if dims == 2 else draw_lines(titles, results)
    return written + save_figure(fig, out_dir / "landscape.png")


def log_levels(losses: list[np.ndarray]) -> np.ndarray:
    """Contour levels spaced evenly in log loss over all runs, so that equal levels mean equal
    losses across the panels and the narrow basin at the centre gets as many lines as the walls."""
    values = np.concatenate([loss.ravel() for loss in losses])
    positive = values[np.isfinite(values) & (values > 0)]  # a loss of exactly 0 (or inf, nan) has no log
    bottom, top = (float(positive.min()), float(positive.max())) if positive.size else (1.0, 1.0)
    return np.geomspace(bottom, top, CONTOUR_LEVELS) if top > bottom else np.array([bottom * 0.9, top * 1.1])


def draw_surfaces(titles: list[str], results: list[dict[str, np.ndarray]]) -> Figure:
    """Two-dimensional landscapes: contours (top) and 3-D surfaces of log10 loss (bottom), one
    column per run, on shared levels and z range so that the columns compare. The surfaces are
    in log10 because the walls rise by orders of magnitude: on a linear axis one spike flattens
    every basin (and mplot3d has no log axis)."""
    levels = log_levels([r["loss"] for r in results])
    norm = LogNorm(levels[0], levels[-1])
    log_range = (np.log10(levels[0]), np.log10(levels[-1]))
    fig = Figure(figsize=(4.2 * len(results) + 1, 8.4), layout="constrained")
    contour_axes = []
    for column, (title, result) in enumerate(zip(titles, results)):
        alpha, beta = np.meshgrid(*result["coords"], indexing="ij")
        loss = result["loss"]
        contour_ax = fig.add_subplot(2, len(results), column + 1)
        lines = contour_ax.contour(alpha, beta, loss, levels=levels, cmap="viridis", norm=norm, linewidths=0.8)
        contour_ax.clabel(lines, lines.levels[::3], fontsize=6, fmt="%.3g")
        contour_ax.plot(0, 0, "r+", markersize=8)
        contour_ax.set(title=title, xlabel="α (direction 1)", ylabel="β (direction 2)", aspect="equal")
        contour_axes.append(contour_ax)
        surface_ax = fig.add_subplot(2, len(results), len(results) + column + 1, projection="3d")
        # Clipped at the lowest level: a loss of exactly 0 would be -inf.
        surface_ax.plot_surface(alpha, beta, np.log10(np.maximum(loss, levels[0])), cmap="viridis",
                                vmin=log_range[0], vmax=log_range[1], linewidth=0, antialiased=True)
        surface_ax.set(xlabel="α", ylabel="β", zlabel="log10 loss", zlim=log_range)
    fig.colorbar(lines, ax=contour_axes, label="test loss (shared levels)", ticks=LogLocator(),
                 format=LogFormatterSciNotation())
    fig.suptitle("Loss along two filter-normalised random directions (Li et al. 2018)")
    return fig


def draw_lines(titles: list[str], results: list[dict[str, np.ndarray]]) -> Figure:
    """One-dimensional landscapes: loss (log scale, as walls grow by orders of magnitude) and
    error against alpha, one line per run."""
    fig = Figure(figsize=(10, 4.2), layout="constrained")
    loss_ax, error_ax = fig.subplots(1, 2)
    for title, result in zip(titles, results):
        alpha = result["coords"][0]
        loss_ax.plot(alpha, result["loss"], label=title)
        error_ax.plot(alpha, result["error"], label=title)
    loss_ax.set(xlabel="α (filter-normalised direction)", ylabel="test loss", yscale="log")
    error_ax.set(xlabel="α (filter-normalised direction)", ylabel="test error (%)")
    loss_ax.legend()
    fig.suptitle("Loss along a filter-normalised random direction (Li et al. 2018)")
    return fig
