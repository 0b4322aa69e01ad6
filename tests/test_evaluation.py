"""resexp eval's two halves: a trained run's checkpoint, and akamaster/pytorch_resnet_cifar10's
published weights, checked against a net written here with their conventions (module names,
option A padded on both sides, ImageNet normalisation) and saved in their file format."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cifar_files import write_cifar10
from resexp.analysis.evaluation import eval_run, eval_weights
from resexp.config import compose, load_model_config
from resexp.data import normalise
from resexp.engine.train import train
from resexp.errors import ResexpError
from resexp.models import build_model
from resexp.models.akamaster import IMAGENET_MEAN, IMAGENET_STD, load_akamaster
from resexp.models.cifar_resnet import ZeroPadShortcut

# ---- their net, as pytorch_resnet_cifar10's resnet.py writes it ----


class LambdaLayer(nn.Module):
    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class TheirBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = LambdaLayer(
                lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4), "constant", 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class TheirResNet(nn.Module):
    def __init__(self, depth: int) -> None:
        super().__init__()
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        in_planes = 16
        for index, (planes, stride) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
            layer = []
            for block in range(blocks):
                layer.append(TheirBlock(in_planes, planes, stride if block == 0 else 1))
                in_planes = planes
            setattr(self, f"layer{index}", nn.Sequential(*layer))
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.avg_pool2d(out, out.size()[3])
        return self.linear(out.view(out.size(0), -1))


def their_net(depth: int, seed: int = 0) -> TheirResNet:
    """Random weights and BN statistics far from init, so that every convention shows in the logits."""
    torch.manual_seed(seed)
    model = TheirResNet(depth)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0, 0.2)
                module.running_mean.normal_(0, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.num_batches_tracked.fill_(7820)
    return model.eval()


@torch.no_grad()
def their_logits(model: TheirResNet, images: torch.Tensor) -> torch.Tensor:
    """Their input path: ToTensor (x/255), then Normalize with ImageNet's mean and std."""
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
    return model((images.float() / 255 - mean) / std)


def save_theirs(model: TheirResNet, path: Path) -> Path:
    """Their file: the state_dict of the DataParallel wrapper (keys "module.*") and best_prec1."""
    torch.save({"state_dict": nn.DataParallel(model).state_dict(), "best_prec1": 91.7}, path)
    return path


def random_images(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def resexp_logits(model: nn.Module, mean: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return model(normalise(images, mean, torch.contiguous_format))


# ---- the importer ----


def test_imported_weights_give_their_logits(tmp_path):
    theirs = their_net(20)
    model, mean = load_akamaster(save_theirs(theirs, tmp_path / "resnet20.th"), load_model_config("resnet20"))
    images = random_images(16)
    expected = their_logits(theirs, images)
    assert expected.std() > 0.1  # logits that tell the classes apart, not a constant
    torch.testing.assert_close(resexp_logits(model, mean, images), expected, rtol=1e-5, atol=1e-5)
    assert not model.training
    assert mean.shape == (3, 32, 32) and torch.equal(mean[:, 5, 7], torch.tensor(IMAGENET_MEAN))


def test_files_without_bn_step_counters_load(tmp_path):
    """Files from before BatchNorm's num_batches_tracked (unused in eval) load all the same."""
    theirs = their_net(20)
    state = {k: v for k, v in nn.DataParallel(theirs).state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"state_dict": state, "best_prec1": 91.7}, tmp_path / "old.th")
    model, mean = load_akamaster(tmp_path / "old.th", load_model_config("resnet20"))
    images = random_images(4)
    torch.testing.assert_close(resexp_logits(model, mean, images), their_logits(theirs, images), rtol=1e-5, atol=1e-5)


def test_zero_channel_placement_matters(tmp_path):
    model, mean = load_akamaster(save_theirs(their_net(20), tmp_path / "resnet20.th"), load_model_config("resnet20"))
    appended = build_model({**load_model_config("resnet20"), "zero_pad": "end"}).eval()
    appended.load_state_dict(model.state_dict())
    images = random_images(16)
    difference = (resexp_logits(model, mean, images) - resexp_logits(appended, mean, images)).abs().max()
    assert difference > 1e-2


def test_split_pads_both_sides_as_their_lambda_does():
    x = torch.randn(2, 16, 8, 8)
    subsampled = x[:, :, ::2, ::2]
    split = ZeroPadShortcut(32, 2, "split")(x)
    torch.testing.assert_close(split, F.pad(subsampled, (0, 0, 0, 0, 8, 8)), rtol=0, atol=0)
    torch.testing.assert_close(ZeroPadShortcut(32, 2)(x), F.pad(subsampled, (0, 0, 0, 0, 0, 16)), rtol=0, atol=0)
    # An odd count of new channels: the odd one goes after.
    odd = ZeroPadShortcut(7, 1, "split")(torch.ones(1, 4, 2, 2))
    assert odd[0, :, 0, 0].tolist() == [0, 1, 1, 1, 1, 0, 0]


class TheirBlockSavedWhole(TheirBlock):
    """A file that pickles a module object rather than its state_dict."""


def test_a_file_that_needs_code_is_refused_without_running_it(tmp_path):
    tripwire = tmp_path / "unpickling_ran_code"

    class RunsCode:
        def __reduce__(self):
            return os.mkdir, (str(tripwire),)

    weights = their_net(20).state_dict()
    for name, extra in (("reduce", RunsCode()), ("module", TheirBlockSavedWhole(16, 16, 1)),
                        ("eval", (eval, "lambda x: x"))):
        path = tmp_path / f"{name}.th"
        torch.save({"state_dict": weights, "extra": extra}, path)
        message = refusal(path)
        assert "never runs code" in message, message
    assert not tripwire.exists()


def test_a_pickle_that_runs_code_is_one_line_on_stderr_without_torchs_warnings(tmp_path):
    """pickle's protocol 4 (not torch's 2) made torch.load warn in two lines before the refusal."""
    tripwire = tmp_path / "unpickling_ran_code"

    class RunsCode:
        def __reduce__(self):
            return os.mkdir, (str(tripwire),)

    path = tmp_path / "evil.th"
    path.write_bytes(pickle.dumps(RunsCode(), protocol=4))
    result = subprocess.run([sys.executable, "-m", "resexp.cli", "eval", "--weights", str(path), "model=resnet20",
                             "data=synthetic"], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"resexp: error: {path} is not an akamaster weights file"), lines
    assert not tripwire.exists()


def test_other_files_are_refused_in_one_line(tmp_path):
    weights = nn.DataParallel(their_net(20)).state_dict()
    (tmp_path / "garbage.th").write_bytes(b"not a torch file")
    torch.save(weights, tmp_path / "bare.th")
    torch.save({"state_dict": {k: v for k, v in weights.items() if k != "module.layer2.1.bn1.running_var"}},
               tmp_path / "missing.th")
    torch.save({"state_dict": {**weights, "module.linear.weight": torch.zeros(10, 32)}}, tmp_path / "shape.th")
    torch.save({"state_dict": {**weights, "module.layer1.0.shortcut.0.weight": torch.zeros(16, 16, 1, 1)}},
               tmp_path / "extra.th")
    cases = {"garbage.th": "not an akamaster weights file", "bare.th": "not a dict with a 'state_dict' entry",
             "missing.th": "lacks 'stages.1.1.bn1.running_var'", "shape.th": "fc.weight (resexp's name) has shape",
             "extra.th": "has 'stages.0.0.shortcut.0.weight'", "absent.th": "no such file"}
    for name, expected in cases.items():
        assert expected in refusal(tmp_path / name)


def test_depth_and_model_must_match_the_file(tmp_path):
    path = save_theirs(their_net(20), tmp_path / "resnet20.th")
    assert "holds ResNet-20 weights; model=resnet56 has depth 56" in refusal(path, "resnet56")
    assert "model.residual=false" in refusal(path, "plain20")
    assert "no layer1" in refusal(path, "resnet20", {"state_dict": {"module.linear.bias": torch.zeros(10)}})


def refusal(path: Path, model: str = "resnet20", contents: dict | None = None) -> str:
    """load_akamaster's one-line refusal of path (written with `contents` first, when given)."""
    if contents is not None:
        torch.save(contents, path)
    with pytest.raises(ResexpError) as info:
        load_akamaster(path, load_model_config(model))
    message = str(info.value)
    assert "\n" not in message and str(path) in message, message
    return message


# ---- eval_run: a real run ----


def test_eval_run_matches_the_runs_own_test_error(tmp_path):
    summary = train(compose(["model=resnet20", "data=synthetic", "data.train_size=256", "data.test_size=64",
                             "model.width=0.25", "trainer.batch_size=32", "trainer.max_iters=4",
                             "trainer.eval_every=2", "trainer.log_every=2", "trainer.progress=none",
                             f"run.root={tmp_path}"]))
    run_dir = tmp_path / "resnet20_synthetic_seed0"
    result = eval_run(run_dir, device="cpu")
    assert result["error"] == summary.test_error
    assert result["loss"] == pytest.approx(summary.test_loss, rel=1e-5)
    assert {k: result[k] for k in ("model", "data", "split", "iteration", "images")} == {
        "model": "resnet20", "data": "synthetic", "split": "test", "iteration": 4, "images": 64}
    json.dumps(result)  # plain values only
    assert eval_run(run_dir, device="cpu", limit=10)["images"] == 10
    with pytest.raises(ResexpError, match="positive number of images"):
        eval_run(run_dir, device="cpu", limit=0)


# ---- eval_weights: CIFAR-10 files in their on-disk format ----

TEST_SIZE = 40


def test_eval_weights_on_cifar10_matches_their_net(tmp_path, monkeypatch):
    data, labels = write_cifar10(tmp_path / "data", monkeypatch, per_batch=4, test_size=TEST_SIZE)["test_batch"]
    images, labels = torch.from_numpy(data).view(-1, 3, 32, 32), torch.tensor(labels)
    theirs = their_net(20, seed=3)
    path = save_theirs(theirs, tmp_path / "resnet20.th")
    result = eval_weights(path, "akamaster", ["model=resnet20", f"data.root={tmp_path / 'data'}",
                                              "data.download=false"], device="cpu")
    logits = their_logits(theirs, images)
    expected_error = 100.0 * (logits.argmax(1) != labels).sum().item() / TEST_SIZE
    assert result["error"] == expected_error
    assert result["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert {k: result[k] for k in ("model", "data", "split", "images", "source")} == {
        "model": "resnet20", "data": "cifar10", "split": "test", "images": TEST_SIZE, "source": "akamaster"}
    json.dumps(result)


def test_eval_weights_refusals_are_one_line(tmp_path):
    path = save_theirs(their_net(20), tmp_path / "resnet20.th")
    for source, overrides, expected in (("torchvision", ["model=resnet20"], "choose from: akamaster"),
                                        ("akamaster", ["model=resnet56"], "holds ResNet-20 weights")):
        with pytest.raises(ResexpError) as info:
            eval_weights(path, source, overrides, device="cpu")
        assert expected in str(info.value) and "\n" not in str(info.value)
