"""Weights of akamaster/pytorch_resnet_cifar10 (pretrained_models/resnetN-<hash>.th) as a resexp
CifarResNet, read as data only (torch.load weights_only: a weights file never runs code).

Their file is torch.save({"state_dict": ..., "best_prec1": ...}) of a DataParallel model, so
every key starts with "module.". Their net is resexp's residual option-A net with other names
(conv1, bn1, layerK.i.*, linear) and two other conventions, both absorbed here:

- option A's zero channels go half before and half after the old ones (their LambdaLayer's
  F.pad(..., (0, 0, 0, 0, planes // 4, planes // 4))): the model is built with zero_pad="split";
- inputs are normalised with ImageNet's per-channel mean m_c and std s_c, (x/255 - m_c) / s_c,
  where resexp feeds x/255 minus a mean image. The returned mean image is m_c in every pixel of
  channel c, and 1/s_c is folded into the stem conv's input channels. The fold is exact: the
  conv is linear in its input, so W * (u / s) = (W / s) * u channel by channel, and its zero
  padding is zero both before and after the division. The stem conv has no bias to adjust.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from resexp.errors import ResexpError, one_line
from resexp.files import load_data_only
from resexp.model_config import IMAGE_SIZE
from resexp.models import build_model
from resexp.models.cifar_resnet import CifarResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CIFAR10_CLASSES = 10  # they publish CIFAR-10 nets only
DATA_PARALLEL_PREFIX = "module."
# Their module names -> resexp's CifarResNet names.
RENAMES = ((re.compile(r"conv1\.(.+)"), r"stem.0.\1"), (re.compile(r"bn1\.(.+)"), r"stem.1.\1"),
           (re.compile(r"layer([123])\.(.+)"), lambda m: f"stages.{int(m[1]) - 1}.{m[2]}"),
           (re.compile(r"linear\.(.+)"), r"fc.\1"))
STAGE_BLOCK = re.compile(r"layer1\.(\d+)\.")
OPTIONAL_SUFFIX = "num_batches_tracked"  # BN's step counter: not used in eval, absent from old files


def load_akamaster(path: Path, model_cfg: Mapping[str, Any]) -> tuple[CifarResNet, torch.Tensor]:
    """The file's net as the CifarResNet model_cfg describes (eval mode, CPU, zero_pad="split",
    CIFAR-10's 3 channels and 10 classes) and the mean image (3, 32, 32) to subtract from x/255
    so that it gives their logits.
    Anything else than their format, or weights of another model, is a one-line ResexpError."""
    path = Path(path)
    check_model_config(path, model_cfg)
    state = strip_data_parallel(read_state_dict(path))
    depth = file_depth(path, state)
    if depth != int(model_cfg["depth"]):
        raise ResexpError(f"{path} holds ResNet-{depth} weights; model={model_cfg['name']} has depth "
                          f"{model_cfg['depth']}: choose model=resnet{depth}")
    model = build_model({**model_cfg, "zero_pad": "split"}, len(IMAGENET_MEAN), CIFAR10_CLASSES)
    model.load_state_dict(matched_state(path, renamed(path, state), model, model_cfg["name"]))
    fold_input_std(model)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1).expand(3, IMAGE_SIZE, IMAGE_SIZE).clone()
    return model.eval(), mean


def check_model_config(path: Path, model_cfg: Mapping[str, Any]) -> None:
    """Their nets are residual, option A, width 1: anything else would load wrong or not at all."""
    wanted = {"arch": "cifar_resnet", "residual": True, "shortcut": "A", "width": 1.0}
    wrong = [f"model.{key}={as_override(model_cfg.get(key))}" for key, value in wanted.items()
             if model_cfg.get(key) != value]
    if wrong:
        raise ResexpError(f"{path}: akamaster weights are residual nets with option A shortcuts at width 1 "
                          f"(resnet20 ... resnet1202); model={model_cfg.get('name')} has {', '.join(wrong)}")


def as_override(value: Any) -> str:
    """A value as the command line spells it (true, not True)."""
    return str(value).lower() if isinstance(value, bool) else str(value)


def read_state_dict(path: Path) -> dict[str, Any]:
    """The file's state_dict, unpickled as data only: a file that needs code is refused."""
    try:
        saved = load_data_only(path, "cpu")
    except FileNotFoundError:
        raise ResexpError(f"{path}: no such file") from None
    except Exception as e:  # unpickling a foreign or damaged file can raise almost anything
        raise ResexpError(f"{path} is not an akamaster weights file ({load_failure(e)})") from None
    if not isinstance(saved, dict) or not isinstance(saved.get("state_dict"), dict):
        raise ResexpError(f"{path} is not an akamaster weights file (not a dict with a 'state_dict' entry)")
    state = saved["state_dict"]
    not_tensors = [key for key, value in state.items() if not isinstance(value, torch.Tensor)]
    if not_tensors:
        raise ResexpError(f"{path}: state_dict entry {not_tensors[0]!r} is not a tensor")
    return state


def load_failure(error: Exception) -> str:
    """Why torch.load refused: the object that would need code, rather than torch's advice."""
    needs_code = re.search(r"\bGLOBAL ([\w.]+)", str(error))  # torch words it in more than one way
    if needs_code:
        return (f"loading it would call {needs_code[1]}; resexp reads weights as data only "
                "(torch.load weights_only=True) and never runs code from a file")
    detail = re.search(r"WeightsUnpickler error:\s*(\S.*)", str(error))
    return detail[1].strip() if detail else one_line(error)


def strip_data_parallel(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Keys without DataParallel's "module." (a file saved without the wrapper has none)."""
    return {key.removeprefix(DATA_PARALLEL_PREFIX): value for key, value in state.items()}


def file_depth(path: Path, state: Mapping[str, torch.Tensor]) -> int:
    """6n+2 from the n blocks of their first stage (every stage has n)."""
    blocks = {int(found[1]) for key in state if (found := STAGE_BLOCK.match(key))}
    if not blocks:
        raise ResexpError(f"{path} is not an akamaster weights file (no layer1.* entries in its state_dict)")
    return 6 * len(blocks) + 2


def renamed(path: Path, state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Their names -> resexp's; a key of neither kind is refused."""
    converted = {}
    for key, value in state.items():
        for pattern, replacement in RENAMES:
            if pattern.fullmatch(key):
                converted[pattern.sub(replacement, key)] = value
                break
        else:
            raise ResexpError(f"{path} has an entry akamaster's ResNet does not: {key!r}")
    return converted


def matched_state(
    path: Path, state: dict[str, torch.Tensor], model: CifarResNet, name: str
) -> dict[str, torch.Tensor]:
    """The converted state, checked entry by entry against the model's own (names and shapes)."""
    own = model.state_dict()
    unexpected = sorted(state.keys() - own.keys())
    missing = sorted(key for key in own.keys() - state.keys() if not key.endswith(OPTIONAL_SUFFIX))
    if unexpected:
        raise ResexpError(f"{path} has {unexpected[0]!r} (resexp's name), which {name} does not have")
    if missing:
        raise ResexpError(f"{path} lacks {missing[0]!r} (resexp's name), which {name} needs")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ResexpError(f"{path}: {key} (resexp's name) has shape {list(value.shape)}; {name} needs "
                              f"{list(own[key].shape)}")
    return {**own, **state}


@torch.no_grad()
def fold_input_std(model: CifarResNet) -> None:
    """Divide the stem conv's input channel c by ImageNet's s_c (see the module docstring)."""
    weight = model.stem[0].weight  # (out, in, 3, 3)
    weight /= torch.tensor(IMAGENET_STD, dtype=weight.dtype).view(1, -1, 1, 1)
