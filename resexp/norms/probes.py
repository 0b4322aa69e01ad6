"""Per-block probes of a run (probe/<probe>/block_XXX scalars, logged by the ViT during training):
at which steps every block logged them, and one probe's values across blocks at a step.

Notebook use:
    runs = find_runs("runs/norms")
    probe_steps(runs[0], "stream_norm")           # [0, 100, 200]
    block_profile(runs[0], "grad_norm", "init")   # (depth,): gradient norm per block at step 0
"""

from __future__ import annotations

import numpy as np

from resexp.errors import ResexpError
from resexp.runs import Run


def probe_steps(run: Run, probe: str) -> list[int]:
    """The steps at which every block of the run logged probe/<probe>/block_XXX; [] if none."""
    tags = _probe_tags(run, probe)
    if any(tag not in run.series for tag in tags):
        return []
    return sorted(set.intersection(*(set(run.series[tag][0]) for tag in tags)))


def block_profile(run: Run, probe: str, step: str | int = "init") -> np.ndarray:
    """One probe ("grad_norm", "stream_norm", "rel_update") per block, shape (depth,).

    step: "init" (step 0, before the first update), "last" (the last step every block logged)
    or an iteration. Values are as TensorBoard stored them (float32).
    """
    at = resolve_step(run, probe, step)
    if at is None:
        steps = probe_steps(run, probe)
        logged = f"logged at steps {steps[0]}..{steps[-1]}" if steps else "not logged for every block"
        raise ResexpError(f"{run.path}: no probe/{probe} at step {step!r} ({logged})")
    return np.array([values[steps.index(at)] for steps, values in (run.series[t] for t in _probe_tags(run, probe))])


def resolve_step(run: Run, probe: str, step: str | int) -> int | None:
    """The iteration `step` names ("init", "last" or an iteration, as for block_profile), if every
    block logged the probe there; else None."""
    steps = probe_steps(run, probe)
    if not steps:
        return None
    at = {"init": 0, "last": steps[-1]}.get(step, step) if isinstance(step, str) else int(step)
    return at if at in steps else None


def _probe_tags(run: Run, probe: str) -> list[str]:
    return [f"probe/{probe}/block_{block:03d}" for block in range(run.depth)]
