"""He et al. 2015's CIFAR-10 recipe (§4.2) beside a run's: each setting in the paper's words and
as the run's config.yaml and summary.json record it, and whether the two differ. The reproduction
report (resexp/report/reproduction.py) lists them and names every difference.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from resexp.model_config import (
    BN_MOMENTUM,
    DEFAULT_ZERO_PAD,
    HE_INIT_MODE,
    PAPER_BN_BATCH,
    STAGE_CHANNELS,
    scaled_channels,
)
from resexp.runs import Run

PAPER_DATA = "cifar10"
PAPER_ITERS = 64_000
PAPER_BATCH = 128
PAPER_LR = 0.1
PAPER_MILESTONES = (0.5, 0.75)  # 32k and 48k of the 64k iterations
PAPER_GAMMA = 0.1
PAPER_MOMENTUM = 0.9
PAPER_WEIGHT_DECAY = 1e-4
PAPER_WARMUP = {"lr": 0.01, "until_error": 80.0}  # ResNet-110 and -1202 only, about 400 iterations
PAPER_WARMUP_DEPTH = 110
PAPER_WARMUP_ITERS = 400  # "(about 400 iterations)": where the paper's warm-up ended


@dataclass(frozen=True)
class PaperError:
    """One CIFAR-10 test error (%) of the paper: the number Table 6 gives (or Figure 6 shows), how
    to print it, and the runs behind it (mean, std, count) where the paper reports them; else one run."""

    value: float
    shown: str
    mean: float | None = None
    std: float | None = None
    runs: int = 1


# Keyed by (residual, depth).
PAPER_CIFAR10 = {
    (True, 20): PaperError(8.75, "8.75"),
    (True, 32): PaperError(7.51, "7.51"),
    (True, 44): PaperError(7.17, "7.17"),
    (True, 56): PaperError(6.97, "6.97"),
    # best of 5 runs (mean ± std): the only spread the paper reports (Table 6, "6.43 (6.61±0.16)")
    (True, 110): PaperError(6.43, "6.43 (6.61 ± 0.16)", mean=6.61, std=0.16, runs=5),
    (True, 1202): PaperError(7.93, "7.93"),
    # Plain nets are not in Table 6: final test error read off Figure 6 (left), approximate.
    (False, 20): PaperError(9.7, "≈9.7 (Fig. 6)"),
    (False, 32): PaperError(10.1, "≈10.1 (Fig. 6)"),
    (False, 44): PaperError(11.4, "≈11.4 (Fig. 6)"),
    (False, 56): PaperError(13.25, "≈13.25 (Fig. 6)"),
}
NOT_RECORDED = "not recorded"


@dataclass(frozen=True)
class Setting:
    """One line of the recipe: the paper's value in words, the run's, and whether the run's is
    the paper's (None where the paper does not say: shown, never counted as a difference)."""

    name: str
    paper: str
    as_run: Callable[[Run], str]
    same: Callable[[Run], bool] | None


def _key(run: Run, key: str) -> Any:
    """Run.value for a key that always has a value: KeyError where the config lacks it, which
    the recipe shows as "not recorded"."""
    value = run.value(key)
    if value is None:
        raise KeyError(key)
    return value


def _data(run: Run) -> str:
    name = _key(run, "data.name")
    if name == "synthetic":
        return (f"synthetic ({_key(run, 'data.train_size'):,} train / {_key(run, 'data.test_size'):,} "
                "test images, resexp/data/synthetic.py)")
    return {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "fashion_mnist": "Fashion-MNIST"}.get(name, str(name))


def _split(run: Run) -> str:
    if run.eval_split == "val":
        return (f"{_key(run, 'data.val_size'):,} training images held out as val; trained on the rest, "
                "evaluated on val")
    return "trained on the whole training set, evaluated on test"


def _optimizer(run: Run) -> str:
    name, decay = _key(run, "optim.name"), _key(run, "optim.weight_decay")
    if name != "sgd":
        return f"{name}, weight decay {decay:g}"
    nesterov = ", Nesterov" if _key(run, "optim.nesterov") else ""
    return f"SGD, momentum {_key(run, 'optim.momentum'):g}{nesterov}, weight decay {decay:g}"


def _same_optimizer(run: Run) -> bool:
    return (run.value("optim.name") == "sgd" and run.value("optim.momentum") == PAPER_MOMENTUM
            and run.value("optim.weight_decay") == PAPER_WEIGHT_DECAY
            and not run.value("optim.nesterov"))


def _schedule(run: Run) -> str:
    lr, kind = _key(run, "optim.lr"), _key(run, "optim.schedule")
    if kind != "step":
        return f"{lr:g}, {kind}"
    fractions, gamma = _key(run, "optim.milestones"), _key(run, "optim.gamma")
    factor = f"÷{1 / gamma:g}" if gamma < 1 else f"×{gamma:g}"
    at = " and ".join(f"{round(f * _key(run, 'trainer.max_iters')):,}" for f in fractions)
    return f"{lr:g}, {factor} at {at} ({' and '.join(f'{f:.0%}' for f in fractions)} of training)"


def _same_schedule(run: Run) -> bool:
    return (run.value("optim.lr") == PAPER_LR and run.value("optim.schedule") == "step"
            and tuple(run.value("optim.milestones") or ()) == PAPER_MILESTONES
            and run.value("optim.gamma") == PAPER_GAMMA)


def _warmup(run: Run) -> str:
    parts = []
    if _key(run, "optim.warmup_iters"):
        parts.append(f"linear from 0 over the first {_key(run, 'optim.warmup_iters'):,} iterations")
    error_warmup = run.value("optim.error_warmup")
    if error_warmup:
        # Runs written before optim.error_warmup.window existed judged one batch's error.
        over = f"over the last {error_warmup['window']:,} images" if "window" in error_warmup else "of one batch"
        parts.append(f"lr {error_warmup['lr']:g} until the training error {over} < {error_warmup['until_error']:g}% "
                     f"(at most {error_warmup['max_iters']:,} iterations)")
    return "; ".join(parts) or "none"


def warmup_ends(labelled: Iterable[tuple[str, Run]]) -> list[str]:
    """One line per net with the error warm-up: the iteration where each seed's ended (summary.json's
    error_warmup), beside the paper's "about 400"; [] where no net has the warm-up."""
    nets: dict[str, list[str]] = {}
    for label, run in labelled:
        if not run.value("optim.error_warmup"):
            continue
        end = run.summary.error_warmup
        if end is None:
            where = "not recorded" if run.status == "finished" else f"not ended ({run.status})"
        else:
            limit = ", at its limit max_iters" if end.ended_by == "max_iters" else ""
            where = f"{end.ended_at:,} ({end.train_error:.1f}% over {end.over_images:,} images{limit})"
        nets.setdefault(label, []).append(f"seed {run.seed}: {where}")
    return [f"- {label}: {'; '.join(seeds)}; paper: about {PAPER_WARMUP_ITERS}" for label, seeds in nets.items()]


def _same_warmup(run: Run) -> bool:
    error_warmup = run.value("optim.error_warmup")
    wanted = run.residual and run.depth >= PAPER_WARMUP_DEPTH
    paper_like = bool(error_warmup) and all(error_warmup.get(k) == v for k, v in PAPER_WARMUP.items())
    return not run.value("optim.warmup_iters") and (paper_like if wanted else not error_warmup)


def _bn_images(run: Run) -> int | None:
    """The images each BatchNorm normalised together in training: model.bn_batch, or the whole batch
    where it is null or absent (runs written before it existed); None where neither is recorded."""
    return run.value("model.bn_batch") or run.value("trainer.batch_size")


def _bn_batch(run: Run) -> str:
    images, batch = _bn_images(run), _key(run, "trainer.batch_size")
    if images >= batch:
        return f"{batch} (the whole mini-batch)"
    return f"{images} (each of the {batch // images} groups of the {batch} batch on its own)"


def _init(run: Run) -> str:
    return (f"He normal, {HE_INIT_MODE} (n = k²·c_out, as fb.resnet.torch and torchvision); the classifier keeps "
            "PyTorch's default Linear init (uniform ±1/√c_in, bias too), not [13]'s; BN γ = 1, β = 0. fan_out and "
            "fan_in differ only where c_in ≠ c_out: the stem and the first conv of stages 2 and 3")


def _momentum_update(run: Run) -> str:
    if _key(run, "optim.name") != "sgd":
        return "n/a: not SGD"
    return ("PyTorch's: v ← μ·v + g, w ← w − lr·v (Caffe's v ← μ·v + lr·g, w ← w − v differs only for about "
            "1/(1 − μ) = 10 steps after each lr drop)")


def _decayed(run: Run) -> str:
    if _key(run, "optim.name") == "sgd":
        return "every parameter: conv and classifier weights, classifier bias, BN γ and β (resexp/engine/step.py)"
    return "weight matrices only: no biases, norm gains or scalars (resexp/engine/step.py)"


def _test_bn(run: Run) -> str:
    images, batch = _bn_images(run), _key(run, "trainer.batch_size")
    source = f", from each batch's first {images} images only" if images < batch else ""
    return (f"running averages (momentum {BN_MOMENTUM:g}: each training step moves them {BN_MOMENTUM:.0%} of the "
            f"way to the batch statistics{source})")


def _shortcut(run: Run) -> str:
    if not run.residual:
        return "none: a plain net"
    return {"A": "option A (identity + zero-padded channels)",
            "B": "option B (1×1 projection + BN)"}.get(_key(run, "model.shortcut"), NOT_RECORDED)


def _zero_pad(run: Run) -> str:
    if not run.residual or _key(run, "model.shortcut") != "A":
        return "n/a: no option-A shortcut"
    # Runs written before model.zero_pad existed have the default (resexp.rundir.run_identity).
    placement = run.value("model.zero_pad") or DEFAULT_ZERO_PAD
    return {"end": "end: zero channels after the old ones",
            "split": "split: half before, half after the old ones"}.get(placement, NOT_RECORDED)


def _width(run: Run) -> str:
    width = _key(run, "model.width")
    return f"{width:g} ({', '.join(str(scaled_channels(c, width)) for c in STAGE_CHANNELS)} filters)"


def _recorded(value: Any) -> str:
    return NOT_RECORDED if value is None else str(value)


RECIPE = (
    Setting("data", "CIFAR-10 (50,000 train / 10,000 test images)", _data,
            lambda run: run.value("data.name") == PAPER_DATA),
    Setting("split", "schedule chosen on a 45k/5k train/val split; final models trained on all 50k, tested on "
            "the 10k test set", _split, lambda run: run.eval_split == "test"),
    Setting("iterations", f"{PAPER_ITERS:,}", lambda run: f"{_key(run, 'trainer.max_iters'):,}",
            lambda run: run.value("trainer.max_iters") == PAPER_ITERS),
    Setting("batch", str(PAPER_BATCH), lambda run: str(_key(run, "trainer.batch_size")),
            lambda run: run.value("trainer.batch_size") == PAPER_BATCH),
    Setting("BN batch", f"{PAPER_BN_BATCH}: the batch of {PAPER_BATCH} ran \"on two GPUs\", each normalising "
            "its own half (no synchronised BN in 2015)", _bn_batch, lambda run: _bn_images(run) == PAPER_BN_BATCH),
    Setting("test-time BN", "not stated (which GPU's running averages were kept is not known)", _test_bn, None),
    Setting("init", "\"as in [13]\" (He et al. 2015b: normal, std √(2/n); its derivation takes n = k²·c_in and "
            "says n = k²·c_out works as well); BN's not stated", _init, lambda run: False),
    Setting("optimizer", f"SGD, momentum {PAPER_MOMENTUM:g}, weight decay {PAPER_WEIGHT_DECAY:g}", _optimizer,
            _same_optimizer),
    Setting("weight decay on", "not stated", _decayed, None),
    Setting("momentum update", "not stated", _momentum_update, None),
    Setting("lr schedule", f"{PAPER_LR:g}, ÷10 at 32,000 and 48,000 (50% and 75% of training)", _schedule,
            _same_schedule),
    Setting("warm-up", f"none; ResNet-110 and -1202: lr {PAPER_WARMUP['lr']:g} until training error "
            f"< {PAPER_WARMUP['until_error']:g}% (about 400 iterations)", _warmup, _same_warmup),
    Setting("augmentation", "pad 4 (with what not stated), random 32×32 crop, random horizontal flip",
            lambda run: ("pad 4 (zeros after the mean subtraction: the mean image), random 32×32 crop, random "
                         "horizontal flip") if _key(run, "data.augment") else "none",
            lambda run: bool(run.value("data.augment"))),
    # resexp has no other input normalisation (resexp/data/batcher.py), so no key records it.
    Setting("input", "per-pixel training mean subtracted", lambda run: "per-pixel training mean subtracted",
            lambda run: True),
    Setting("shortcut", "option A: identity; at a shape change stride-2 subsampling + zero-padded channels",
            _shortcut, lambda run: not run.residual or run.value("model.shortcut") == "A"),
    Setting("zero-pad", "not stated (fb.resnet.torch puts the zero channels after the old ones)", _zero_pad, None),
    Setting("width", "1 (16, 32, 64 filters)", _width, lambda run: run.value("model.width") == 1),
    Setting("precision", "not stated: fp32 (2015's Caffe and Torch trained in fp32 only)", lambda run: _recorded(run.summary.precision),
            lambda run: run.summary.precision == "fp32"),
    Setting("device", "not stated", lambda run: _recorded(run.summary.device), None),
)


def comparison_gaps(run: Run) -> list[str]:
    """Why the run's error is not the quantity the paper's Table 6 reports ([] if it is): the
    same setting as Table 6's paper column (resexp/report/tables.py), said in words."""
    gaps = []
    if run.value("model.arch") != "cifar_resnet":
        gaps.append("not one of the paper's CIFAR nets")
    if run.value("data.name") != PAPER_DATA:
        gaps.append(f"{run.value('data.name')} data")
    if run.eval_split != "test":
        gaps.append(f"{run.eval_split} error")
    if run.residual and run.value("model.shortcut") != "A":
        gaps.append(f"shortcut option {run.value('model.shortcut')}")
    width = run.value("model.width")
    if width != 1:
        gaps.append(f"width {width:g}" if width is not None else "no model.width")
    return gaps


def recipe_rows(labelled: Iterable[tuple[str, Run]]) -> list[tuple[str, str, str]]:
    """(setting, the paper's, as run) for each setting of RECIPE; where runs differ, each value
    is followed by the nets that ran with it."""
    pairs = list(labelled)
    return [(s.name, s.paper, _by_value([(label, _as_run(s, run)) for label, run in pairs])) for s in RECIPE]


def recipe_differences(labelled: Iterable[tuple[str, Run]]) -> list[tuple[str, str]]:
    """Every setting in which some run differs from the paper, and how: ("iterations", "500;
    paper: 64,000"), with the nets that differ where not all do."""
    pairs = list(labelled)
    lines = []
    for setting in RECIPE:
        if setting.same is None:
            continue
        differing = [(label, _as_run(setting, run)) for label, run in pairs if not setting.same(run)]
        if not differing:
            continue
        every = {label for label, _ in differing} == {label for label, _ in pairs}
        lines.append((setting.name, f"{_by_value(differing, every)}; paper: {setting.paper}"))
    return lines


def _as_run(setting: Setting, run: Run) -> str:
    try:
        return setting.as_run(run)
    except (TypeError, KeyError):  # a key this run's config lacks (None where a number is formatted)
        return NOT_RECORDED


def _by_value(pairs: list[tuple[str, str]], one_value_alone: bool = True) -> str:
    """'value' if every net has it (and one_value_alone), else 'value (net, net); value (net)'."""
    nets: dict[str, list[str]] = {}
    for label, value in pairs:
        members = nets.setdefault(value, [])
        if label not in members:
            members.append(label)
    if len(nets) == 1 and one_value_alone:
        return next(iter(nets))
    return "; ".join(f"{value} ({', '.join(members)})" for value, members in nets.items())
