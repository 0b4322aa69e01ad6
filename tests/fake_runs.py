"""Run directories as train.py writes them (config.yaml, summary.json, TensorBoard events),
written with the real TensorBoard writer, for the report and app tests."""


import numpy as np
from omegaconf import OmegaConf
from torch.utils.tensorboard import SummaryWriter

from resexp.rundir import RunDir
from resexp.summary import Summary

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
    RunDir(run_dir).write_summary(Summary(
        status=status, model=name, data=data, seed=seed, params=PARAMS[depth], eval_split="test", max_iters=MAX_ITERS,
        iterations=steps[-1], train_error=train[-1], test_error=test[-1], best_test_error=min(test)))
    return {tag: tuple(map(list, zip(*sorted(zip(*pairs))))) for tag, pairs in written.items()}


# A run's resolved config as train.py saves it, with the paper's recipe on CIFAR-10 (the values
# configs/ compose for a ResNet-20 of `resexp train`), for reports that read the recipe.
PAPER_CONFIG = {
    "data": {"name": "cifar10", "root": "/somewhere", "download": True, "val_size": 0, "augment": True},
    "optim": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1.0e-4, "nesterov": False,
              "schedule": "step", "milestones": [0.5, 0.75], "gamma": 0.1, "warmup_iters": 0, "error_warmup": None},
    "trainer": {"max_iters": 64000, "batch_size": 128, "eval_every": 1000, "log_every": 100, "device": "auto",
                "precision": "auto"},
    "model": {"arch": "cifar_resnet", "name": "resnet20", "depth": 20, "residual": True, "shortcut": "A",
              "width": 1.0, "zero_pad": "end", "bn_batch": 64},
    "seed": 0,
    "run": {"sweep": "fake"},
}
ERROR_WARMUP = {"lr": 0.01, "until_error": 80.0, "window": 6400, "max_iters": 4000}


def write_final_run(root, name, depth, residual, seed, train_error, eval_error, status="finished",
                    dir_name=None, **changes):
    """A run directory with a full config (PAPER_CONFIG, with `changes` as dotted keys: "optim.lr"
    is written optim__lr=...) whose last logged training and evaluation errors are the ones given;
    ResNet-110 and deeper get the paper's warm-up, as their model configs do. Returns the directory."""
    cfg = OmegaConf.create(PAPER_CONFIG)
    cfg.model.update(name=name, depth=depth, residual=residual)
    cfg.seed = seed
    if residual and depth >= 110:
        cfg.optim.error_warmup = ERROR_WARMUP
    for key, value in changes.items():
        OmegaConf.update(cfg, key.replace("__", "."), value, merge=False)
    run_dir = root / (dir_name or f"model={name},seed={seed}")
    run_dir.mkdir(parents=True)
    cfg.run.dir = str(run_dir)
    OmegaConf.save(cfg, run_dir / "config.yaml")
    split = "val" if cfg.data.val_size else "test"
    max_iters = int(cfg.trainer.max_iters)
    steps = [max_iters // 4, max_iters // 2, max_iters] if status == "finished" else [max_iters // 4]
    train = f32([90.0, (90.0 + train_error) / 2, train_error][:len(steps)])
    evaluated = f32([90.0, (90.0 + eval_error) / 2, eval_error][:len(steps)])
    with SummaryWriter(str(run_dir / "tb")) as writer:
        for step, tr, ev in zip(steps, train, evaluated):
            writer.add_scalar("train/error", tr, step)
            writer.add_scalar(f"{split}/error", ev, step)
    errors = {f"{split}_error": evaluated[-1], f"best_{split}_error": min(evaluated)}
    RunDir(run_dir).write_summary(Summary(
        status=status, model=name, data=cfg.data.name, seed=seed, params=PARAMS.get(depth), eval_split=split,
        max_iters=max_iters, iterations=steps[-1], device="cpu (fake)", precision="fp32", train_error=train[-1],
        **errors, wall_time_s=60.0, **({"diverged_reason": "non-finite loss"} if status == "diverged" else {})))
    return run_dir
