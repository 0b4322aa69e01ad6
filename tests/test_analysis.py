"""Layer responses and the lesion study: values against hand computations on tiny models, and the
commands on real (tiny) trained runs, with their one-line refusals."""

import copy
import json
import random
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from resexp.analysis.lesion import draw_pairs, swappable
from resexp.analysis.responses import layer_responses, response_layers
from resexp.analysis.trained import EVAL_BATCH, load_run
from resexp.cli import app
from resexp.config import compose
from resexp.engine.evaluate import evaluate
from resexp.engine.train import train
from resexp.models import build_model
from resexp.models.surgery import blocks_of, lesioned

TINY = ["data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.25", "trainer.batch_size=32",
        "trainer.max_iters=4", "trainer.eval_every=2", "trainer.log_every=2", "trainer.progress=none"]


def tiny_net(depth: int, residual: bool) -> nn.Module:
    torch.manual_seed(depth + residual)
    model = build_model({"arch": "cifar_resnet", "name": "t", "depth": depth, "residual": residual,
                         "shortcut": "A", "width": 0.25})
    for module in model.modules():  # trained-looking BN: statistics and affine far from the identity
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.uniform_(0.2, 1.5)
            module.bias.data.uniform_(-0.3, 0.3)
    return model.eval()


def test_layer_response_std_equals_a_hand_computation():
    model = tiny_net(14, residual=True)
    images = torch.randn(600, 3, 32, 32)  # more than one batch of EVAL_BATCH: sums across batches
    stds = layer_responses(model, images)
    names = [name for name, _ in response_layers(model)]
    assert len(stds) == len(names) == 13  # stem + 2 per block, 6 blocks
    with torch.no_grad():
        stem = model.stem[1](model.stem[0](images))
        block = model.stages[0][0]
        r1 = block.bn1(block.conv1(F.relu(stem)))
        r2 = block.bn2(block.conv2(F.relu(r1)))
    for name, expected in [("stem.1", stem), ("stages.0.0.bn1", r1), ("stages.0.0.bn2", r2)]:
        assert stds[names.index(name)] == pytest.approx(expected.double().std(unbiased=False).item(), rel=1e-6)


def test_deleting_a_block_equals_the_net_built_without_it():
    images = torch.randn(8, 3, 32, 32)
    for residual in (True, False):
        model = tiny_net(14, residual)
        without = copy.deepcopy(model)
        without.stages[1] = nn.Sequential(without.stages[1][0])  # stage 2 with its second block removed
        with torch.no_grad(), lesioned(model, deleted=[(1, 1)]):
            assert torch.equal(model(images), without(images))
        before = [id(m) for m in model.modules()]
        with torch.no_grad():
            assert torch.equal(model(images), copy.deepcopy(model)(images))  # put back as it was
        assert before == [id(m) for m in model.modules()]


def test_deleting_a_downsampling_block_keeps_only_option_a():
    model = tiny_net(14, residual=True)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        x = F.relu(model.stem(images))
        x = model.stages[0](x)
        x = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, x.shape[1]))  # subsample, zero channels appended
        x = model.stages[2](model.stages[1][1](x))
        expected = model.fc(torch.flatten(model.pool(x), 1))
        with lesioned(model, deleted=[(1, 0)]):
            assert torch.allclose(model(images), expected, atol=1e-6)


def test_swapped_pairs_are_same_stage_and_disjoint():
    model = tiny_net(20, residual=True)
    candidates = swappable(model)
    assert (1, 0) not in candidates and (2, 0) not in candidates and (0, 0) in candidates
    pairs = draw_pairs(candidates, 3, random.Random(0))
    assert len(pairs) == 3 and all(a[0] == b[0] for a, b in pairs)
    assert len({block for pair in pairs for block in pair}) == 6
    assert draw_pairs(candidates, 10, random.Random(0)) is None  # only 7 swappable blocks
    images = torch.randn(4, 3, 32, 32)
    (a, b), = draw_pairs(candidates, 1, random.Random(1))
    reordered = copy.deepcopy(model)
    reordered.stages[a[0]][a[1]], reordered.stages[b[0]][b[1]] = reordered.stages[b[0]][b[1]], \
        reordered.stages[a[0]][a[1]]
    with torch.no_grad(), lesioned(model, swapped=[(a, b)]):
        assert torch.equal(model(images), reordered(images))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for model in ("resnet20", "plain20"):
        train(compose([f"model={model}", *TINY, f"run.root={root}"]))
    return root


def test_responses_and_lesion_commands_on_trained_runs(trained, tmp_path):
    runs = [str(trained / "plain20_synthetic_seed0"), str(trained / "resnet20_synthetic_seed0")]
    result = CliRunner().invoke(app, ["responses", str(trained), "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "responses.json").read_text())
    assert [r["label"] for r in written] == ["plain-20", "ResNet-20"] and all(len(r["std"]) == 19 for r in written)
    run = load_run(runs[1])
    images = torch.cat([x for x, _ in run.data.eval_batches(500, torch.contiguous_format)])
    assert written[1]["std"] == pytest.approx(layer_responses(run.model, images))
    assert (tmp_path / "responses.csv").read_text().count("\n") == 1 + 2 * 19

    result = CliRunner().invoke(app, ["lesion", *runs, "-o", str(tmp_path), "--k", "1,2", "--draws", "2"])
    assert result.exit_code == 0, result.output
    lesion = {r["label"]: r for r in json.loads((tmp_path / "lesion.json").read_text())}
    resnet = lesion["ResNet-20"]
    assert resnet["baseline_error"] == evaluate(run.model, run.data, EVAL_BATCH)[0]
    assert len(resnet["single_deletion_error"]) == len(blocks_of(run.model)) == 9
    assert [len(v) for v in resnet["random_deletion_error"].values()] == [2, 2]
    with lesioned(run.model, deleted=[(0, 1)]):
        assert resnet["single_deletion_error"][1] == evaluate(run.model, run.data, EVAL_BATCH)[0]
    assert (tmp_path / "lesion.png").stat().st_size > 10_000


def test_analysis_refusals_are_one_line(trained, tmp_path):
    resnet = trained / "resnet20_synthetic_seed0"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("config.yaml", "checkpoints"):
        (unfinished / name).symlink_to(resnet / name)
    summary = json.loads((resnet / "summary.json").read_text())
    (unfinished / "summary.json").write_text(json.dumps({**summary, "status": "stopped", "iterations": 2}))
    vit_root = tmp_path / "vit"
    (tmp_path / "out").mkdir()
    train(compose(["model=vit_pre", *(o for o in TINY if not o.startswith("model.")), "model.dim=16", "model.heads=2", "model.depth=2", "optim=adamw",
                   "trainer.max_iters=2", f"run.root={vit_root}"]))
    cases = [
        (["responses", str(tmp_path / "missing")], "is not a directory"),
        (["lesion", str(vit_root.parent / "out")], "no trained runs under"),
        (["responses", str(unfinished)], "has not finished training (status stopped, iteration 2 of 4)"),
        (["lesion", str(next(vit_root.iterdir()))], "resexp lesion applies to the cifar_resnet models"),
    ]
    for args, message in cases:
        result = CliRunner().invoke(app, [*args, "-o", str(tmp_path / "out")])
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output
    allowed = CliRunner().invoke(app, ["responses", str(unfinished), "--unfinished", "-o", str(tmp_path / "out")])
    assert allowed.exit_code == 0, allowed.output


def test_eval_landscape_and_gradflow_commands_take_sweep_run_directories(trained, tmp_path):
    """A sweep's run directories are named key=value: they are runs, not overrides."""
    run = tmp_path / "sweep" / "model=resnet20"
    shutil.copytree(trained / "resnet20_synthetic_seed0", run)
    summary = json.loads((run / "summary.json").read_text())
    result = CliRunner().invoke(app, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    assert f"error {summary['test_error']:.2f}%" in result.output and "iteration 4" in result.output

    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["landscape", str(run), "--grid", "3", "--limit", "32", "--dims", "1",
                                      "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads((out / "landscape_model=resnet20.json").read_text())
    loaded = load_run(run)
    assert saved["centre_loss"] == pytest.approx(evaluate(loaded.model, loaded.data, EVAL_BATCH, limit=32)[1], rel=1e-6)

    result = CliRunner().invoke(app, ["gradflow", str(run), "plain20", "data=synthetic", "data.train_size=256",
                                      "model.width=0.25", "--batches", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    curves = json.loads((out / "gradflow.json").read_text())["curves"]
    assert [(c["label"], c["state"]) for c in curves] == [("ResNet-20", "init"), ("ResNet-20", "checkpoint"),
                                                         ("plain-20", "init")]
    for args, message in [(["eval"], "give one run directory"),
                          (["eval", "--weights", str(tmp_path / "none.th"), "model=resnet20"], "no such file"),
                          (["gradflow"], "give run directories or model names")]:
        refused = CliRunner().invoke(app, args)
        assert refused.exit_code == 2 and message in refused.output, refused.output


def test_cnn_probes_equal_hand_computations():
    from resexp.engine.probes import block_grad_norms, stream_probes, supports_probes

    model = tiny_net(14, residual=True).train()
    images = torch.randn(6, 3, 32, 32)
    assert supports_probes(model)
    probes = stream_probes(model, images)
    assert model.training  # the probe's eval-mode forward leaves the mode as it was
    model.eval()
    with torch.no_grad():
        x = F.relu(model.stem(images))
        block = model.stages[0][0]
        branch = block.bn2(block.conv2(F.relu(block.bn1(block.conv1(x)))))
        out = F.relu(branch + x)
    assert probes["stream_norm"][0].item() == pytest.approx(out.flatten(1).norm(dim=1).mean().item(), rel=1e-5)
    assert probes["rel_update"][0].item() == pytest.approx(
        (branch.flatten(1).norm(dim=1).mean() / x.flatten(1).norm(dim=1).mean()).item(), rel=1e-5)
    assert len(probes["stream_norm"]) == 6 and "rel_update" not in stream_probes(tiny_net(14, False), images)

    def angle(a, b):  # arccos(cos_sim) / pi per image, flattened, averaged
        cos = F.cosine_similarity(a.flatten(1).double(), b.flatten(1).double(), dim=1).clamp(-1, 1)
        return (torch.arccos(cos) / torch.pi).mean().item()

    with torch.no_grad():
        x1 = model.stages[0](x)  # stage 1's input
        down = model.stages[1][0]
        out1 = down(x1)
        assert down.shortcut.zero_pad == "end"  # option A: stride-2 subsampling, zero channels appended
        carried = F.pad(x1[:, :, ::2, ::2], (0, 0, 0, 0, 0, out1.shape[1] - x1.shape[1]))
    assert probes["angular_distance"][0].item() == pytest.approx(angle(x, out), rel=1e-4)
    assert probes["angular_distance"][2].item() == pytest.approx(angle(carried, out1), rel=1e-4)
    assert 0 < angle(x, out) < 0.5
    identity = copy.deepcopy(model)
    identity.stages[0][1].bn2.weight.data.zero_(), identity.stages[0][1].bn2.bias.data.zero_()  # F(x) = 0
    assert stream_probes(identity, images)["angular_distance"][1].item() == 0

    model.train()
    F.cross_entropy(model(images), torch.arange(6) % 10).backward()
    expected = torch.cat([model.stages[1][0].conv1.weight.grad.flatten(), model.stages[1][0].conv2.weight.grad.flatten()])
    assert block_grad_norms(model)[2].item() == pytest.approx(expected.norm().item(), rel=1e-5)


@pytest.mark.parametrize("residual", [True, False])
def test_cnn_skip_loss_delta_equals_hand_built_models(residual):
    from resexp.engine.probes import skip_loss_delta

    model = tiny_net(14, residual).train()
    images, labels = torch.randn(6, 3, 32, 32), torch.arange(6) % 10

    class Identity(nn.Module):  # a skipped stride-1 block: relu(x) (x >= 0 already)
        def forward(self, x):
            return F.relu(x)

    class SubsamplePad(nn.Module):  # a skipped downsampling block: option A, then the ReLU
        def forward(self, x):
            return F.relu(F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 0, x.shape[1])))

    def loss(m):
        with torch.no_grad():
            return F.cross_entropy(m.eval()(images), labels).item()

    delta = skip_loss_delta(model, images, labels)
    assert delta.shape == (6,) and model.training and all(isinstance(b, nn.Module) for b in model.stages[0])
    for (stage, index), position, hand in [((0, 1), 1, Identity()), ((1, 0), 2, SubsamplePad())]:
        skipped = copy.deepcopy(model)
        skipped.stages[stage][index] = hand
        expected = loss(skipped) - loss(copy.deepcopy(model))
        assert abs(expected) > 1e-5
        assert delta[position].item() == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_cnn_probes_leave_training_unchanged(tmp_path):
    common = ["model=resnet20", *TINY, "trainer.precision=fp32", "trainer.deterministic=true", "trainer.max_iters=3"]
    train(compose([*common, "trainer.probe_every=1", f"run.root={tmp_path}/a"]))
    train(compose([*common, "trainer.probe_every=0", f"run.root={tmp_path}/b"]))
    a, b = (torch.load(tmp_path / x / "resnet20_synthetic_seed0" / "checkpoints" / "last.pt", weights_only=True)
            for x in ("a", "b"))
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    from resexp.runs import read_series
    tags = read_series(tmp_path / "a" / "resnet20_synthetic_seed0")
    assert tags["probe/grad_norm/block_008"][0] == [0, 1, 2] and "probe/rel_update/block_000" in tags
    for probe in ("angular_distance", "stream_norm"):
        assert tags[f"probe/{probe}/block_000"][0] == [0, 1, 2], probe
    assert tags["probe/skip_loss_delta/block_000"][0] == [0, 1, 2, 3]  # and at the end, after the last eval


def test_figure7_draws_one_line_per_net_with_a_band_over_its_seeds():
    from resexp.analysis.responses import draw_responses

    def result(label, depth, residual, std, run):
        return {"label": label, "depth": depth, "residual": residual, "std": std, "images": 500, "run": run}

    results = [result("plain-20", 20, False, [1.0, 3.0, 2.0], "p0"), result("plain-20", 20, False, [3.0, 1.0, 2.0], "p1"),
               result("ResNet-20", 20, True, [0.5, 0.7, 0.6], "r0")]
    fig = draw_responses(results)
    top, bottom = fig.axes
    lines = {line.get_label(): line for line in top.get_lines()}
    assert sorted(lines) == ["ResNet-20", "plain-20 (2 seeds)"]  # one line per net, not per seed
    assert lines["plain-20 (2 seeds)"].get_ydata().tolist() == [2.0, 2.0, 2.0]  # the seeds' mean per layer
    assert lines["plain-20 (2 seeds)"].get_linestyle() == "--" and lines["ResNet-20"].get_linestyle() == "-"
    # the band: min to max of the seeds, drawn for the net with 2 seeds only
    (band,) = top.collections
    ys = band.get_paths()[0].vertices[:, 1]
    assert ys.min() == 1.0 and ys.max() == 3.0
    # bottom panel: each seed sorted on its own, then averaged: [3, 2, 1] for both seeds
    sorted_lines = {line.get_label(): line for line in bottom.get_lines()}
    assert sorted_lines["plain-20 (2 seeds)"].get_ydata().tolist() == [3.0, 2.0, 1.0]
    assert "pooled over 500 evaluation images, channels and positions" in fig.texts[0].get_text()
