"""The reproduction report (resexp report): its statistics against hand computations, the
paper's convention, the recipe's differences, and the report of fake sweeps."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from scipy.stats import t as t_dist
from typer.testing import CliRunner

from fake_runs import write_final_run, write_run
from resexp.cli import app
from resexp.report.paper import PAPER_CIFAR10, PaperError, comparison_gaps, recipe_differences, recipe_rows, warmup_ends
from resexp.report.reproduction import (
    CLAIMS, MIN_RUNS, RULE, depth_gap, difference, judge_claim, missing_seeds, off_paper_setting,
    ordered_groups, paper_convention, permutation_p, rank_correlation, reproduction_report,
)
from resexp.runs import scan_runs

DEGRADATION, NO_DEGRADATION = CLAIMS
SEPARATED_RHO = math.sqrt(27 / 35)  # two depths of 3 runs each, every deeper run above every shallower one


def spearman_by_hand(x, y):
    """Spearman's rho from its textbook definition, in plain Python."""
    def ranks(values):
        return [sum(v < w for v in values) + (sum(v == w for v in values) + 1) / 2 for w in values]

    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    num = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return num / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def sweep_of(root, errors, residual=False, statuses=None, **changes):
    """Runs of one kind: errors {depth: [final training error per seed]}; test error = training + 6."""
    for depth, values in errors.items():
        name = f"{'resnet' if residual else 'plain'}{depth}"
        for seed, value in enumerate(values):
            status = (statuses or {}).get((depth, seed), "finished")
            write_final_run(root, name, depth, residual, seed, value, value + 6, status, **changes)
    return ordered_groups(scan_runs(root)[0])


def test_rank_correlation_is_spearmans_rho():
    depths = [20, 20, 20, 56, 56, 56]
    assert rank_correlation(depths, [1, 2, 3, 4, 5, 6])[0] == pytest.approx(SEPARATED_RHO, abs=1e-12)
    assert rank_correlation(depths, [4, 5, 6, 1, 2, 3])[0] == pytest.approx(-SEPARATED_RHO, abs=1e-12)
    assert rank_correlation(depths, [7, 7, 7, 7, 7, 7])[0] == 0.0  # all equal: no association
    rng = np.random.default_rng(1)
    for _ in range(20):
        x = rng.integers(0, 4, 9).tolist()
        y = rng.integers(0, 5, 9).astype(float).tolist()  # ties in both
        if len(set(x)) > 1 and len(set(y)) > 1:
            assert rank_correlation(x, y)[0] == pytest.approx(spearman_by_hand(x, y), abs=1e-12)


def test_depth_gap_is_the_difference_of_means_with_a_welch_interval():
    gap, low, high = depth_gap({20: [1.0, 2.0, 3.0], 56: [4.0, 6.0, 8.0]})
    assert gap == pytest.approx(4.0)  # 6 - 2
    # Welch: SE = sqrt(1/3 + 4/3) = 1.2910; df = (5/3)^2 / ((1/3)^2/2 + (4/3)^2/2) = 2.9412
    half = t_dist.ppf(0.975, 2.9412) * 1.2910
    assert (low, high) == (pytest.approx(4 - half, abs=1e-3), pytest.approx(4 + half, abs=1e-3))
    assert depth_gap({20: [1.0], 56: [4.0, 5.0]}) is None  # one seed at a depth: no spread to say
    assert depth_gap({20: [1.0, 1.0], 56: [4.0, 4.0]}) is None  # no spread at all


def test_a_large_sweep_is_tested_in_bounded_memory():
    # 1,000 runs at each of 2 depths: the permutation test ranks BATCH orderings at a time; the old
    # pairwise ranks would have needed (10000, 2000, 2000) booleans, 37 GiB.
    rng = np.random.default_rng(0)
    by_depth = {20: rng.normal(10, 1, 1000).tolist(), 56: rng.normal(10.2, 1, 1000).tolist()}
    assert permutation_p(by_depth, +1) == pytest.approx(1 / 10_001)
    assert permutation_p(by_depth, -1) == pytest.approx(1.0, abs=1e-3)


def test_permutation_p_by_hand():
    # 3 runs at each of 2 depths: C(6, 3) = 20 ways to deal the errors out; fully separated, only
    # the observed way is as far up: p = 1/20. The other way round every way is as far: p = 1.
    separated = {20: [1.0, 2.0, 3.0], 56: [4.0, 5.0, 6.0]}
    assert permutation_p(separated, +1) == pytest.approx(1 / 20)
    assert permutation_p(separated, -1) == pytest.approx(1.0)
    # {20: [1, 2, 4], 56: [3, 5, 6]}: the ways whose rank sum at 56 is at least the observed 3+5+6 = 14:
    # {4,5,6} and {3,5,6}, two of 20.
    assert permutation_p({20: [1.0, 2.0, 4.0], 56: [3.0, 5.0, 6.0]}, +1) == pytest.approx(2 / 20)
    # equal errors: every way ties the observed rho 0, p = 1 both ways
    assert permutation_p({20: [5.0] * 3, 56: [5.0] * 3}, +1) == pytest.approx(1.0)
    # the sampled path agrees with the exact one where both can run (7! = 5,040 orderings)
    wide = {20: [1.0, 3.0, 2.0], 56: [4.0, 5.0], 110: [9.0, 6.0]}
    exact = permutation_p(wide, +1)
    assert exact == pytest.approx(permutation_p(wide, +1, resamples=6000))  # exact either way
    assert permutation_p(wide, +1, resamples=2000) == pytest.approx(exact, abs=0.01)


def test_degradation_reproduced(tmp_path):
    test = judge_claim(DEGRADATION, sweep_of(tmp_path, {20: [1.0, 2.0, 3.0], 56: [4.0, 5.0, 6.0]}))
    assert (test.verdict, test.reason) == ("reproduced", "p = 0.05 ≤ 0.05")
    assert test.rho == pytest.approx(SEPARATED_RHO) and test.p == pytest.approx(1 / 20)
    assert test.errors == {"plain-20": (20, [1.0, 2.0, 3.0]), "plain-56": (56, [4.0, 5.0, 6.0])}


def test_degradation_not_reproduced_when_deeper_plain_nets_train_better(tmp_path):
    test = judge_claim(DEGRADATION, sweep_of(tmp_path, {20: [4.0, 5.0, 6.0], 56: [1.0, 2.0, 3.0]}))
    assert (test.verdict, test.reason) == ("not reproduced", "the error falls with depth: p = 0.05 ≤ 0.05 that way")
    assert test.rho == pytest.approx(-SEPARATED_RHO)


def test_undecided_when_neither_way_is_beyond_chance(tmp_path):
    test = judge_claim(DEGRADATION, sweep_of(tmp_path, {20: [1.0, 5.0, 3.0], 56: [2.0, 6.0, 4.0]}))
    # ranks at 56: 2 + 4 + 6 = 12; the 3-subsets of 1..6 with a sum of 12 or more: 7 of the 20 ways
    assert (test.verdict, test.reason) == ("undecided", "p = 0.35 > 0.05 either way")
    assert test.rho == pytest.approx(spearman_by_hand([20] * 3 + [56] * 3, [1, 5, 3, 2, 6, 4]))
    assert test.gap[0] == pytest.approx(1.0) and test.gap[1] < 0 < test.gap[2]  # 4 - 3; the interval spans 0


def test_a_flat_residual_error_is_undecided_not_refuted(tmp_path):
    flat = judge_claim(NO_DEGRADATION, sweep_of(tmp_path, {20: [0.0] * 3, 56: [0.0] * 3}, residual=True))
    assert (flat.verdict, flat.rho, flat.p) == ("undecided", 0.0, 1.0)


def test_two_nets_of_one_depth_leave_the_claim_undecided(tmp_path):
    for seed, (a, b, c) in enumerate([(1.0, 50.0, 10.0), (2.0, 51.0, 11.0), (3.0, 52.0, 12.0)]):
        write_final_run(tmp_path, "plain20", 20, False, seed, a, a + 6)
        write_final_run(tmp_path, "plain20b", 20, False, seed, b, b + 6, dir_name=f"b{seed}")
        write_final_run(tmp_path, "plain56", 56, False, seed, c, c + 6)
    test = judge_claim(DEGRADATION, ordered_groups(scan_runs(tmp_path)[0]))
    assert test.verdict == "undecided" and test.reason.startswith("two plain nets have one depth: ")
    assert test.rho is None


def test_undecided_with_too_few_finished_runs(tmp_path):
    # three seeds of plain-56, one of them diverged: two finished, fewer than MIN_RUNS
    groups = sweep_of(tmp_path, {20: [1.0, 2.0, 3.0], 56: [4.0, 5.0, 90.0]}, statuses={(56, 2): "diverged"})
    test = judge_claim(DEGRADATION, groups)
    assert MIN_RUNS == 3
    assert (test.verdict, test.reason) == ("undecided", "too few finished runs: plain-56 has 2 (3 per depth needed)")
    assert test.errors["plain-56"] == (56, [4.0, 5.0])  # the diverged run is not averaged in
    assert test.rho == pytest.approx(spearman_by_hand([20, 20, 20, 56, 56], [1, 2, 3, 4, 5]))


def test_undecided_with_one_depth_or_none(tmp_path):
    groups = sweep_of(tmp_path, {20: [1.0, 2.0, 3.0]})
    one = judge_claim(DEGRADATION, groups)
    assert (one.verdict, one.reason, one.rho, one.p, one.gap) == (
        "undecided", "1 plain depth(s) (plain-20), 2 needed", None, None, None)
    none = judge_claim(NO_DEGRADATION, groups)
    assert (none.verdict, none.reason) == ("undecided", "0 residual depth(s), 2 needed")


def test_undecided_when_nets_differ_in_more_than_depth(tmp_path):
    write_final_run(tmp_path, "plain20", 20, False, 0, 1.0, 7.0, model__width=0.5)
    for seed in range(3):
        write_final_run(tmp_path, "plain56", 56, False, seed, 5.0 + seed, 11.0)
    test = judge_claim(DEGRADATION, ordered_groups(scan_runs(tmp_path)[0]))
    assert (test.verdict, test.reason, test.rho) == ("undecided", "the plain nets differ in more than depth: "
                                                     "model.width", None)


def test_residual_claim_reproduced_and_warm_up_of_resnet110_allowed(tmp_path):
    groups = sweep_of(tmp_path, {20: [3.0, 3.5, 4.0], 56: [1.0, 1.5, 2.0], 110: [0.5, 0.6, 0.7]}, residual=True)
    test = judge_claim(NO_DEGRADATION, groups)
    # ranks 7-9, 4-6, 1-3 by depth: the one way of the 1680 (9! / 3!^3) as far down, p = 1/1680;
    # 9! orderings are more than RESAMPLES, so p is estimated from 10,000 of them: (1 + k) / 10,001
    assert test.verdict == "reproduced" and test.p == pytest.approx(1 / 1680, abs=4e-4)
    assert test.rho == pytest.approx(spearman_by_hand([20] * 3 + [56] * 3 + [110] * 3,
                                                      [3, 3.5, 4, 1, 1.5, 2, 0.5, 0.6, 0.7]))
    rising = sweep_of(tmp_path / "rising", {20: [1.0, 1.5, 2.0], 56: [3.0, 3.5, 4.0]}, residual=True)
    assert judge_claim(NO_DEGRADATION, rising).verdict == "not reproduced"


def test_paper_convention():
    # best 6.43; mean 6.61; sample std sqrt(((-0.18)^2 + (-0.11)^2 + 0.29^2) / 2) = 0.2536
    assert paper_convention([6.43, 6.5, 6.9]) == "6.43 (6.61 ± 0.25, 3 seeds)"
    assert paper_convention([7.0]) == "7.00 (1 seed)"
    assert paper_convention([]) == "— (no finished run)"


def test_difference_in_standard_errors():
    # mean 7.2, std 0.2 over 3; the paper's one run, spread taken as ours: SE = 0.2 * sqrt(1/3 + 1) = 0.2309
    assert difference([7.0, 7.2, 7.4], PaperError(6.97, "6.97")) == "+0.23 pts = +1.0 SE"
    # one seed, or seeds that agree: no spread of ours, so no SE (the paper's 0.16 is not borrowed)
    assert difference([7.29], PaperError(6.97, "6.97")) == "+0.32 pts, one seed (no SE)"
    assert difference([6.5, 6.5], PaperError(6.97, "6.97")) == "-0.47 pts, 2 seeds agree exactly (no SE)"
    assert difference([7.29], PAPER_CIFAR10[True, 110]) == "+0.68 pts, one seed (no SE)"
    # ResNet-110 against the paper's mean of 5 runs, not its best: a match is 0 SE
    assert difference([6.45, 6.61, 6.77], PAPER_CIFAR10[True, 110]) == "+0.00 pts = +0.0 SE"
    # 0.16 over 3 and over 5: SE = sqrt(0.16^2/3 + 0.16^2/5) = 0.1168; (6.81 - 6.61) / 0.1168 = 1.71
    assert difference([6.65, 6.81, 6.97], PAPER_CIFAR10[True, 110]) == "+0.20 pts = +1.7 SE"


def test_the_paper_recipe_differs_only_in_the_classifier_init(tmp_path):
    groups = sweep_of(tmp_path, {20: [1.0], 110: [0.5]}, residual=True)
    labelled = [(label, run) for label, runs in groups.items() for run in runs]
    assert [name for name, _ in recipe_differences(labelled)] == ["init"]
    assert comparison_gaps(labelled[0][1]) == []
    rows = {name: as_run for name, _, as_run in recipe_rows(labelled)}
    assert rows["BN batch"] == "64 (each of the 2 groups of the 128 batch on its own)"
    assert rows["test-time BN"] == ("running averages (momentum 0.1: each training step moves them 10% of the way "
                                    "to the batch statistics, from each batch's first 64 images only)")
    assert rows["init"].startswith("He normal, fan_out (n = k²·c_out")
    assert rows["weight decay on"].startswith("every parameter: conv and classifier weights, classifier bias, BN")
    assert rows["warm-up"] == ("none (ResNet-20); lr 0.01 until the training error over the last 6,400 images "
                               "< 80% (at most 4,000 iterations) (ResNet-110)")
    assert rows["lr schedule"] == "0.1, ÷10 at 32,000 and 48,000 (50% and 75% of training)"


def test_the_report_shows_where_each_warm_up_ended_beside_the_papers_400(tmp_path):
    ends = {0: {"ended_at": 431, "ended_by": "error", "train_error": 79.94, "over_images": 6400},
            1: {"ended_at": 4000, "ended_by": "max_iters", "train_error": 83.5, "over_images": 6400}, 2: None}
    for seed, end in ends.items():
        run_dir = write_final_run(tmp_path, "resnet110", 110, True, seed, 1.0, 7.0)
        summary = json.loads((run_dir / "summary.json").read_text())
        (run_dir / "summary.json").write_text(json.dumps({**summary, "error_warmup": end} if end else summary))
    write_final_run(tmp_path, "resnet20", 20, True, 0, 1.0, 7.0)
    runs = scan_runs(tmp_path)[0]
    labelled = [(label, run) for label, members in ordered_groups(runs).items() for run in members]
    line = ("- ResNet-110: seed 0: 431 (79.9% over 6,400 images); seed 1: 4,000 (83.5% over 6,400 images, at its "
            "limit max_iters); seed 2: not recorded; paper: about 400")
    assert warmup_ends(labelled) == [line]
    reproduction_report(tmp_path)
    assert line in (tmp_path / "report" / "report.md").read_text().splitlines()


def test_recipe_differences_are_named(tmp_path):
    changes = dict(data__name="synthetic", data__train_size=10000, data__test_size=2000, data__val_size=1000,
                   trainer__max_iters=2000, trainer__batch_size=64, optim__warmup_iters=100, optim__nesterov=True,
                   optim__milestones=[0.5], data__augment=False, model__width=0.5, model__shortcut="B")
    write_final_run(tmp_path, "resnet20", 20, True, 0, 1.0, 7.0, **changes)
    write_final_run(tmp_path, "plain20", 20, False, 0, 1.0, 7.0, **changes)
    write_final_run(tmp_path, "resnet110", 110, True, 0, 1.0, 7.0, optim__error_warmup=None, model__bn_batch=None)
    runs = scan_runs(tmp_path)[0]
    labelled = [(label, run) for label, members in ordered_groups(runs).items() for run in members]
    differences = recipe_differences(labelled)
    assert differences.pop(5)[0] == "init"  # every run's: the classifier's init (test above)
    assert differences == [
        ("data", "synthetic (10,000 train / 2,000 test images, resexp/data/synthetic.py) (plain-20, ResNet-20); "
                 "paper: CIFAR-10 (50,000 train / 10,000 test images)"),
        ("split", "1,000 training images held out as val; trained on the rest, evaluated on val (plain-20, "
                  "ResNet-20); paper: schedule chosen on a 45k/5k train/val split; final models trained on all "
                  "50k, tested on the 10k test set"),
        ("iterations", "2,000 (plain-20, ResNet-20); paper: 64,000"),
        ("batch", "64 (plain-20, ResNet-20); paper: 128"),
        ("BN batch", "128 (the whole mini-batch) (ResNet-110); paper: 64: the batch of 128 ran \"on two GPUs\", "
                     "each normalising its own half (no synchronised BN in 2015)"),
        ("optimizer", "SGD, momentum 0.9, Nesterov, weight decay 0.0001 (plain-20, ResNet-20); paper: SGD, "
                      "momentum 0.9, weight decay 0.0001"),
        ("lr schedule", "0.1, ÷10 at 1,000 (50% of training) (plain-20, ResNet-20); paper: 0.1, ÷10 at 32,000 and "
                        "48,000 (50% and 75% of training)"),
        ("warm-up", "linear from 0 over the first 100 iterations (plain-20, ResNet-20); none (ResNet-110); paper: "
                    "none; ResNet-110 and -1202: lr 0.01 until training error < 80% (about 400 iterations)"),
        ("augmentation", "none (plain-20, ResNet-20); paper: pad 4 (with what not stated), random 32×32 crop, "
                         "random horizontal flip"),
        ("shortcut", "option B (1×1 projection + BN) (ResNet-20); paper: option A: identity; at a shape change "
                     "stride-2 subsampling + zero-padded channels"),
        ("width", "0.5 (8, 16, 32 filters) (plain-20, ResNet-20); paper: 1 (16, 32, 64 filters)"),
    ]
    resnet20 = next(run for label, run in labelled if label == "ResNet-20")
    assert comparison_gaps(resnet20) == ["synthetic data", "val error", "shortcut option B", "width 0.5"]


def test_missing_seeds_are_the_sweep_grid_less_the_runs(tmp_path):
    groups = sweep_of(tmp_path, {20: [1.0, 2.0, 3.0], 56: [4.0, 5.0]})
    assert missing_seeds(groups) == {"plain-56": [2]}


def write_seeds_sweep(root):
    """Three seeds of plain-20/56 and ResNet-20/56 on CIFAR-10 with the paper's recipe, named as a
    Hydra sweep names them (seed 0 not in the name); ResNet-56 seed 2 is missing and plain-56
    seed 2 diverged."""
    errors = {("plain", 20): [1.0, 1.2, 1.4], ("plain", 56): [5.0, 6.0, 90.0],
              ("resnet", 20): [0.5, 0.6, 0.7], ("resnet", 56): [0.1, 0.2]}
    for (kind, depth), values in errors.items():
        for seed, value in enumerate(values):
            name = f"{kind}{depth}"
            test_error = {"plain": 10.0, "resnet": 7.0}[kind] + seed / 10
            write_final_run(root, name, depth, kind == "resnet", seed, value, test_error,
                            "diverged" if value == 90.0 else "finished",
                            dir_name=f"model={name}" if seed == 0 else f"model={name},seed={seed}")


def test_report_command_writes_the_report_with_missing_and_diverged_runs(tmp_path):
    sweep = tmp_path / "sweep"
    write_seeds_sweep(sweep)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["report", str(sweep), "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines()[-1] == f"wrote {out / 'report.md'}, {out / 'figure6.png'}, {out / 'figure6.pdf'}"
    assert (out / "figure6.png").read_bytes().startswith(b"\x89PNG")
    md = (out / "report.md").read_text()
    lines = md.splitlines()
    assert f"Rule: {RULE}" in lines
    # the seeds of a net group together whatever their directories are called
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in lines if line.startswith("| ")}
    # plain-20: test errors 10.0, 10.1, 10.2: mean 10.1, std 0.1; paper ≈9.7, one run:
    # (10.1 - 9.7) / (0.1 * sqrt(1/3 + 1)) = +3.5
    assert rows["plain-20"][1:4] == ["≈9.7 (Fig. 6)", "10.00 (10.10 ± 0.10, 3 seeds)", "+0.40 pts = +3.5 SE"]
    assert rows["plain-20"][4:] == ["final model; evaluated on test (no selection)", "3 finished |"]
    # plain-56: 10.0, 10.1 (seed 2 diverged): std 0.0707; SE 0.0707 * sqrt(1/2 + 1) = 0.0866; -3.2 / 0.0866 = -37.0
    assert rows["plain-56"][2:] == ["10.00 (10.05 ± 0.07, 2 seeds)", "-3.20 pts = -37.0 SE",
                                    "final model; evaluated on test (no selection)", "1 diverged, 2 finished |"]
    assert rows["ResNet-56"][1:3] == ["6.97", "7.00 (7.05 ± 0.07, 2 seeds)"]
    assert rows["ResNet-56"][5] == "2 finished, 1 missing |"
    assert "- plain-56 seed 2 (`model=plain56,seed=2`): diverged at iteration 16000/64000: non-finite loss" in lines
    assert ("- ResNet-56 seed 2: missing (no run with a summary.json; the sweep's other nets have this seed)"
            in lines)
    verdicts = {line.split(":")[0].strip("| "): line.rsplit(" | ", 1)[1] for line in lines if line.startswith("| (")}
    assert verdicts["(a) degradation"] == ("**undecided** (too few finished runs: plain-56 has 2 (3 per depth "
                                           "needed)) |")
    assert verdicts["(b) no degradation with shortcuts"].startswith("**undecided** (too few finished runs: ResNet-56")
    assert "Differences from the paper's recipe:" in lines and lines[lines.index(
        "Differences from the paper's recipe:") + 2].startswith("- init: He normal, fan_out")
    assert "`resexp responses" in md  # Figure 7 is not in the logs: the report says where it comes from


def test_report_copies_figure7_when_responses_drew_it(tmp_path):
    write_seeds_sweep(tmp_path)
    (tmp_path / "analysis").mkdir()
    (tmp_path / "analysis" / "responses.png").write_bytes(b"\x89PNG fake")
    paths = reproduction_report(tmp_path)
    assert paths[-1] == tmp_path / "report" / "figure7.png"
    assert (tmp_path / "report" / "figure7.png").read_bytes() == b"\x89PNG fake"
    assert "![Figure 7: std of layer responses](figure7.png)" in (tmp_path / "report" / "report.md").read_text()


def test_report_of_a_folder_without_runs_fails_in_one_line(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"resexp: error: no run directories (config.yaml with summary.json) under {tmp_path}"]


def test_a_run_without_the_recipe_keys_says_not_recorded(tmp_path):
    write_run(tmp_path, "resnet20", 20, True, 0, "finished")  # config.yaml of model, data, optim.lr, trainer only
    labelled = [(label, run) for label, runs in ordered_groups(scan_runs(tmp_path)[0]).items() for run in runs]
    rows = {name: as_run for name, _, as_run in recipe_rows(labelled)}
    assert rows["optimizer"] == rows["warm-up"] == "not recorded"
    assert ("optimizer", "not recorded; paper: SGD, momentum 0.9, weight decay 0.0001") in recipe_differences(labelled)


def test_a_vit_run_in_the_folder_is_reported_not_compared(tmp_path):
    write_seeds_sweep(tmp_path)
    vit = write_final_run(tmp_path, "vit_pre", 6, True, 0, 30.0, 35.0, dir_name="model=vit_pre")
    cfg = OmegaConf.load(vit / "config.yaml")
    cfg.model = {"arch": "vit", "name": "vit_pre", "depth": 6, "dim": 64, "heads": 4, "mlp_ratio": 2.0,
                 "patch_size": 8, "pool": "cls", "norm_placement": "pre", "residual": True, "norm": "layernorm"}
    OmegaConf.save(cfg, vit / "config.yaml")
    md = (reproduction_report(tmp_path)[0]).read_text()  # no model.width, no shortcut: no crash
    row = next(line for line in md.splitlines() if line.startswith("| vit_pre |"))
    assert row.split(" | ")[1:4] == ["—", "35.00 (1 seed)", "—"]  # its test error; no paper number, no gap


def test_a_verdict_off_the_papers_setting_says_its_setting(tmp_path):
    demo = {"data__name": "synthetic", "trainer__max_iters": 500, "model__width": 0.5, "trainer__batch_size": 64}
    groups = sweep_of(tmp_path, {20: [1.0, 2.0, 3.0], 56: [4.0, 5.0, 6.0]}, **demo)
    test = judge_claim(DEGRADATION, groups)
    assert test.setting == "synthetic, 500 it., width 0.5, batch 64"
    assert test.verdict_cell() == "reproduced at this budget: synthetic, 500 it., width 0.5, batch 64 (p = 0.05 ≤ 0.05)"
    assert "**" not in test.verdict_cell()  # the bold word is kept for the paper's setting
    paper = judge_claim(DEGRADATION, sweep_of(tmp_path / "paper", {20: [1.0, 2.0, 3.0], 56: [4.0, 5.0, 6.0]}))
    assert (paper.setting, paper.verdict_cell()) == ("", "**reproduced** (p = 0.05 ≤ 0.05)")
    assert off_paper_setting([run for runs in groups.values() for run in runs]) == test.setting


def test_a_claim_without_its_nets_says_the_sweeps_setting(tmp_path):
    """A sweep of ResNets only: (a) has no plain nets, and its cell names the sweep's setting
    (it used to read 'undecided at this budget: ,  it., width , batch')."""
    demo = {"data__name": "synthetic", "trainer__max_iters": 300, "model__width": 0.5, "trainer__batch_size": 64}
    groups = sweep_of(tmp_path, {20: [1.0, 2.0, 3.0], 56: [4.0, 5.0, 6.0]}, residual=True, **demo)
    test = judge_claim(DEGRADATION, groups)
    assert test.verdict_cell() == ("undecided at this budget: synthetic, 300 it., width 0.5, batch 64 "
                                   "(0 plain depth(s), 2 needed)")


def test_the_readme_quotes_the_verdict_rule_the_report_prints():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    start = readme.index("  > ", readme.index("resexp.report.reproduction.RULE"))
    lines = readme[start:].split("\n\n")[0].splitlines()[:-1]  # the last: where RULE is
    quote = " ".join(line[4:] for line in lines)
    assert quote == RULE
