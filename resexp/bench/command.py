"""`resexp bench` as a whole: which bench the options ask for (the step, --runs K or --sweep),
refusing options of the other kind, then its report written and returned for printing."""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from tempfile import TemporaryDirectory

from resexp.bench import runs as runs_bench, single, sweep as sweep_bench
from resexp.bench.report import check_not_written, report_stem, write_report
from resexp.config import compose
from resexp.engine.runtime import explain_compile_errors
from resexp.errors import ResexpError

STEP_OPTIONS = ("iters", "repeats", "warmup", "precisions", "reference", "runs")  # the step benches' only
SWEEP_OPTIONS = ("seconds",)  # --sweep's only


def check_options(sweep: bool, given: Collection[str]) -> None:
    """Options the command line gave that the other kind of bench takes are refused, not ignored."""
    misplaced = [name for name in (STEP_OPTIONS if sweep else SWEEP_OPTIONS) if name in given]
    if misplaced:
        raise ResexpError(f"--{misplaced[0]} does not apply {'to --sweep' if sweep else 'without --sweep'}")


def run_bench(overrides: list[str], *, iters: int, repeats: int, warmup: int, batch: int | None, out: str,
              force: bool, reference: bool, precisions: str, runs: int, sweep: bool, seconds: float,
              given: Collection[str]) -> tuple[str, list[Path]]:
    """The bench the options ask for: its report's text (with its headline, if any) and the files
    written. `given`: the options the command line set (not left at their defaults)."""
    check_options(sweep, given)
    words = [*overrides, *([f"trainer.batch_size={batch}"] if batch is not None else [])]
    if sweep:
        with TemporaryDirectory(prefix="resexp-bench-sweep-") as root:
            target = sweep_bench.plan_target(words, Path(root))
            stem = sweep_bench.sweep_stem(Path(out), target.plan)
            check_not_written(stem, force)
            report = sweep_bench.bench_sweep(target, seconds)
        text, headline = sweep_bench.markdown(report), sweep_bench.headline(report)
    else:
        cfg = compose(words)
        stem = report_stem(Path(out), cfg, runs)
        check_not_written(stem, force)
        with explain_compile_errors():
            if runs > 1:
                report = runs_bench.bench_runs(cfg, runs, iters, warmup, repeats)
                text, headline = runs_bench.markdown(report), None
            else:
                report = single.bench_single(cfg, iters, warmup, repeats, reference,
                                             [p for p in precisions.split(",") if p])
                text, headline = single.markdown(report), single.ratio_line(report)
    paths = write_report(stem, report, text)
    return text + (f"\n{headline}" if headline else ""), paths
