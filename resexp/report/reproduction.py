"""`resexp report`: a reproduction report of He et al. 2015's CIFAR experiments from a sweep
directory, one Markdown file with its figures: Table 6 beside the paper's numbers, the two
claims of Figure 6 as tests with a verdict each, the recipe as run with every difference from
the paper's named, Figure 6 with seed bands, and the runs that were not counted.

The claims, each tested on the finished runs of the paper's CIFAR nets of one kind, one point per
run (its depth, its final training error: summary.json's train_error):
  (a) degradation: plain nets' final training error rises with depth (expects rho > 0);
  (b) no degradation: residual nets' final training error does not rise with depth; tested as
      "falls with depth" (expects rho < 0), as the paper's deeper ResNets end lower.
rho: Spearman's rank correlation of depth and final training error over all those runs
(average ranks for ties; 0 where all errors are equal). 95% CI: percentile bootstrap, 10,000
resamples of the runs with replacement within each depth (every depth keeps its number of runs),
numpy's default_rng(0), so the same runs give the same interval.
Verdict, the first rule that applies:
  1. undecided if the nets differ in more than depth (the paper's ResNet-110 warm-up aside), if
     there are fewer than 2 depths, or if a depth has fewer than 3 finished runs (running,
     stopped, failed and diverged runs do not count);
  2. reproduced if the whole CI lies on the claim's side of 0: lower bound > 0 for (a), upper
     bound < 0 for (b);
  3. not reproduced if the whole CI lies on the other side, 0 included: upper bound <= 0 for (a),
     lower bound >= 0 for (b);
  4. undecided otherwise: the CI straddles 0.

Table 6, ours: the final model's error on the evaluation split (no best-epoch pick), written as
the paper writes ResNet-110, "best (mean ± std, n seeds)" over the finished seeds (sample std,
ddof=1). The difference from the paper: ours mean - paper, in points and in our standard errors
(std / sqrt(n)); with one seed, or seeds that agree exactly (std 0), the paper's own spread,
ResNet-110's std 0.16 over 5 runs, stands in for ours (marked †). Only where the run's setting is
the paper's (CIFAR-10 test error of its nets, option A, width 1); otherwise the gap is named.
"""

from __future__ import annotations

import math
import shutil
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from resexp.config import flatten_keys
from resexp.errors import ResexpError
from resexp.report.figures import figure6
from resexp.report.paper import (
    PAPER_STD, comparison_gaps, config_value, recipe_differences, recipe_rows,
)
from resexp.report.runs import Run, UnreadableRun, group_runs, scan_runs
from resexp.report.tables import PAPER_CIFAR10

MIN_RUNS = 3  # finished runs per depth for a verdict
RESAMPLES = 10_000
LEVEL = 0.95
BOOTSTRAP_SEED = 0
REPORT = "report.md"
RESPONSES = "analysis/responses"  # what `resexp responses SWEEP_DIR` writes (.png, .pdf), under the sweep

RULE = (
    "ρ is Spearman's rank correlation of depth and final training error over the finished runs of one "
    "kind (plain or residual), one point per run (average ranks for ties; 0 where all errors are equal). "
    f"Its {LEVEL:.0%} CI is a percentile bootstrap: {RESAMPLES:,} resamples of the runs with replacement "
    f"within each depth, numpy seed {BOOTSTRAP_SEED}. Verdict, the first rule that applies: "
    "(1) **undecided** if the nets differ in more than depth (the paper's ResNet-110 warm-up aside), "
    f"there are fewer than 2 depths, or a depth has fewer than {MIN_RUNS} finished runs (running, stopped, "
    "failed and diverged runs do not count); (2) **reproduced** if the whole CI lies on the claim's side of "
    "0 (above for (a), below for (b)); (3) **not reproduced** if it lies on the other side, 0 included; "
    "(4) **undecided** otherwise (the CI straddles 0). (b) is tested as \"falls with depth\": the paper's "
    "deeper ResNets end with lower training error."
)


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    residual: bool  # tested on the residual nets, or on the plain ones
    sign: int  # the sign of rho the claim expects: +1, error rises with depth; -1, it falls


CLAIMS = (
    Claim("(a) degradation", "plain nets' final training error rises with depth", False, +1),
    Claim("(b) no degradation with shortcuts", "residual nets' final training error does not rise with depth",
          True, -1),
)


@dataclass
class ClaimTest:
    claim: Claim
    errors: dict[str, tuple[int, list[float]]]  # net label: (depth, final training errors of its finished runs)
    rho: float | None  # None: fewer than 2 depths with a finished run
    ci: tuple[float, float] | None
    verdict: str  # reproduced, not reproduced, undecided
    reason: str


def average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks along the last axis; tied values share the mean of their ranks."""
    below = (values[..., :, None] > values[..., None, :]).sum(-1)
    tied = (values[..., :, None] == values[..., None, :]).sum(-1)  # itself included
    return below + (tied + 1) / 2


def rank_correlation(x: Sequence[float], y: np.ndarray) -> np.ndarray:
    """Spearman's rho of x against each row of y (Pearson's r of their average ranks); 0 for a
    row (or x) whose values are all equal."""
    rx = average_ranks(np.asarray(x, dtype=float))
    ry = average_ranks(np.atleast_2d(np.asarray(y, dtype=float)))
    dx, dy = rx - rx.mean(), ry - ry.mean(-1, keepdims=True)
    num = (dy * dx).sum(-1)
    den = np.sqrt((dx**2).sum() * (dy**2).sum(-1))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def bootstrap_ci(by_depth: dict[int, list[float]], resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = BOOTSTRAP_SEED) -> tuple[float, float]:
    """Percentile bootstrap CI of rho(depth, error): the runs resampled with replacement within each depth."""
    rng = np.random.default_rng(seed)
    depths = sorted(by_depth)
    x = np.repeat(depths, [len(by_depth[d]) for d in depths])
    y = np.concatenate([np.asarray(by_depth[d], dtype=float)[rng.integers(0, len(by_depth[d]),
                                                                            (resamples, len(by_depth[d])))]
                        for d in depths], axis=1)
    low, high = np.quantile(rank_correlation(x, y), [(1 - level) / 2, (1 + level) / 2])
    return float(low), float(high)


def judge_claim(claim: Claim, groups: dict[str, list[Run]]) -> ClaimTest:
    """The claim tested on the sweep's nets of its kind (see the module's docstring)."""
    nets = {label: runs for label, runs in groups.items()
            if config_value(runs[0], "model.arch") == "cifar_resnet" and runs[0].residual == claim.residual}
    errors = {label: (runs[0].depth, [float(r.summary["train_error"]) for r in runs if r.status == "finished"])
              for label, runs in sorted(nets.items(), key=lambda item: item[1][0].depth)}
    kind = "residual" if claim.residual else "plain"
    differing = _differing_keys([runs[0] for runs in nets.values()])
    if differing:  # no rho: two nets of one depth would be one point set
        return ClaimTest(claim, errors, None, None, "undecided", f"the {kind} nets differ in more than depth: "
                         + ", ".join(differing))
    scored = {depth: values for depth, values in errors.values() if values}
    rho = ci = None
    if len(scored) >= 2:  # shown even when too few runs leave the verdict undecided
        x = [depth for depth, values in scored.items() for _ in values]
        rho = float(rank_correlation(x, [v for values in scored.values() for v in values])[0])
        ci = bootstrap_ci(scored)
    if len(errors) < 2:
        found = f" ({', '.join(errors)})" if errors else ""
        return ClaimTest(claim, errors, rho, ci, "undecided", f"{len(errors)} {kind} depth(s){found}, 2 needed")
    short = [f"{label} has {len(values)}" for label, (_, values) in errors.items() if len(values) < MIN_RUNS]
    if short:
        return ClaimTest(claim, errors, rho, ci, "undecided",
                         f"too few finished runs: {', '.join(short)} ({MIN_RUNS} per depth needed)")
    low, high = ci
    expected = low > 0 if claim.sign > 0 else high < 0
    opposite = high <= 0 if claim.sign > 0 else low >= 0
    side = "above" if claim.sign > 0 else "below"
    if expected:
        return ClaimTest(claim, errors, rho, ci, "reproduced", f"the whole CI is {side} 0")
    if opposite:
        return ClaimTest(claim, errors, rho, ci, "not reproduced",
                         f"the whole CI is {'at or below' if claim.sign > 0 else 'at or above'} 0")
    return ClaimTest(claim, errors, rho, ci, "undecided", "the CI straddles 0")


def paper_convention(values: Sequence[float]) -> str:
    """Errors as the paper writes ResNet-110's "6.43 (6.61±0.16)": best, then mean ± sample std
    and the number of seeds."""
    if not values:
        return "— (no finished run)"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{min(values):.2f} ({statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}, {len(values)} seeds)"


def difference(values: Sequence[float], paper: float) -> str:
    """Our mean minus the paper's value, in points and in our standard errors; † where the paper's
    std stands in for ours (one seed, or std 0)."""
    mean = statistics.fmean(values)
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    stand_in = std == 0
    z = (mean - paper) / ((PAPER_STD if stand_in else std) / math.sqrt(len(values)))
    return f"{mean - paper:+.2f} pts = {z:+.1f} SE{'†' if stand_in else ''}"


def evaluation(run: Run) -> str:
    """What the model-selection column says: resexp reports the final model, never a best-epoch pick."""
    if run.eval_split == "val":
        return (f"final model; evaluated on the val split ({config_value(run, 'data.val_size'):,} held-out "
                "training images; no selection)")
    return "final model; evaluated on test (no selection)"


def ordered_groups(runs: list[Run]) -> dict[str, list[Run]]:
    """group_runs, plain nets first, then residual, each by depth: the paper's order."""
    return dict(sorted(group_runs(runs).items(), key=lambda item: (item[1][0].residual, item[1][0].depth, item[0])))


def missing_seeds(groups: dict[str, list[Run]]) -> dict[str, list[int]]:
    """Per net, the seeds that other nets of the sweep have and it has not (no run directory, or
    one without a summary.json)."""
    seeds = sorted({run.seed for runs in groups.values() for run in runs})
    missing = {label: [s for s in seeds if s not in {run.seed for run in runs}] for label, runs in groups.items()}
    return {label: gone for label, gone in missing.items() if gone}


def table_lines(groups: dict[str, list[Run]], missing: dict[str, list[int]]) -> list[str]:
    """Table 6 side by side, in Markdown, a row per net in the order of groups."""
    lines = ["| net | paper, CIFAR-10 test error (%) | ours (%): best (mean ± std, n seeds) | ours − paper "
             "(mean, in our SE) | model selection | runs |", "|---|---|---|---|---|---|"]
    for label, runs in groups.items():
        first = runs[0]
        values = [float(r.summary[f"{r.eval_split}_error"]) for r in runs if r.status == "finished"]
        paper = (PAPER_CIFAR10.get((first.residual, first.depth))
                 if config_value(first, "model.arch") == "cifar_resnet" else None)
        gaps = comparison_gaps(first)
        if paper is None:
            diff = "—"
        elif gaps:
            diff = "n/a, not the paper's setting: " + "; ".join(gaps)
        else:
            diff = difference(values, paper[0]) if values else "—"
        counts = Counter(r.status for r in runs)
        status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if label in missing:
            status += f", {len(missing[label])} missing"
        lines.append(f"| {label} | {paper[1] if paper else '—'} | {paper_convention(values)} | {diff} | "
                     f"{evaluation(first)} | {status} |")
    return lines


def claim_lines(tests: list[ClaimTest]) -> list[str]:
    """The claims' verdicts, a table of their numbers, and the final training errors they rest on."""
    lines = ["| claim | ρ (depth, final train error) | 95% CI | verdict |", "|---|---|---|---|"]
    for t in tests:
        rho = "—" if t.rho is None else f"{t.rho:+.3f}"
        ci = "—" if t.ci is None else f"[{t.ci[0]:+.3f}, {t.ci[1]:+.3f}]"
        lines.append(f"| {t.claim.name}: {t.claim.statement} | {rho} | {ci} | **{t.verdict}** ({t.reason}) |")
    lines += ["", "Final training error (%) of each finished run, the points the tests use:", ""]
    for t in tests:
        for label, (_, values) in t.errors.items():
            shown = ", ".join(f"{v:.2f}" for v in values) or "none finished"
            lines.append(f"- {label}: {shown}")
    return lines


def not_counted_lines(runs: list[Run], groups: dict[str, list[Run]], missing: dict[str, list[int]],
                      unreadable: Sequence[UnreadableRun], sweep_dir: Path) -> list[str]:
    """The runs left out of every number: unfinished, failed or diverged; missing; unreadable."""
    label_of = {id(run): label for label, members in groups.items() for run in members}
    lines = []
    for run in runs:
        if run.status == "finished":
            continue
        summary = run.summary
        note = summary.get("diverged_reason") or summary.get("error") or (
            f"by {summary['stopped_by']}" if summary.get("stopped_by") else "")
        lines.append(f"- {label_of[id(run)]} seed {run.seed} (`{_relative(run.path, sweep_dir)}`): {run.status} at "
                     f"iteration {summary.get('iterations', '?')}/{summary.get('max_iters', '?')}"
                     + (f": {note}" if note else ""))
    lines += [f"- {label} seed {seed}: missing (no run with a summary.json; the sweep's other nets have this seed)"
              for label, seeds in missing.items() for seed in seeds]
    lines += [f"- `{_relative(u.path, sweep_dir)}`: unreadable ({u.reason})" for u in unreadable]
    return lines or ["None: every run of the sweep finished and is counted."]


def render(runs: list[Run], unreadable: Sequence[UnreadableRun], sweep_dir: Path, figure6_note: str | None,
           figure7: str | None) -> str:
    """The report's Markdown. figure6_note: why Figure 6 was not drawn (None: it was); figure7: the
    file name of the copied Figure 7 (None: there is none)."""
    groups = ordered_groups(runs)
    missing = missing_seeds(groups)
    tests = [judge_claim(claim, groups) for claim in CLAIMS]
    labelled = [(label, run) for label, members in groups.items() for run in members]
    finished = [r for r in runs if r.status == "finished"]
    wall = [float(r.summary["wall_time_s"]) for r in finished if "wall_time_s" in r.summary]
    differences = recipe_differences(labelled)
    counts = ", ".join(f"{n} {s}" for s, n in sorted(Counter(r.status for r in runs).items()))
    parts = [
        "# Reproduction report: He et al. 2015, plain vs residual CIFAR nets",
        "",
        f"Sweep `{sweep_dir}`: {len(runs)} runs read ({counts}) of {len(groups)} nets"
        + (f", {sum(map(len, missing.values()))} missing" if missing else "")
        + (f", {len(unreadable)} unreadable" if unreadable else "")
        + (f". Budget: {_duration(sum(wall))} of training in all over the {len(wall)} finished runs "
           f"(their summary.json wall_time_s; {_duration(min(wall))} to {_duration(max(wall))} per run)." if wall
           else "."),
        "",
        "## The claims of Figure 6",
        "",
        *claim_lines(tests),
        "",
        f"Rule: {RULE}",
        "",
        ("The verdicts are for the recipe as run (below), which differs from the paper's in "
         + ", ".join(name for name, _ in differences)
         + ": they say what this budget shows, not what the paper's recipe would." if differences
         else "The recipe as run is the paper's (below)."),
        "",
        "## Table 6 side by side",
        "",
        *table_lines(groups, missing),
        "",
        "Paper: He et al. 2015, Table 6 (CIFAR-10 test error, final models trained on all 50k images; the "
        "schedule was chosen on a 45k/5k split): for ResNet-110 best of 5 runs (mean ± std), for the other "
        "nets one number. Plain nets are not in Table 6: ≈ read off Figure 6. "
        "Ours: the final model's error on the run's evaluation split, over the finished seeds (sample std). "
        f"ours − paper: our mean minus the paper's value, in points and in our standard errors (std/√n); † = one "
        f"seed or std 0, so the paper's only reported spread (ResNet-110, std {PAPER_STD} over 5 runs) stands in "
        "for ours. n/a: the run's setting is not the paper's, named there.",
        "",
        "## Figure 6",
        "",
        *([f"Not drawn: {figure6_note}."] if figure6_note else
          ["![Figure 6: dashed training error, bold evaluation error, shaded min-max over seeds](figure6.png)", "",
           "Also `figure6.pdf`. Finished seeds of a net are one curve (mean, shaded min-max); each unfinished run "
           "is its own curve, drawn as far as it got."]),
        "",
        "## Figure 7",
        "",
        *([f"![Figure 7: std of layer responses]({figure7}.png)", "",
           f"Drawn by `resexp responses` from the checkpoints, copied from `{sweep_dir / RESPONSES}.png`."]
          if figure7 else
          ["Not in the training logs: the probes log per-block gradient norms, stream norms, angular distances "
           "and skip-loss changes, not the std of each 3×3 conv's response. It needs the checkpoints (and torch): "
           f"`resexp responses {sweep_dir}` writes `{sweep_dir / RESPONSES}.png` (.pdf, .json, .csv); "
           "`resexp report` copies it here when it is there."]),
        "",
        "## The recipe as run",
        "",
        "| setting | paper | as run |",
        "|---|---|---|",
        *(f"| {name} | {paper} | {as_run} |" for name, paper, as_run in recipe_rows(labelled)),
        "",
        "Differences from the paper's recipe:",
        "",
        *([f"- {name}: {text}" for name, text in differences] or ["- none"]),
        "",
        "## Runs not counted",
        "",
        *not_counted_lines(runs, groups, missing, unreadable, sweep_dir),
    ]
    return "\n".join(parts) + "\n"


def reproduction_report(sweep_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the report (report.md), Figure 6 (PNG, PDF) and, when `resexp responses` has drawn it,
    Figure 7 to out_dir (default SWEEP_DIR/report); returns the paths written. A one-line
    ResexpError for a folder without readable runs."""
    sweep = Path(sweep_dir)
    runs, unreadable = scan_runs(sweep)
    out = Path(out_dir) if out_dir is not None else sweep / "report"
    out.mkdir(parents=True, exist_ok=True)
    try:
        written = figure6(runs, out / "figure6.png")
        figure6_note = None
    except ResexpError as e:  # no run has logged an error yet: the report says so instead
        written, figure6_note = [], str(e)
    drawn = [(sweep / RESPONSES).with_suffix(suffix) for suffix in (".png", ".pdf")]
    figure7 = "figure7" if drawn[0].is_file() else None
    if figure7:
        written += [Path(shutil.copyfile(p, out / f"{figure7}{p.suffix}")) for p in drawn if p.is_file()]
    path = out / REPORT
    path.write_text(render(runs, unreadable, sweep, figure6_note, figure7))
    return [path, *written]


def _differing_keys(runs: list[Run]) -> list[str]:
    """The config keys in which the runs differ besides depth (and name, and the paper's per-depth warm-up)."""
    flat = [flatten_keys(run.identity) for run in runs]
    keys = set().union(*flat) - {"model.depth", "model.name"}
    keys = {k for k in keys if not k.startswith("optim.error_warmup")}
    return sorted(k for k in keys if len({repr(f.get(k)) for f in flat}) > 1)


def _relative(path: Path, root: Path) -> Path:
    return path.relative_to(root) if path.is_relative_to(root) else path


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min {secs} s" if minutes else f"{secs} s"
