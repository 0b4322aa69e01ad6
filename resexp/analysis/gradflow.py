"""How gradients flow through plain and residual nets: the "+1" of a residual block, measured.

gradflow: for each weight layer of a CIFAR CNN (plainN, resnetN, vggN), the L2 norm of the
training loss's gradient with respect to the layer's weight, at initialisation (the init the run
had) and at a run's checkpoint. A residual block's Jacobian is 1 + dF/dx, so the gradient that
reaches an early layer keeps a direct path; a plain net multiplies through every layer.

shattered: Balduzzi et al. 2017 ("The Shattered Gradients Problem", Figure 1): dy/dx of a
scalar fully-connected ReLU net along a 1-D input at initialisation, and its autocorrelation.
Deep plain nets' gradients look like white noise; a resnet's stay correlated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import nn

from resexp.analysis.evaluation import is_override
from resexp.analysis.trained import load_run
from resexp.config import compose
from resexp.data import Data, build_data
from resexp.engine.runtime import resolve_device
from resexp.errors import ResexpError
from resexp.files import write_json
from resexp.models import build_model
from resexp.models.modes import in_mode
from resexp.plotting import save_figure
from resexp.rundir import model_label

Batch = tuple[torch.Tensor, torch.Tensor]  # normalised images, labels
CNN_ARCHS = ("cifar_resnet", "vgg")


# --- per-layer gradient norms of the CIFAR CNNs ------------------------------------------------

def weight_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Every Conv2d and Linear by module path, in registration order, which in these models is
    network order (stem, blocks' conv1 then conv2, classifier)."""
    return [(name, module) for name, module in model.named_modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


def layer_grad_norms(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[tuple[str, float]]:
    """(layer name, ‖d loss / d weight‖₂) per weight layer for the mean cross-entropy of one
    batch, with BN in train mode (batch statistics) as in training. The model comes back as it
    was: modes restored, BN running statistics restored bit for bit, no .grad written."""
    layers = weight_layers(model)
    buffers = [buffer.clone() for buffer in model.buffers()]  # a train-mode forward moves BN's running stats
    try:
        with in_mode(model, training=True), torch.enable_grad():
            loss = F.cross_entropy(model(images), labels)
            grads = torch.autograd.grad(loss, [module.weight for _, module in layers])
    finally:
        with torch.no_grad():
            for buffer, saved in zip(model.buffers(), buffers):
                buffer.copy_(saved)
    norms = torch.stack([torch.linalg.vector_norm(grad) for grad in grads]).tolist()  # one host read
    return [(name, norm) for (name, _), norm in zip(layers, norms)]


def mean_layer_grad_norms(model: nn.Module, batches: Sequence[Batch]) -> tuple[list[str], list[float]]:
    """Layer names and, per layer, the mean over batches of layer_grad_norms: the typical size of
    one training step's gradient (not the norm of the averaged gradient, which shrinks with noise)."""
    per_batch = [layer_grad_norms(model, images, labels) for images, labels in batches]
    names = [name for name, _ in per_batch[0]]
    norms = np.array([[norm for _, norm in batch] for batch in per_batch]).mean(axis=0)
    return names, norms.tolist()


def initial_model(cfg: DictConfig, data: Data) -> nn.Module:
    """The weights a run started from: TrainStep.build seeds the global generator with cfg.seed
    right before build_model. The caller's random state is left as it was."""
    with torch.random.fork_rng():
        torch.manual_seed(int(cfg.seed))
        model = build_model(cfg.model, in_channels=data.channels, num_classes=data.num_classes)
    return model.to(data.eval_images.device)


def training_batches(data: Data, count: int) -> list[Batch]:
    """The next `count` augmented, normalised training batches; from a fresh Data (seeded with
    the run's seed) these are the first batches the run trained on."""
    return [data.train.next() for _ in range(count)]


@dataclass
class GradFlowCurve:
    """The per-layer gradient norms of one target in one state."""

    target: str  # the run directory or model name given
    label: str  # "plain-56", "ResNet-56", "vgg16"
    residual: bool
    state: str  # "init" or "checkpoint"
    iteration: int  # 0 at init, the checkpoint's iteration
    batch_size: int
    layers: list[str]
    norms: list[float]


def require_cnn(cfg: DictConfig, where: str) -> None:
    if cfg.model.arch not in CNN_ARCHS:
        raise ResexpError(f"gradflow applies to the CNNs (plainN, resnetN, vggN); {where} is {cfg.model.name} "
                          f"(model.arch={cfg.model.arch}); ViTs have per-block gradient probes (trainer.probe_every)")


def target_curves(target: str, overrides: Sequence[str], device: str, batches: int,
                  unfinished: bool) -> list[GradFlowCurve]:
    """A run directory: curves at init and at its checkpoint. A model name: at init only, with
    data and seed from compose([model=name, *overrides])."""
    if Path(target).is_dir() or "/" in target:
        run = load_run(target, device, unfinished)
        require_cnn(run.config, str(run.path))
        cfg, data = run.config, run.data
        states = [("init", 0, initial_model(cfg, data)), ("checkpoint", run.iteration, run.model)]
    else:
        cfg = compose([f"model={target}", *overrides])
        require_cnn(cfg, f"model={target}")
        data = build_data(cfg.data, resolve_device(device), int(cfg.trainer.batch_size), int(cfg.seed),
                          torch.contiguous_format)
        states = [("init", 0, initial_model(cfg, data))]
    sample = training_batches(data, batches)  # the same batches for every state of a target
    label, residual = model_label(cfg.model), bool(cfg.model.get("residual", False))
    return [GradFlowCurve(target, label, residual, state, iteration, data.train.batch_size,
                          *mean_layer_grad_norms(model, sample))
            for state, iteration, model in states]


def gradflow(targets: Sequence[str | Path], out_dir: Path, overrides: Sequence[str] = (), device: str = "auto",
             batches: int = 4, unfinished: bool = False) -> list[Path]:
    """Per-layer gradient norms of each target (a run directory: at init and at its checkpoint;
    a model name such as plain56: at init, `overrides` composing its data, e.g. data=synthetic),
    each the mean over `batches` training batches. Writes out_dir/gradflow.json and the figure
    out_dir/gradflow.png and .pdf; returns the paths written."""
    if not targets:
        raise ResexpError("no targets given; give run directories or model names (e.g. plain56 resnet56)")
    if batches < 1:
        raise ResexpError(f"batches must be >= 1, not {batches}")
    curves = [curve for target in targets for curve in target_curves(str(target), overrides, device, batches,
                                                                      unfinished)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "gradflow.json"
    write_json(json_path, {"batches": batches, "curves": [asdict(curve) for curve in curves]})
    return [json_path, *save_figure(draw_gradflow(curves, batches), out_dir / "gradflow.png")]


def draw_gradflow(curves: list[GradFlowCurve], batches: int) -> Figure:
    """Gradient norm (log) against layer index, one line per target and state: plain nets (VGG
    too) in reds, residual nets in blues, a darker shade for each later target of a kind; dashed
    at init, solid at the checkpoint."""
    fig = Figure(figsize=(9, 5), layout="constrained")
    ax = fig.add_subplot()
    targets = list(dict.fromkeys((curve.target, curve.residual) for curve in curves))
    labels = [curve.label for curve in curves if curve.state == "init"]
    for curve in curves:
        same_kind = [target for target in targets if target[1] == curve.residual]
        shade = 0.55 + 0.4 * same_kind.index((curve.target, curve.residual)) / max(1, len(same_kind) - 1)
        colour = colormaps["Blues" if curve.residual else "Reds"](shade)
        name = curve.label if labels.count(curve.label) == 1 else f"{curve.label} ({Path(curve.target).name})"
        state = "init" if curve.state == "init" else f"trained, iter {curve.iteration}"
        ax.plot(range(len(curve.norms)), curve.norms, color=colour, linestyle="--" if curve.state == "init" else "-",
                marker=".", markersize=4, linewidth=1.3, label=f"{name} ({state})")
    ax.set_yscale("log")
    ax.set_xlabel("weight layer (0 = first conv, last = classifier)")
    ax.set_ylabel("‖∂loss/∂W‖₂")
    batch_size = curves[0].batch_size
    ax.set_title(f"Gradient norm per layer: mean over {batches} training batch{'es' if batches > 1 else ''} of "
                 f"{batch_size}, BN in train mode", fontsize="medium")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize="small")
    return fig


# --- shattered gradients (Balduzzi et al. 2017) --------------------------------------------------

# Their Figure 1 (1- and 24-layer feedforward, 50-layer resnet), and the resnet's plain twin.
SHATTERED_NETS = ((1, "plain"), (24, "plain"), (50, "plain"), (50, "residual"))
KINDS = ("plain", "residual")


class SkipLayer(nn.Module):
    """A plain layer with an identity shortcut around it: h + layer(h)."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.layer(h)


def shattered_net(depth: int, kind: str, width: int, inputs: torch.Tensor, seed: int = 0) -> nn.Sequential:
    """A scalar-to-scalar ReLU net at He init, in float64: `depth` hidden layers of `width` units,
    then a linear read-out. The first layer is Linear(1, width) with a bias, then ReLU: its kinks
    sit at -bias/weight, spread over the inputs (a BN right after a one-input layer would centre
    every unit on the mean input and put all kinks there). Each further layer is
    Linear-BN-ReLU; a residual net has the same layers, each with an identity shortcut around it,
    so that with the same seed the plain and residual twins have the same weights. BN statistics
    are computed once on `inputs` (N, 1) and then held fixed (eval mode), so that each point's
    output depends on that point alone."""
    if kind not in KINDS:
        raise ResexpError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if depth < 1:
        raise ResexpError(f"depth must be >= 1, not {depth}")
    first = nn.Linear(1, width)
    layers = [nn.Sequential(nn.Linear(width, width, bias=False), nn.BatchNorm1d(width), nn.ReLU())
              for _ in range(depth - 1)]  # no bias: BN subtracts the mean and has its own shift
    if kind == "residual":
        layers = [SkipLayer(layer) for layer in layers]
    net = nn.Sequential(first, nn.ReLU(), *layers, nn.Linear(width, 1, bias=False)).double()
    generator = torch.Generator().manual_seed(seed)
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
    nn.init.uniform_(first.bias, -1.0, 1.0, generator=generator)  # PyTorch's default for one input
    freeze_batch_norm(net, inputs)
    return net


@torch.no_grad()
def freeze_batch_norm(net: nn.Module, inputs: torch.Tensor) -> None:
    """Every BN's running statistics become the batch statistics of `inputs` (the variance
    unbiased, as PyTorch keeps it); the net is left in eval mode, where BN uses them."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm1d):
            module.reset_running_stats()
            module.momentum = None  # a cumulative average: after one batch, that batch's statistics
    net.train()
    net(inputs)
    net.eval()


def input_gradient(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """dy/dx at each point of x (N, 1), shape (N,). With BN frozen, y_i depends on x_i alone, so
    the gradient of sum(y) with respect to x_i is exactly dy_i/dx_i."""
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(net(x).sum(), x)
    return grad[:, 0]


def autocorrelation(series: np.ndarray, max_lag: int) -> np.ndarray:
    """The sample autocorrelation of a 1-D series at lags 0..max_lag: mean removed, normalised by
    the lag-0 sum, so lag 0 is 1 (undefined, NaN, for a constant series)."""
    centred = np.asarray(series, dtype=np.float64) - np.mean(series)
    energy = np.dot(centred, centred)
    return np.array([np.dot(centred[: len(centred) - lag], centred[lag:]) / energy for lag in range(max_lag + 1)])


def shattered_gradients(nets: Sequence[tuple[int, str]] = SHATTERED_NETS, width: int = 200, points: int = 256,
                        seed: int = 0) -> dict[str, Any]:
    """For each (depth, kind): dy/dx at `points` inputs evenly spaced on [-2, 2] and its
    autocorrelation at lags 0..points/4, with white and brown noise (its running sum) of the same
    length as references. Every net is drawn from a generator seeded with `seed`."""
    x = torch.linspace(-2.0, 2.0, points, dtype=torch.float64)[:, None]
    max_lag = points // 4
    series = []
    for depth, kind in nets:
        gradient = input_gradient(shattered_net(depth, kind, width, x, seed), x).numpy()
        label = f"{depth}-layer {'feedforward' if kind == 'plain' else 'resnet'}"
        series.append({"label": label, "depth": depth, "kind": kind, "gradient": gradient.tolist(),
                       **autocorrelation_summary(gradient, max_lag)})
    white = np.random.default_rng(seed).standard_normal(points)
    noise = [{"label": "white noise", **autocorrelation_summary(white, max_lag)},
             {"label": "brown noise", **autocorrelation_summary(np.cumsum(white), max_lag)}]
    return {"width": width, "points": points, "seed": seed, "x": x[:, 0].tolist(),
            "lags": list(range(max_lag + 1)), "nets": series, "noise": noise}


def autocorrelation_summary(series: np.ndarray, max_lag: int) -> dict[str, Any]:
    acf = autocorrelation(series, max_lag)
    return {"autocorrelation": acf.tolist(), "lag1_autocorrelation": float(acf[1])}


def shattered(out_dir: Path, seed: int = 0) -> list[Path]:
    """Balduzzi et al.'s Figure 1 at width 200 on 256 points: out_dir/shattered.json (the
    series, and the lag-1 autocorrelation of each) and out_dir/shattered.png and .pdf."""
    result = shattered_gradients(seed=seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "shattered.json"
    write_json(json_path, result)
    return [json_path, *save_figure(draw_shattered(result), out_dir / "shattered.png")]


def draw_shattered(result: dict[str, Any]) -> Figure:
    """One column per net: dy/dx against x on top, its autocorrelation against lag below, with
    white and brown noise's autocorrelations for reference."""
    nets = result["nets"]
    fig = Figure(figsize=(3.6 * len(nets), 6), layout="constrained")
    axes = fig.subplots(2, len(nets), squeeze=False)
    for column, net in enumerate(nets):
        top, bottom = axes[0, column], axes[1, column]
        colour = "tab:blue" if net["kind"] == "residual" else "tab:red"
        top.plot(result["x"], net["gradient"], color=colour, linewidth=0.8)
        top.set_title(net["label"])
        top.set_xlabel("input x")
        bottom.plot(result["lags"], net["autocorrelation"], color=colour, label=net["label"])
        for reference, style in zip(result["noise"], (":", "--")):
            bottom.plot(result["lags"], reference["autocorrelation"], color="grey", linestyle=style, linewidth=0.9,
                        label=reference["label"])
        bottom.axhline(0.0, color="black", linewidth=0.5)
        bottom.set_ylim(-0.5, 1.05)
        bottom.set_xlabel(f"lag (points, {4 / (result['points'] - 1):.3g} apart in x)")
        bottom.set_title(f"lag-1 autocorrelation {net['lag1_autocorrelation']:.2f}", fontsize="medium")
    axes[0, 0].set_ylabel("dy/dx")
    axes[1, 0].set_ylabel("autocorrelation of dy/dx")
    axes[1, 0].legend(fontsize="small")
    fig.suptitle(f"Shattered gradients at initialisation (width {result['width']}, {result['points']} points on "
                 f"[-2, 2], BN statistics frozen on them)", fontsize="medium")
    return fig


def run_gradflow(targets: Sequence[str], out: str | Path | None = None, batches: int = 4, with_shattered: bool = False,
                 seed: int = 0, device: str = "auto", unfinished: bool = False) -> list[Path]:
    """`resexp gradflow`: targets are run directories, model names and key=value overrides (the
    model names' data); gradflow of the runs and names, and with_shattered the shattered-gradients
    figure too, into out (default FIRST_RUN/analysis, or ./analysis). Returns the paths written."""
    overrides = [t for t in targets if is_override(t)]
    names = [t for t in targets if not is_override(t)]
    if not names and not with_shattered:
        raise ResexpError("give run directories or model names (e.g. plain56 resnet56 data=synthetic), or --shattered")
    first_run = next((n for n in names if Path(n).is_dir()), None)
    out_dir = Path(out) if out is not None else Path(first_run) / "analysis" if first_run else Path("analysis")
    paths = gradflow(names, out_dir, overrides, device, batches, unfinished) if names else []
    if with_shattered:
        paths += shattered(out_dir, seed)
    return paths
