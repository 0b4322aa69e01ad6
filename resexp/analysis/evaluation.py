"""Test error and loss of a trained run's checkpoint, or of published weights from another
codebase (akamaster/pytorch_resnet_cifar10) run through resexp's own input path. Both return
plain dicts of JSON values, for `resexp eval` to print."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from resexp.analysis.trained import EVAL_BATCH, load_run
from resexp.config import compose
from resexp.data import build_data
from resexp.engine.evaluate import evaluate
from resexp.engine.runtime import resolve_device
from resexp.errors import ResexpError
from resexp.models.akamaster import load_akamaster
from resexp.models.cifar_resnet import CifarResNet

# --from choices: each reads (file, model config) into a model in eval mode and the mean image
# (C, H, W) that resexp's normalisation (x/255 - mean) must subtract for it.
Importer = Callable[[Path, Mapping[str, Any]], tuple[CifarResNet, torch.Tensor]]
WEIGHT_SOURCES: dict[str, Importer] = {"akamaster": load_akamaster}


def eval_run(run_dir: str | Path, device: str = "auto", unfinished: bool = False,
             limit: int | None = None) -> dict[str, Any]:
    """The error (%) and loss of a run's checkpoint on its evaluation split (the first `limit`
    images of it when given)."""
    check_limit(limit)
    run = load_run(run_dir, device, unfinished)
    error, loss = evaluate(run.model, run.data, EVAL_BATCH, limit=limit)
    return {"run": str(run.path), "model": str(run.config.model.name), "data": run.data.name,
            "split": run.data.eval_split, "iteration": run.iteration, "error": error, "loss": loss,
            "images": images_evaluated(len(run.data.eval_labels), limit)}


def eval_weights(weights: str | Path, source: str, overrides: list[str], device: str = "auto",
                 limit: int | None = None) -> dict[str, Any]:
    """The error (%) and loss of a weights file from `source` (WEIGHT_SOURCES) as the model that
    `overrides` compose (e.g. ["model=resnet56"]; data=cifar10 unless they say otherwise)."""
    if source not in WEIGHT_SOURCES:
        raise ResexpError(f"unknown weights source '{source}'; choose from: {', '.join(WEIGHT_SOURCES)}")
    check_limit(limit)
    cfg = compose(overrides)
    target = resolve_device(device)
    model, mean = WEIGHT_SOURCES[source](Path(weights), cfg.model)  # before the data: it may download
    # Batch size 1: the training batcher goes unused, and must not refuse a small training set.
    data = build_data(cfg.data, target, 1, int(cfg.seed), torch.contiguous_format)
    inputs = (len(mean), model.fc.out_features)
    if inputs != (data.channels, data.num_classes):
        raise ResexpError(f"{weights} classifies {inputs[0]}-channel images into {inputs[1]} classes; "
                          f"data={data.name} has {data.channels} channels and {data.num_classes} classes")
    data = dataclasses.replace(data, mean=mean.to(target))
    error, loss = evaluate(model.to(target), data, EVAL_BATCH, limit=limit)
    return {"weights": str(weights), "source": source, "model": str(cfg.model.name), "data": data.name,
            "split": data.eval_split, "error": error, "loss": loss,
            "images": images_evaluated(len(data.eval_labels), limit)}


def check_limit(limit: int | None) -> None:
    if limit is not None and limit < 1:
        raise ResexpError(f"the image limit must be a positive number of images; got {limit}")


def images_evaluated(available: int, limit: int | None) -> int:
    return available if limit is None else min(available, limit)


def is_override(word: str) -> bool:
    """A command-line word that is a key=value override, not a run directory (whose name may hold
    '=', as a sweep's runs' do)."""
    return "=" in word and not Path(word).is_dir()


def eval_line(args: Sequence[str], weights: str | None = None, source: str = "akamaster", device: str = "auto",
              unfinished: bool = False, limit: int | None = None) -> str:
    """`resexp eval`: the line it prints for one run directory (args: [RUN]) or, with weights, for a
    weights file from `source` as the model that args (overrides such as model=resnet56) compose."""
    if weights is not None:
        result = eval_weights(weights, source, list(args), device, limit)
        what = f"{result['weights']} ({result['source']}) as {result['model']}"
    else:
        if len(args) != 1 or is_override(args[0]):
            raise ResexpError("give one run directory (resexp eval RUN), or --weights FILE with model=NAME")
        result = eval_run(args[0], device, unfinished, limit)
        what = f"{result['run']} ({result['model']}, iteration {result['iteration']})"
    return (f"{what} on {result['data']} {result['split']} ({result['images']} images): "
            f"error {result['error']:.2f}%, loss {result['loss']:.4f}")
