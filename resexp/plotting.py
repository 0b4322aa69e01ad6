"""What every figure of resexp shares: a seed band (mean and min-max over seeds), the markers of
unfinished runs, and writing a figure as PNG and PDF."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from resexp.files import output_path
from resexp.runs import Run

UNFINISHED_MARKERS = {"diverged": "X", "failed": "s", "running": "o"}


@dataclass
class Band:
    """One error curve over seeds, on the steps every seed logged."""

    steps: np.ndarray
    mean: np.ndarray
    min: np.ndarray
    max: np.ndarray


def seed_band(runs: list[Run], tag: str) -> Band | None:
    """The band of the runs that logged `tag` (None if none did), on the steps all of them logged."""
    by_step = [dict(zip(*r.series[tag])) for r in runs if tag in r.series]
    if not by_step:
        return None
    common = sorted(set.intersection(*(set(d) for d in by_step)))
    if not common:
        return None
    values = np.array([[d[s] for s in common] for d in by_step])
    return Band(np.array(common), values.mean(0), values.min(0), values.max(0))


def save_figure(fig: Figure, out_path: str | Path) -> list[Path]:
    """Write fig as PNG and PDF (out_path with each suffix); returns both paths."""
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out.with_suffix(".png"), out.with_suffix(".pdf")]
    for path in paths:
        with output_path(path) as tmp:  # written whole: a full disk keeps the previous figure
            # No creation date in the PDF: the same runs redraw the same bytes.
            fig.savefig(tmp, dpi=150, format=path.suffix[1:],
                        metadata={"CreationDate": None} if path.suffix == ".pdf" else None)
    return paths
