"""`resexp report`: a reproduction report of He et al. 2015's CIFAR experiments from a sweep
directory, one Markdown file with its figures: Table 6 beside the paper's numbers, the two
claims of Figure 6 as tests with a verdict each, the recipe as run with every difference from
the paper's named, Figure 6 with seed bands, and the runs that were not counted.

The claims (CLAIMS), each tested on the finished runs of the paper's CIFAR nets of one kind, one
point per run (its depth, its final training error: summary.json's train_error), and the rule of
their verdicts: RULE below, the rule's one statement, which the report prints and the README
quotes. rho is rank_correlation (spearmanr's definition, vectorised over the permutation test's
orderings), p is permutation_p (scipy.stats.permutation_test; drawn orderings give
p = (1 + as far) / (1 + RESAMPLES)), the interval depth_gap (scipy.stats.ttest_ind, Welch).

Table 6, ours: the final model's error on the evaluation split (no best-epoch pick), written as
the paper writes ResNet-110, "best (mean ± std, n seeds)" over the finished seeds (sample std,
ddof=1). The difference from the paper: our mean minus the paper's mean (ResNet-110's 6.61 over 5
runs; for the other nets the paper's one number), in points and in standard errors of that
difference, sqrt(s²/n + s_p²/n_p): s our std over n seeds; s_p, n_p the paper's (0.16 over 5
runs for ResNet-110; a single number is one run, whose spread is taken to be ours). With one seed,
or seeds that agree exactly (std 0), there is no spread of ours: no SE, the cell says so (the
paper's 0.16 is not borrowed: public ResNet-56 spreads over seeds are 0.27-0.5 points). Only where the run's setting is the paper's (CIFAR-10 test error of its nets, option
A, width 1); otherwise the gap is named.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import stats

from resexp.errors import ResexpError
from resexp.files import copy_file, markdown_table, write_text
from resexp.plotting import save_figure
from resexp.report.figures import draw_figure6, figure6_series
from resexp.report.paper import (
    PAPER_BATCH,
    PAPER_CIFAR10,
    PAPER_DATA,
    PAPER_ITERS,
    PaperError,
    comparison_gaps,
    recipe_differences,
    recipe_rows,
    warmup_ends,
)
from resexp.rundir import ANALYSIS_FOLDER, RESPONSES_STEM, flatten_keys
from resexp.runs import LeftOut, Run, group_runs, say_left_out, scan_runs, status_counts
from resexp.terminal import duration

MIN_RUNS = 3  # finished runs per depth for a verdict
ALPHA = 0.05  # one-sided: the claims have a direction
RESAMPLES = 10_000  # orderings of the permutation test; every ordering when there are no more
BATCH = 500  # orderings ranked at once: memory grows with BATCH x runs, not with runs² x RESAMPLES
LEVEL = 0.95  # of the descriptive interval of the deep-minus-shallow difference
SEED = 0
REPORT = "report.md"
RESPONSES = f"{ANALYSIS_FOLDER}/{RESPONSES_STEM}"  # what `resexp responses SWEEP_DIR` writes (.png, .pdf)

RULE = (
    "ρ is Spearman's rank correlation of depth and final training error over the finished runs of one "
    "kind (plain or residual), one point per run (average ranks for ties; 0 where all errors are equal). "
    "p is a one-sided permutation test of ρ in the claim's direction (scipy.stats.permutation_test): the share "
    "of the orderings of the observed errors over the runs' depths whose ρ is at least as far on the claim's "
    f"side; exact up to {RESAMPLES:,} orderings, else {RESAMPLES:,} random ones (seed {SEED}). "
    "Verdict, the first rule that applies: (1) undecided if the nets differ in more than depth (the "
    "paper's ResNet-110 warm-up aside), two nets have one depth, there are fewer than 2 depths, or a depth has "
    f"fewer than {MIN_RUNS} finished runs (running, stopped, failed and diverged runs do not count); "
    f"(2) reproduced if p ≤ {ALPHA:g} in the claim's direction; (3) not reproduced if p ≤ {ALPHA:g} in "
    "the other direction; (4) undecided otherwise (no trend the runs can tell from chance). (b) is tested "
    "as \"falls with depth\", as the paper's deeper ResNets end lower: a flat error is undecided. With no depth "
    f"effect, p ≤ {ALPHA:g} happens in at most {ALPHA:.0%} of sweeps; with {MIN_RUNS} runs at each of 2 depths "
    f"the smallest p there is, every deeper run beyond every shallower one, is 1/20 = {ALPHA:g}. Off the "
    "paper's setting (its data, iterations, width, batch) a verdict says the setting it holds in: it is what "
    "this budget shows, not a verdict on the paper. Deepest − shallowest: the deepest net's mean final "
    f"training error minus the shallowest's, with a {LEVEL:.0%} Welch t interval over seeds (a description "
    "of the size of the effect, not the test)."
)


@dataclass(frozen=True)
class Claim:
    name: str
    statement: str
    residual: bool  # tested on the residual nets, or on the plain ones
    sign: int  # the sign of rho the claim expects: +1, error rises with depth; -1, it falls


CLAIMS = (
    Claim("(a) degradation", "plain nets' final training error rises with depth", False, +1),
    Claim("(b) no degradation with shortcuts", "residual nets' final training error does not rise with depth "
          "(tested: falls with depth)", True, -1),
)


@dataclass
class ClaimTest:
    claim: Claim
    errors: dict[str, tuple[int, list[float]]]  # net label: (depth, final training errors of its finished runs)
    rho: float | None  # None: fewer than 2 depths with a finished run
    p: float | None  # one-sided, in the claim's direction; None without a rho
    gap: tuple[float, float, float] | None  # deepest minus shallowest mean, its interval; None: fewer than 2 seeds
    verdict: str  # reproduced, not reproduced, undecided
    reason: str
    setting: str = ""  # where the runs are off the paper's setting: which, in words ("" in the paper's)

    def verdict_cell(self) -> str:
        """The verdict in its setting: bold only in the paper's setting."""
        if self.setting:
            return f"{self.verdict} at this budget: {self.setting} ({self.reason})"
        return f"**{self.verdict}** ({self.reason})"


def rank_correlation(x: Sequence[float], y: np.ndarray) -> np.ndarray:
    """Spearman's rho of x against each row of y (Pearson's r of their average ranks, as
    scipy.stats.spearmanr); 0 for a row (or x) whose values are all equal, where spearmanr has none."""
    rx = stats.rankdata(np.asarray(x, dtype=float))
    ry = stats.rankdata(np.atleast_2d(np.asarray(y, dtype=float)), axis=-1)
    dx, dy = rx - rx.mean(), ry - ry.mean(-1, keepdims=True)
    num = (dy * dx).sum(-1)
    den = np.sqrt((dx**2).sum() * (dy**2).sum(-1))
    return np.divide(num, den, out=np.zeros_like(num), where=den > 0)


def permutation_p(by_depth: dict[int, list[float]], sign: int, resamples: int = RESAMPLES, seed: int = SEED) -> float:
    """One-sided p of rho(depth, error) in the direction `sign` (+1: rises with depth): the share
    of the orderings of the errors over the runs' depths whose rho is at least as far that way as
    the observed one; every ordering when there are at most `resamples`, else `resamples` random ones."""
    depths = sorted(by_depth)
    x = np.repeat(depths, [len(by_depth[d]) for d in depths])
    errors = np.concatenate([np.asarray(by_depth[d], dtype=float) for d in depths])
    result = stats.permutation_test((errors,), lambda e, axis: rank_correlation(x, e), permutation_type="pairings",
                                    vectorized=True, n_resamples=resamples, batch=BATCH,
                                    alternative="greater" if sign > 0 else "less", rng=seed)
    return float(result.pvalue)


def depth_gap(by_depth: dict[int, list[float]], level: float = LEVEL) -> tuple[float, float, float] | None:
    """The deepest depth's mean error minus the shallowest's and its Welch t interval over seeds;
    None with fewer than 2 runs at either (no spread to say), or with no spread at all."""
    shallow, deep = by_depth[min(by_depth)], by_depth[max(by_depth)]
    if min(len(shallow), len(deep)) < 2:
        return None
    gap = statistics.fmean(deep) - statistics.fmean(shallow)
    if statistics.stdev(deep) == 0 and statistics.stdev(shallow) == 0:
        return None
    low, high = stats.ttest_ind(deep, shallow, equal_var=False).confidence_interval(level)
    return gap, float(low), float(high)


def off_paper_setting(runs: Sequence[Run]) -> str:
    """Which of the paper's data, iterations, width and batch the runs do not have, in words
    ("synthetic, 500 it., width 0.5, batch 64"); "" in the paper's setting."""
    def values(key: str) -> list:
        return sorted({run.value(key) for run in runs}, key=repr)

    parts = []
    if values("data.name") != [PAPER_DATA]:
        parts.append("/".join(map(str, values("data.name"))))
    if values("trainer.max_iters") != [PAPER_ITERS]:
        parts.append("/".join(f"{v:,}" if isinstance(v, int) else str(v) for v in values("trainer.max_iters")) + " it.")
    if values("model.width") != [1]:
        parts.append("width " + "/".join(f"{v:g}" if isinstance(v, (int, float)) else str(v)
                                         for v in values("model.width")))
    if values("trainer.batch_size") != [PAPER_BATCH]:
        parts.append("batch " + "/".join(map(str, values("trainer.batch_size"))))
    return ", ".join(parts)


def judge_claim(claim: Claim, groups: dict[str, list[Run]]) -> ClaimTest:
    """The claim tested on the sweep's nets of its kind (see the module's docstring)."""
    nets = {label: runs for label, runs in groups.items()
            if runs[0].value("model.arch") == "cifar_resnet" and runs[0].residual == claim.residual}
    errors = {label: (runs[0].depth, [float(r.summary.train_error) for r in runs if r.status == "finished"])
              for label, runs in sorted(nets.items(), key=lambda item: item[1][0].depth)}
    kind = "residual" if claim.residual else "plain"

    # The setting of the claim's own nets; of the whole sweep where it has none of them.
    setting = off_paper_setting([run for runs in (nets or groups).values() for run in runs])

    def verdict(word: str, reason: str, rho: float | None = None, p: float | None = None,
                gap: tuple[float, float, float] | None = None) -> ClaimTest:
        return ClaimTest(claim, errors, rho, p, gap, word, reason, setting)

    def undecided(reason: str, rho: float | None = None, p: float | None = None,
                  gap: tuple[float, float, float] | None = None) -> ClaimTest:
        return verdict("undecided", reason, rho, p, gap)

    differing = _differing_keys([runs[0] for runs in nets.values()])
    if differing:
        return undecided(f"the {kind} nets differ in more than depth: " + ", ".join(differing))
    shared = [f"{', '.join(labels)} at depth {depth}" for depth, labels in _labels_by_depth(errors).items()
              if len(labels) > 1]
    if shared:  # their runs would be one point set: which net degrades?
        return undecided(f"two {kind} nets have one depth: {'; '.join(shared)}")
    scored = {depth: values for depth, values in errors.values() if values}
    rho = p = gap = None
    if len(scored) >= 2:  # shown even when too few runs leave the verdict undecided
        x = [depth for depth, values in scored.items() for _ in values]
        rho = float(rank_correlation(x, [v for values in scored.values() for v in values])[0])
        p = permutation_p(scored, claim.sign)
        gap = depth_gap(scored)
    if len(errors) < 2:
        found = f" ({', '.join(errors)})" if errors else ""
        return undecided(f"{len(errors)} {kind} depth(s){found}, 2 needed", rho, p, gap)
    short = [f"{label} has {len(values)}" for label, (_, values) in errors.items() if len(values) < MIN_RUNS]
    if short:
        return undecided(f"too few finished runs: {', '.join(short)} ({MIN_RUNS} per depth needed)", rho, p, gap)
    if p <= ALPHA:
        return verdict("reproduced", f"p = {p:.3g} ≤ {ALPHA:g}", rho, p, gap)
    other = permutation_p(scored, -claim.sign)
    if other <= ALPHA:
        way = "falls" if claim.sign > 0 else "rises"
        return verdict("not reproduced", f"the error {way} with depth: p = {other:.3g} ≤ {ALPHA:g} that way",
                       rho, p, gap)
    return undecided(f"p = {p:.3g} > {ALPHA:g} either way", rho, p, gap)


def paper_convention(values: Sequence[float]) -> str:
    """Errors as the paper writes ResNet-110's "6.43 (6.61±0.16)": best, then mean ± sample std
    and the number of seeds."""
    if not values:
        return "— (no finished run)"
    if len(values) == 1:
        return f"{values[0]:.2f} (1 seed)"
    return f"{min(values):.2f} ({statistics.fmean(values):.2f} ± {statistics.stdev(values):.2f}, {len(values)} seeds)"


def difference(values: Sequence[float], paper: PaperError) -> str:
    """Our mean minus the paper's, in points and in standard errors of the difference (see the
    module's docstring); the paper's mean and std where it reports them, else its one run. With
    one seed, or seeds that agree exactly, the points alone: no SE."""
    mean = statistics.fmean(values)
    paper_mean = paper.value if paper.mean is None else paper.mean
    paper_std, paper_n = paper.std, paper.runs
    gap = f"{round(mean - paper_mean, 2) + 0.0:+.2f} pts"  # + 0.0: a rounded -0.0 is shown as +0.00
    if len(values) < 2:
        return f"{gap}, one seed (no SE)"
    std = statistics.stdev(values)
    if std == 0:
        return f"{gap}, {len(values)} seeds agree exactly (no SE)"
    paper_std = std if paper_std is None else paper_std  # the paper's one run: its spread taken to be ours
    z = (mean - paper_mean) / math.sqrt(std**2 / len(values) + paper_std**2 / paper_n)
    return f"{gap} = {round(z, 1) + 0.0:+.1f} SE"


def evaluation(run: Run) -> str:
    """What the model-selection column says: resexp reports the final model, never a best-epoch pick."""
    if run.eval_split == "val":
        return (f"final model; evaluated on the val split ({run.value('data.val_size'):,} held-out "
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
    rows = []
    for label, runs in groups.items():
        first = runs[0]
        values = [float(r.summary.error_on(r.eval_split)) for r in runs if r.status == "finished"]
        key = (first.residual, first.depth)
        paper = PAPER_CIFAR10.get(key) if first.value("model.arch") == "cifar_resnet" else None
        gaps = comparison_gaps(first) if paper is not None else []
        if paper is None or not values:
            diff = "—"
        elif gaps:
            diff = "n/a, not the paper's setting: " + "; ".join(gaps)
        else:
            diff = difference(values, paper)
        status = status_counts(runs)
        if label in missing:
            status += f", {len(missing[label])} missing"
        rows.append([label, paper.shown if paper else "—", paper_convention(values), diff, evaluation(first), status])
    return markdown_table(["net", "paper, CIFAR-10 test error (%)", "ours (%): best (mean ± std, n seeds)",
                           "ours − paper (means, in SE)", "model selection", "runs"], rows)


def claim_lines(tests: list[ClaimTest]) -> list[str]:
    """The claims' verdicts, a table of their numbers, and the final training errors they rest on."""
    rows = []
    for t in tests:
        rho = "—" if t.rho is None else f"{t.rho:+.3f}"
        p = "—" if t.p is None else f"{t.p:.3g}"
        gap = "—" if t.gap is None else f"{t.gap[0]:+.2f} [{t.gap[1]:+.2f}, {t.gap[2]:+.2f}]"
        rows.append([f"{t.claim.name}: {t.claim.statement}", rho, p, gap, t.verdict_cell()])
    lines = markdown_table(["claim", "ρ (depth, final train error)", "p (one-sided)", "deepest − shallowest, mean "
                            f"final train error (pts, {LEVEL:.0%} interval over seeds)", "verdict"], rows)
    lines += ["", "Final training error (%) of each finished run, the points the tests use:", ""]
    for t in tests:
        for label, (_, values) in t.errors.items():
            shown = ", ".join(f"{v:.2f}" for v in values) or "none finished"
            lines.append(f"- {label}: {shown}")
    return lines


def not_counted_lines(runs: list[Run], groups: dict[str, list[Run]], missing: dict[str, list[int]],
                      unreadable: Sequence[LeftOut], sweep_dir: Path) -> list[str]:
    """The runs left out of every number: unfinished, failed or diverged; missing; unreadable."""
    label_of = {id(run): label for label, members in groups.items() for run in members}
    lines = []
    for run in runs:
        if run.status == "finished":
            continue
        summary = run.summary
        note = summary.diverged_reason or summary.error or (f"by {summary.stopped_by}" if summary.stopped_by else "")
        at = "/".join("?" if n is None else str(n) for n in (summary.iterations, summary.max_iters))
        lines.append(f"- {label_of[id(run)]} seed {run.seed} (`{_relative(run.path, sweep_dir)}`): {run.status} at "
                     f"iteration {at}"
                     + (f": {note}" if note else ""))
    lines += [f"- {label} seed {seed}: missing (no run with a summary.json; the sweep's other nets have this seed)"
              for label, seeds in missing.items() for seed in seeds]
    lines += [f"- `{_relative(u.path, sweep_dir)}`: {u.what} ({u.reason})" for u in unreadable]
    return lines or ["None: every run of the sweep finished and is counted."]


def render(runs: list[Run], unreadable: Sequence[LeftOut], sweep_dir: Path, figure6_note: str | None,
           figure7: str | None) -> str:
    """The report's Markdown. figure6_note: why Figure 6 was not drawn (None: it was); figure7: the
    file name of the copied Figure 7 (None: there is none)."""
    groups = ordered_groups(runs)
    missing = missing_seeds(groups)
    tests = [judge_claim(claim, groups) for claim in CLAIMS]
    labelled = [(label, run) for label, members in groups.items() for run in members]
    finished = [r for r in runs if r.status == "finished"]
    wall = [float(r.summary.wall_time_s) for r in finished if r.summary.wall_time_s is not None]
    differences = recipe_differences(labelled)
    counts = status_counts(runs)
    parts = [
        "# Reproduction report: He et al. 2015, plain vs residual CIFAR nets",
        "",
        f"Sweep `{sweep_dir}`: {len(runs)} runs read ({counts}) of {len(groups)} nets"
        + (f", {sum(map(len, missing.values()))} missing" if missing else "")
        + (f", {len(unreadable)} left out (unreadable or duplicate, listed below)" if unreadable else "")
        + (f". Budget: {duration(sum(wall))} of training in all over the {len(wall)} finished runs "
           f"(their summary.json wall_time_s; {duration(min(wall))} to {duration(max(wall))} per run)." if wall
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
        "ours − paper: our mean minus the paper's (ResNet-110: its mean 6.61 over 5 runs; the others: their one "
        "number), in points and in standard errors of the difference, √(s²/n + s_p²/n_p) with our std s over n "
        "seeds and the paper's s_p over n_p runs (ResNet-110: 0.16 over 5; one number is one run, its "
        "spread taken to be ours); with one seed or seeds that agree exactly there is no spread of ours, so no SE. "
        "n/a: the run's setting is not the paper's, named there.",
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
        *markdown_table(["setting", "paper", "as run"], recipe_rows(labelled)),
        "",
        "Differences from the paper's recipe:",
        "",
        *([f"- {name}: {text}" for name, text in differences] or ["- none"]),
        "",
        *(["Where the error warm-up ended (iteration; the training error over the window that ended it; "
           "summary.json's error_warmup):", "", *ends, ""] if (ends := warmup_ends(labelled)) else []),
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
    say_left_out(unreadable)
    out = Path(out_dir) if out_dir is not None else sweep / "report"
    out.mkdir(parents=True, exist_ok=True)
    try:
        drawing, figure6_note = draw_figure6(figure6_series(runs)), None
    except ResexpError as e:  # no run has logged an error yet: the report says so instead
        drawing, figure6_note = None, str(e)
    written = save_figure(drawing, out / "figure6.png") if drawing is not None else []  # a full disk is an error
    drawn = [(sweep / RESPONSES).with_suffix(suffix) for suffix in (".png", ".pdf")]
    figure7 = "figure7" if drawn[0].is_file() else None
    if figure7:
        written += [copy_file(p, out / f"{figure7}{p.suffix}") for p in drawn if p.is_file()]
    path = write_text(out / REPORT, render(runs, unreadable, sweep, figure6_note, figure7))
    return [path, *written]


def _differing_keys(runs: list[Run]) -> list[str]:
    """The config keys in which the runs differ besides depth (and name, and the paper's per-depth warm-up)."""
    flat = [flatten_keys(run.identity) for run in runs]
    keys = set().union(*flat) - {"model.depth", "model.name"}
    keys = {k for k in keys if not k.startswith("optim.error_warmup")}
    return sorted(k for k in keys if len({repr(f.get(k)) for f in flat}) > 1)


def _labels_by_depth(errors: dict[str, tuple[int, list[float]]]) -> dict[int, list[str]]:
    by_depth: dict[int, list[str]] = {}
    for label, (depth, _) in errors.items():
        by_depth.setdefault(depth, []).append(label)
    return by_depth


def _relative(path: Path, root: Path) -> Path:
    return path.relative_to(root) if path.is_relative_to(root) else path
