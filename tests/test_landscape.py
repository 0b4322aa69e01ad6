"""Loss landscapes (Li et al. 2018) on a real tiny trained run: filter normalisation, the centre
against the run's own evaluation, a hand-computed point, weights left intact, the saved grid reused."""

import copy
import json

import numpy as np
import pytest
import torch

from resexp.analysis import landscape as landscape_module
from resexp.analysis.landscape import (
    evaluate_grid, filter_normalised_direction, grid_coordinates, landscape, random_directions,
)
from resexp.analysis.trained import EVAL_BATCH, load_run
from resexp.config import compose
from resexp.engine.evaluate import evaluate
from resexp.engine.train import train
from resexp.errors import ResexpError
from resexp.models import build_model

LIMIT = 64
TINY_RESNET = {"arch": "cifar_resnet", "name": "x", "depth": 8, "residual": True, "shortcut": "A", "width": 0.25}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train(compose(["model=resnet20", "data=synthetic", "data.train_size=256", "data.test_size=64", "model.width=0.25",
                   "trainer.batch_size=32", "trainer.max_iters=4", "trainer.eval_every=2", "trainer.log_every=2",
                   "trainer.progress=none", f"run.root={root}"]))
    return root / "resnet20_synthetic_seed0"


def test_directions_are_filter_normalised_and_seeded():
    model = build_model(TINY_RESNET)
    direction = filter_normalised_direction(model, torch.Generator().manual_seed(0))
    assert [d.shape for d in direction] == [w.shape for w in model.parameters()]
    normalised = 0
    for weight, d in zip(model.parameters(), direction):
        if weight.dim() > 1:  # every filter (output channel / row) has the trained filter's norm
            torch.testing.assert_close(d.flatten(1).norm(dim=1), weight.detach().flatten(1).norm(dim=1))
            assert not torch.equal(d, weight.detach())  # random, not the weights themselves
            normalised += 1
        else:  # BN weights and biases, the classifier's bias: left where training put them
            assert torch.count_nonzero(d) == 0
    assert normalised == 8  # stem + 3 blocks x 2 convs + classifier
    same = random_directions(model, 2, seed=0)
    again = random_directions(model, 2, seed=0)
    other = random_directions(model, 2, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(same[0] + same[1], again[0] + again[1]))
    assert all(torch.equal(a, b) for a, b in zip(same[0], direction))  # the first of two is the one direction
    assert not torch.equal(same[0][0], same[1][0])  # the plane's two directions differ
    assert not torch.equal(same[0][0], other[0][0])


def test_grid_centre_point_and_restored_weights(run_dir):
    run = load_run(run_dir, "cpu")
    trained = {k: v.clone() for k, v in run.model.state_dict().items()}
    coords = np.stack([grid_coordinates(3, 0.5)] * 2)
    directions = random_directions(run.model, 2, seed=0)
    loss, error = evaluate_grid(run.model, run.data, directions, coords, LIMIT)
    assert loss.shape == error.shape == (3, 3)

    own_error, own_loss = evaluate(run.model, run.data, EVAL_BATCH, limit=LIMIT)
    assert error[1, 1] == own_error
    assert loss[1, 1] == pytest.approx(own_loss, rel=1e-6)
    # Bit-identical weights and BN statistics afterwards.
    after = run.model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in trained.items())

    # (alpha, beta) = (-0.5, 0.5) by hand: theta + alpha*d1 + beta*d2 on a copy.
    moved = copy.deepcopy(run.model)
    with torch.no_grad():
        for weight, d1, d2 in zip(moved.parameters(), *directions):
            weight.copy_(weight + -0.5 * d1 + 0.5 * d2)
    hand_error, hand_loss = evaluate(moved, run.data, EVAL_BATCH, limit=LIMIT)
    assert error[0, 2] == hand_error
    assert loss[0, 2] == pytest.approx(hand_loss, rel=1e-5)
    assert loss[0, 2] != pytest.approx(loss[1, 1], rel=1e-3)  # the point moved the loss


def test_landscape_saves_reuses_and_forces(run_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    paths = landscape([run_dir], out, grid=3, span=0.5, dims=2, limit=LIMIT, device="cpu")
    npz, summary = out / "landscape_resnet20_synthetic_seed0.npz", out / "landscape_resnet20_synthetic_seed0.json"
    assert paths == [npz, summary, out / "landscape.png", out / "landscape.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)
    with np.load(npz) as saved:
        loss = saved["loss"]
        np.testing.assert_array_equal(saved["coords"], [[-0.5, 0, 0.5]] * 2)
        assert json.loads(str(saved["settings"]))["grid"] == 3
    run = load_run(run_dir, "cpu")
    own_error, own_loss = evaluate(run.model, run.data, EVAL_BATCH, limit=LIMIT)
    info = json.loads(summary.read_text())
    assert info["label"] == "ResNet-20" and info["centre_error"] == own_error
    assert info["centre_loss"] == pytest.approx(own_loss, rel=1e-6)
    assert (info["min_loss"], info["max_loss"]) == (loss.min(), loss.max())
    assert info["settings"] == {"run": str(run_dir.resolve()), "iteration": 4, "grid": 3, "span": 0.5, "dims": 2,
                                "limit": LIMIT, "seed": 0}

    def no_evaluation(*args, **kwargs):
        raise AssertionError("the saved grid should have been reused")

    monkeypatch.setattr(landscape_module, "evaluate_grid", no_evaluation)
    (out / "landscape.png").unlink()
    landscape([run_dir], out, grid=3, span=0.5, dims=2, limit=LIMIT, device="cpu")
    assert (out / "landscape.png").is_file()
    with np.load(npz) as saved:
        np.testing.assert_array_equal(saved["loss"], loss)
    with pytest.raises(AssertionError, match="reused"):  # other settings, or force: evaluated again
        landscape([run_dir], out, grid=3, span=0.5, dims=2, limit=LIMIT, device="cpu", seed=1)
    with pytest.raises(AssertionError, match="reused"):
        landscape([run_dir], out, grid=3, span=0.5, dims=2, limit=LIMIT, device="cpu", force=True)


def test_one_dimensional_landscape(run_dir, tmp_path):
    landscape([run_dir], tmp_path, grid=3, span=1.0, dims=1, limit=LIMIT, device="cpu", seed=3)
    with np.load(tmp_path / "landscape_resnet20_synthetic_seed0.npz") as saved:
        assert saved["loss"].shape == saved["error"].shape == (3,)
        assert saved["coords"].shape == (1, 3)
    assert (tmp_path / "landscape.pdf").is_file()


@pytest.mark.parametrize("settings, message", [
    ({"grid": 4}, "grid must be an odd number >= 3"),
    ({"grid": 1}, "grid must be an odd number >= 3"),
    ({"span": 0.0}, "span must be > 0"),
    ({"dims": 3}, "dims must be 1"),
    ({"limit": 0}, "limit must be >= 1"),
])
def test_bad_settings_are_one_line_errors(tmp_path, settings, message):
    with pytest.raises(ResexpError, match=message) as caught:
        landscape([tmp_path / "never-read"], tmp_path / "out", **settings)
    assert "\n" not in str(caught.value)
    assert not (tmp_path / "out").exists()  # refused before anything is written


def test_missing_run_and_clashing_names_are_one_line_errors(run_dir, tmp_path):
    with pytest.raises(ResexpError, match="not a run directory"):
        landscape([tmp_path / "nothing"], tmp_path / "out", grid=3)
    with pytest.raises(ResexpError, match="share a directory name"):
        landscape([run_dir, tmp_path / run_dir.name], tmp_path / "out", grid=3)
    with pytest.raises(ResexpError, match="no runs given"):
        landscape([], tmp_path / "out", grid=3)
