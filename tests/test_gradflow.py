"""Gradient flow: per-layer gradient norms against autograd and by hand, the model left intact, a
real tiny run's init and checkpoint; shattered gradients against finite differences."""

import copy
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resexp.analysis.gradflow import (
    autocorrelation, gradflow, input_gradient, layer_grad_norms, mean_layer_grad_norms, shattered, shattered_net,
    training_batches,
)
from resexp.analysis.trained import load_run
from resexp.config import compose
from resexp.engine.train import train
from resexp.errors import ResexpError
from resexp.models import build_model

TINY_RESNET = {"arch": "cifar_resnet", "name": "x", "depth": 8, "residual": True, "shortcut": "A", "width": 0.25}
TINY_DATA = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.25", "trainer.batch_size=32"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train(compose(["model=resnet20", *TINY_DATA, "trainer.max_iters=4", "trainer.eval_every=2",
                   "trainer.log_every=2", "trainer.progress=none", f"run.root={root}"]))
    return root / "resnet20_synthetic_seed0"


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.hidden = nn.Linear(5, 7)
        self.out = nn.Linear(7, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.relu(self.hidden(x)))


def test_norms_by_hand_on_two_linear_layers():
    torch.manual_seed(0)
    model, x, y = TwoLayers().double(), torch.randn(11, 5, dtype=torch.float64), torch.randint(0, 3, (11,))
    # Backpropagation written out: mean cross-entropy, so dL/dlogits = (softmax - onehot) / N.
    pre = x @ model.hidden.weight.T + model.hidden.bias
    h = pre.clamp(min=0)
    d_logits = (torch.softmax(h @ model.out.weight.T + model.out.bias, 1) - F.one_hot(y, 3)) / len(y)
    d_out = d_logits.T @ h
    d_hidden = ((d_logits @ model.out.weight) * (pre > 0)).T @ x
    norms = layer_grad_norms(model, x, y)
    assert [name for name, _ in norms] == ["hidden", "out"]
    assert [norm for _, norm in norms] == pytest.approx([d_hidden.norm().item(), d_out.norm().item()], rel=1e-12)


def test_norms_match_autograd_with_batch_norm_in_train_mode():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 5)).eval()
    batches = [(torch.randn(6, 3, 8, 8), torch.randint(0, 5, (6,))) for _ in range(2)]
    expected = []
    for images, labels in batches:  # on a copy in train mode: batch statistics, as in training
        twin = copy.deepcopy(model).train()
        grads = torch.autograd.grad(F.cross_entropy(twin(images), labels), [twin[0].weight, twin[5].weight])
        expected.append([g.norm().item() for g in grads])
    names, norms = mean_layer_grad_norms(model, batches)
    assert names == ["0", "5"]
    assert norms == pytest.approx(np.mean(expected, axis=0).tolist(), rel=1e-6)
    eval_mode = torch.autograd.grad(F.cross_entropy(model(batches[0][0]), batches[0][1]), model[0].weight)[0]
    assert layer_grad_norms(model, *batches[0])[0][1] != pytest.approx(eval_mode.norm().item(), rel=1e-3)


def test_model_left_exactly_as_it_was():
    torch.manual_seed(0)
    model = build_model(TINY_RESNET)
    with torch.no_grad():  # running statistics away from their initial 0 and 1
        model.train()(torch.randn(16, 3, 32, 32))
    model.eval()
    model.stages[1].train()  # a mixed set of modes comes back mixed
    model.fc.weight.grad = torch.ones_like(model.fc.weight)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    modes = [m.training for m in model.modules()]
    norms = layer_grad_norms(model, torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,)))
    assert [name for name, _ in norms][:3] == ["stem.0", "stages.0.0.conv1", "stages.0.0.conv2"]
    assert len(norms) == 8 and norms[-1][0] == "fc" and all(norm > 0 for _, norm in norms)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())  # weights and BN buffers, bit for bit
    assert [m.training for m in model.modules()] == modes
    assert torch.equal(model.fc.weight.grad, torch.ones_like(model.fc.weight)) and model.stem[0].weight.grad is None


def test_gradflow_on_a_run_and_a_model_name(run_dir, tmp_path):
    written = gradflow([str(run_dir)], tmp_path, device="cpu", batches=2)
    assert written == [tmp_path / "gradflow.json", tmp_path / "gradflow.png", tmp_path / "gradflow.pdf"]
    assert all(path.stat().st_size > 0 for path in written)
    init, checkpoint = json.loads((tmp_path / "gradflow.json").read_text())["curves"]
    assert (init["state"], init["iteration"], checkpoint["state"], checkpoint["iteration"]) == ("init", 0, "checkpoint", 4)
    assert init["label"] == checkpoint["label"] == "ResNet-20" and init["residual"]

    run = load_run(run_dir, "cpu")
    batches = training_batches(run.data, 2)  # a fresh batcher: the run's first two batches again
    names, norms = mean_layer_grad_norms(run.model, batches)
    assert checkpoint["layers"] == names and len(names) == 20
    assert checkpoint["norms"] == pytest.approx(norms, rel=1e-6)
    torch.manual_seed(int(run.config.seed))  # what TrainStep.build does before building the model
    start = build_model(run.config.model, in_channels=run.data.channels, num_classes=run.data.num_classes)
    assert init["layers"] == names
    assert init["norms"] == pytest.approx(mean_layer_grad_norms(start, batches)[1], rel=1e-6)
    assert init["norms"] != pytest.approx(checkpoint["norms"], rel=1e-3)  # four SGD steps moved them

    gradflow(["plain20"], tmp_path / "named", overrides=TINY_DATA, device="cpu", batches=1)
    (named,) = json.loads((tmp_path / "named" / "gradflow.json").read_text())["curves"]
    assert (named["label"], named["state"], named["residual"], len(named["norms"])) == ("plain-20", "init", False, 20)

    with pytest.raises(ResexpError, match="gradflow applies to the CNNs"):
        gradflow(["vit_plain"], tmp_path / "vit", overrides=["data=synthetic"], device="cpu")


def test_input_gradient_equals_central_differences():
    x = torch.linspace(-2.0, 2.0, 256, dtype=torch.float64)[:, None]
    points = torch.tensor([3, 100, 131, 250])
    step = 1e-6
    for depth, kind in ((24, "plain"), (12, "residual")):
        net = shattered_net(depth, kind, 32, x, seed=1)
        first_bn = net[2][1] if kind == "plain" else net[2].layer[1]
        with torch.no_grad():  # the statistics are those of the 256 inputs
            pre = net[1](net[0](x)) @ (net[2][0] if kind == "plain" else net[2].layer[0]).weight.T
            torch.testing.assert_close(first_bn.running_mean, pre.mean(0))
            # Each point alone (a batch of 4, not the 256) on either side: eval-mode BN is per point.
            finite = (net(x[points] + step) - net(x[points] - step))[:, 0] / (2 * step)
        assert input_gradient(net, x)[points].tolist() == pytest.approx(finite.tolist(), rel=1e-6)


def test_autocorrelation():
    white = np.random.default_rng(0).standard_normal(4096)
    acf = autocorrelation(white, 5)
    assert acf[0] == 1.0 and abs(acf[1]) < 3 / np.sqrt(len(white))
    alternating = np.tile([1.0, -1.0], 50)
    assert autocorrelation(alternating, 2).tolist() == pytest.approx([1.0, -0.99, 0.98])


def test_shattered_figure_and_numbers(tmp_path):
    written = shattered(tmp_path, seed=0)
    assert written == [tmp_path / "shattered.json", tmp_path / "shattered.png", tmp_path / "shattered.pdf"]
    result = json.loads(written[0].read_text())
    nets = {net["label"]: net for net in result["nets"]}
    for net in nets.values():
        assert net["autocorrelation"] == pytest.approx(autocorrelation(np.array(net["gradient"]), 64).tolist())
        assert net["lag1_autocorrelation"] == net["autocorrelation"][1]
    # Balduzzi et al.: one layer is brown-noise-like, deep plain nets white, the resnet correlated.
    assert nets["1-layer feedforward"]["lag1_autocorrelation"] > 0.8
    assert abs(nets["24-layer feedforward"]["lag1_autocorrelation"]) < 0.2
    assert abs(nets["50-layer feedforward"]["lag1_autocorrelation"]) < 0.2
    assert nets["50-layer resnet"]["lag1_autocorrelation"] > 0.8
    with pytest.raises(ResexpError, match="kind must be"):
        shattered_net(2, "dense", 8, torch.zeros(4, 1, dtype=torch.float64))
