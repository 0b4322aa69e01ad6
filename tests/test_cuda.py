"""The whole-step CUDA graph on a real GPU (skipped without one; CI has none, so these run on a
lent GPU: `pytest tests/test_cuda.py`). Deterministic fp32 kernels make a replayed graph and
the eager step comparable bit for bit."""

import io
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before cuBLAS starts: deterministic matmuls

from resexp.config import compose  # noqa: E402
from resexp.data import build_data  # noqa: E402
from resexp.engine.runtime import Runtime  # noqa: E402
from resexp.engine.schedules import learning_rate  # noqa: E402
from resexp.engine.step import EAGER_STEPS_BEFORE_CAPTURE, TrainStep  # noqa: E402
from resexp.engine.train import train  # noqa: E402
from resexp.models import build_model  # noqa: E402

# scripts/gpu_check.sh sets RESEXP_REQUIRE_CUDA=1: there a GPU that torch cannot see fails the tests
REQUIRED = os.environ.get("RESEXP_REQUIRE_CUDA") == "1"
pytestmark = pytest.mark.skipif(not torch.cuda.is_available() and not REQUIRED, reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def cuda_visible():
    if not torch.cuda.is_available():
        pytest.fail("RESEXP_REQUIRE_CUDA=1 but torch sees no CUDA GPU")

BATCH = 32
STEPS = 20  # 100 images, batch 32: an epoch every 3 steps; lr milestones at steps 10 and 15
CFG = ["model=resnet20", "model.width=0.25", "model.depth=8", "data=synthetic", "data.train_size=100",
       "data.test_size=20", f"trainer.batch_size={BATCH}", "trainer.precision=fp32", "trainer.deterministic=true",
       f"trainer.max_iters={STEPS}", "trainer.device=cuda", "seed=5"]
VIT = ["model=vit_pre", "model.depth=2", "model.dim=32", "model.heads=2", "model.patch_size=8"]


def build_step(overrides: list[str]) -> TrainStep:
    cfg = compose(overrides)
    runtime = Runtime.from_config(cfg.trainer)
    data = build_data(cfg.data, runtime.device, BATCH, int(cfg.seed), runtime.memory_format)
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, data.channels, data.num_classes)
    model = model.to(runtime.device, memory_format=runtime.memory_format)
    step = TrainStep(model, cfg.optim, data.train, runtime, notify=pytest.fail)  # a fallback to eager fails
    step.cfg = cfg
    return step


def run(step: TrainStep, start: int, stop: int, inspect_at: tuple[int, ...] = ()) -> TrainStep:
    for i in range(start, stop):
        step.set_lr(learning_rate(step.cfg.optim, i, STEPS))
        step((lambda images, labels: None) if i in inspect_at else None)
    torch.cuda.synchronize()
    return step


def assert_same_state(a: TrainStep, b: TrainStep) -> None:
    for name, value in a.model.state_dict().items():  # weights, BN running statistics and counts
        assert torch.equal(b.model.state_dict()[name], value), name
    assert a.read_metrics() == b.read_metrics()


@pytest.mark.parametrize("model", [[], VIT], ids=["resnet20", "vit_pre+adamw"])
def test_the_replayed_graph_trains_exactly_as_the_eager_step(model):
    """Crosses epochs (the permutation refreshed in place), both lr milestones (the lr tensor
    written between replays) and the random crops (the generator's offset on the device)."""
    base = [o for o in CFG if not o.startswith("model")] + model if model else CFG
    graphed = run(build_step([*base, "trainer.graph=always"]), 0, STEPS)
    eager = run(build_step([*base, "trainer.graph=never"]), 0, STEPS)
    assert graphed.graph is not None and eager.graph is None
    assert graphed.execution == "whole-step CUDA graph" and eager.execution == "eager"
    assert graphed.batcher.epoch == eager.batcher.epoch == STEPS // 3
    assert_same_state(graphed, eager)


def test_the_same_seed_replays_the_same_run_and_another_seed_does_not():
    first, second = (run(build_step([*CFG, "trainer.graph=always"]), 0, STEPS) for _ in range(2))
    assert_same_state(first, second)
    other = run(build_step([*CFG, "trainer.graph=always", "seed=6"]), 0, STEPS)
    assert not torch.equal(other.model.fc.weight, first.model.fc.weight)


def test_probe_steps_between_replays_run_eagerly_and_change_nothing():
    """A probe (inspect) step after the capture runs eagerly on the same weights and optimizer
    state; the replays before and after it stay in step with an all-eager run."""
    probes = (0, EAGER_STEPS_BEFORE_CAPTURE + 4, 11)
    graphed = run(build_step([*CFG, "trainer.graph=always"]), 0, STEPS, probes)
    eager = run(build_step([*CFG, "trainer.graph=never"]), 0, STEPS, probes)
    assert graphed.graph is not None
    assert_same_state(graphed, eager)


def test_a_step_resumed_from_its_state_captures_and_continues_the_run():
    whole = run(build_step([*CFG, "trainer.graph=always"]), 0, STEPS)
    first = run(build_step([*CFG, "trainer.graph=always"]), 0, 7)
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    resumed = build_step([*CFG, "trainer.graph=always"])
    resumed.load_state_dict(torch.load(buffer, weights_only=False))
    run(resumed, 7, STEPS)
    assert resumed.graph is not None
    assert_same_state(whole, resumed)


def test_recomputed_activations_are_captured_too():
    """trainer.recompute_blocks inside the graph: checkpointed segments recompute in the
    captured backward, with the BN statistics moved once."""
    deep = [*CFG, "model.depth=20"]
    plain = run(build_step([*deep, "trainer.graph=always"]), 0, STEPS)
    segmented = run(build_step([*deep, "trainer.graph=always", "trainer.recompute_blocks=2"]), 0, STEPS)
    assert segmented.graph is not None and segmented.execution == "whole-step CUDA graph + recompute every 2 blocks"
    for name, value in plain.model.state_dict().items():
        assert torch.allclose(segmented.model.state_dict()[name].float(), value.float(), rtol=1e-4, atol=1e-5), name


def test_bf16_autocast_is_captured_and_matches_its_eager_step():
    graphed = run(build_step([*CFG, "trainer.precision=bf16", "trainer.graph=always"]), 0, STEPS)
    eager = run(build_step([*CFG, "trainer.precision=bf16", "trainer.graph=never"]), 0, STEPS)
    assert graphed.graph is not None
    assert_same_state(graphed, eager)


class StopAt:
    """Stops a run once its summary says it reached `iteration` (a sweep's stop, polled by the loop)."""

    def __init__(self, summary_path, iteration: int) -> None:
        self.summary_path, self.iteration = summary_path, iteration

    def stop_reason(self):
        import json

        done = json.loads(self.summary_path.read_text()).get("iterations", 0) if self.summary_path.is_file() else 0
        return "stop for the test" if done >= self.iteration else None

    def signalled(self, name):
        pass


def test_a_run_resumed_through_train_on_the_gpu_ends_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """The checkpoint mapped onto CUDA, the batcher's CUDA generator restored, the graph captured
    again after the resume: fp32, deterministic, bit for bit."""
    from resexp.engine.stopping import StopSignal

    monkeypatch.setattr(StopSignal, "POLL_S", 0.0)  # ask the stop source every step
    common = [*CFG, "trainer.graph=always", "trainer.eval_every=20", "trainer.log_every=1",
              "trainer.checkpoint_every=100", "trainer.progress=none"]
    straight_cfg = compose([*common, f"run.root={tmp_path}/straight"])
    straight = train(straight_cfg)
    cfg = compose([*common, f"run.root={tmp_path}/resumed"])
    first = train(cfg, stop_source=StopAt(Path(cfg.run.dir) / "summary.json", 10))
    assert first.status == "stopped" and 10 <= first.iterations < STEPS
    resumed = train(cfg)
    assert resumed.status == "finished" and len(resumed.segments) == 2
    for key in ("train_error", "train_loss", "test_error", "test_loss"):
        assert getattr(resumed, key) == getattr(straight, key), key
    a, b = (torch.load(Path(c.run.dir) / "checkpoints" / "last.pt", weights_only=True)["model"]
            for c in (straight_cfg, cfg))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_each_run_of_a_process_reports_its_own_peak_gpu_memory(tmp_path):
    """A sweep's worker trains run after run: a small run after a big one reports its own peak."""
    common = [*CFG, "trainer.eval_every=20", "trainer.log_every=5", "trainer.progress=none"]
    big = train(compose([*common, "model.width=2", "model.depth=20", f"run.root={tmp_path}/big"]))
    small = train(compose([*common, f"run.root={tmp_path}/small"]))
    assert small.peak_gpu_memory_gib < big.peak_gpu_memory_gib
