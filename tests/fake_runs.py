"""Run directories as train.py writes them (config.yaml, summary.json, TensorBoard events),
written with the real TensorBoard writer, for the report and app tests."""

import json

import numpy as np
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

MAX_ITERS = 2000
STEPS = list(range(100, MAX_ITERS + 1, 100))
PARAMS = {20: 269_722, 56: 853_018}
MANY = 10_500  # points of one tag: more than EventAccumulator's default sample of 1000 keeps


def f32(values):
    """TensorBoard stores scalars as float32: what a reader gets back."""
    return [float(np.float32(v)) for v in values]


def write_run(root, name, depth, residual, seed, status, data="cifar10", many=False):
    """A run directory as train.py writes it; returns {tag: (steps, values)} as logged."""
    run_dir = root / f"{name}_{data}_seed{seed}"
    run_dir.mkdir(parents=True)
    cfg = {"seed": seed, "run": {"dir": str(run_dir)},
           "model": {"arch": "cifar_resnet", "name": name, "depth": depth, "residual": residual,
                     "shortcut": "A", "width": 1.0},
           "data": {"name": data, "root": "/somewhere", "val_size": 0},
           "optim": {"name": "sgd", "lr": 0.1},
           "trainer": {"max_iters": MAX_ITERS, "batch_size": 128, "device": "cpu", "eval_every": 100}}
    OmegaConf.save(OmegaConf.create(cfg), run_dir / "config.yaml")
    rng = np.random.default_rng([depth, int(residual), seed])
    if status == "diverged":
        steps = STEPS[:8]
        train, test = f32(90 + rng.uniform(0, 1, len(steps))), f32(90 + rng.uniform(0, 1, len(steps)))
    else:
        decay = 10 * np.exp(-np.arange(len(STEPS)) / 4)
        floor = depth / 20 - 0.5 * residual
        train = f32(floor + decay + rng.uniform(0, 0.5, len(STEPS)))
        test = f32(floor + 6 + decay + rng.uniform(0, 0.5, len(STEPS)))
        steps = STEPS
    written = {"train/error": (steps, train), "test/error": (steps, test), "lr": (steps, f32([0.1] * len(steps)))}
    if many:  # written out of order, to check that read_series sorts by step
        loss_steps = [int(s) for s in rng.permutation(MANY) + 1]
        written["train/loss"] = (loss_steps, f32(1 / s for s in loss_steps))
    with SummaryWriter(str(run_dir / "tb")) as writer:
        for tag, (tag_steps, values) in written.items():
            for step, value in zip(tag_steps, values):
                writer.add_scalar(tag, value, step)
    summary = {"status": status, "model": name, "data": data, "seed": seed, "params": PARAMS[depth],
               "eval_split": "test", "max_iters": MAX_ITERS, "iterations": steps[-1],
               "train_error": train[-1], "test_error": test[-1], "best_test_error": min(test)}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return {tag: tuple(map(list, zip(*sorted(zip(*pairs))))) for tag, pairs in written.items()}
