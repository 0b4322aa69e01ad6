"""The one training step (resexp.engine.step): the same maths as a plain eager loop, and
capturable as one CUDA graph (checked on CPU: no host reads, the same ops every step)."""

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from resexp.config import compose
from resexp.data import build_data, load_source
from resexp.engine.checkpoint import TrainState
from resexp.engine.runtime import Runtime, resolve_graph
from resexp.engine.schedules import learning_rate
from resexp.engine.step import TrainStep
from resexp.errors import ConfigError
from resexp.models import build_model

BATCH = 32
CFG = ["model=resnet20", "model.width=0.25", "model.depth=8", "data=synthetic", "data.train_size=100",
       "data.test_size=20", f"trainer.batch_size={BATCH}", "trainer.precision=fp32", "trainer.deterministic=true",
       "trainer.max_iters=8", "seed=5"]


def build_step(cfg) -> TrainStep:
    runtime = Runtime.from_config(cfg.trainer)
    data = build_data(cfg.data, runtime.device, BATCH, int(cfg.seed), runtime.memory_format)
    torch.manual_seed(int(cfg.seed))
    model = build_model(cfg.model, data.channels, data.num_classes).to(memory_format=runtime.memory_format)
    return TrainStep(model, cfg.optim, data.train, runtime, notify=lambda _: None)


def reference_batches(cfg, steps: int):
    """The paper's augmentation written out plainly: shuffle every epoch (dropping the last
    partial batch), pad 4 with zeros after mean subtraction, random 32x32 crop, random flip."""
    raw = load_source(cfg.data)
    images, labels = raw.train_images, raw.train_labels
    mean = images.sum(0, dtype=torch.float64).div(255 * len(images)).float()
    generator = torch.Generator().manual_seed(int(cfg.seed))
    order, position = torch.randperm(len(images), generator=generator), 0
    for _ in range(steps):
        if position + BATCH > len(images):
            order, position = torch.randperm(len(images), generator=generator), 0
        index = order[position:position + BATCH]
        position += BATCH
        offsets = torch.randint(0, 9, (2, BATCH), generator=generator)
        flips = torch.rand(BATCH, generator=generator) < 0.5
        padded = F.pad(images[index].float() / 255 - mean, (4, 4, 4, 4))
        crops = []
        for j in range(BATCH):
            y, x = int(offsets[0, j]), int(offsets[1, j])
            crop = padded[j, :, y:y + 32, x:x + 32]
            crops.append(crop.flip(-1) if flips[j] else crop)
        yield torch.stack(crops).contiguous(memory_format=torch.channels_last), labels[index]


def test_the_step_is_the_maths_of_a_plain_eager_loop_bit_for_bit():
    """8 steps cross an epoch (100 images, batch 32: 3 batches an epoch) and both lr milestones."""
    cfg = compose(CFG)
    step = build_step(cfg)
    for i in range(8):
        step.set_lr(learning_rate(cfg.optim, i, 8))
        step()

    # The same SGD in its fused form (one kernel; it rounds differently from the foreach form
    # in the last bit, checked below): the form that reads a device lr without a host read.
    fused = reference_loop(cfg, fused=True)
    for name, value in fused.model.state_dict().items():  # weights and BN running statistics
        assert torch.equal(step.model.state_dict()[name], value), name
    error, mean_loss = step.read_metrics()
    assert error == 100.0 * fused.wrong / (8 * BATCH)
    assert mean_loss == pytest.approx(fused.loss_sum / (8 * BATCH), rel=1e-6)
    assert step.batcher.epoch == 2 and step.count == 0  # two reshuffles; read_metrics reset the sums
    foreach = reference_loop(cfg, fused=False)
    for name, value in foreach.model.named_parameters():
        assert torch.allclose(step.model.get_parameter(name), value, rtol=1e-5, atol=1e-6), name


class reference_loop:
    """nanoGPT-style: model, SGD, and for each batch forward, loss, backward, update."""

    def __init__(self, cfg, fused: bool) -> None:
        torch.manual_seed(int(cfg.seed))
        self.model = build_model(cfg.model, 3, 10).to(memory_format=torch.channels_last).train()
        optimizer = torch.optim.SGD(self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4,
                                    fused=fused or None)
        self.wrong, self.loss_sum = 0, 0.0
        for i, (images, labels) in enumerate(reference_batches(cfg, 8)):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(cfg.optim, i, 8)
            logits = self.model(images)
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            self.wrong += int((logits.argmax(1) != labels).sum())
            self.loss_sum += loss.item() * BATCH


# Ops that read a tensor's value on the host (a sync on CUDA, frozen by a capture) or whose
# output size depends on values (impossible to capture).
HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "equal", "nonzero", "masked_select", "unique",
              "_unique2", "unique_consecutive", "repeat_interleave"}


VALUES = (int, float, bool, str, type(None), torch.dtype, torch.device, torch.memory_format, torch.layout)


class OpRecorder(TorchDispatchMode):
    """Every ATen op a step runs, with its non-tensor arguments (what a CUDA graph freezes)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, tuple]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in HOST_READS:
            raise AssertionError(f"the step reads a tensor on the host: aten.{name}")
        leaves, _ = tree_flatten((args, kwargs or {}))
        # values as such; objects (a generator, whose offset lives on the device in a capture;
        # the profiler's record handles) by their type
        frozen = tuple(repr(leaf) if isinstance(leaf, VALUES) else type(leaf).__name__
                       for leaf in leaves if not isinstance(leaf, torch.Tensor))
        self.ops.append((name, frozen))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("model", ["resnet20", "vit_pre"])
def test_the_step_reads_nothing_back_and_runs_the_same_ops_every_step(model):
    """What a CUDA graph needs: no host read, and nothing that changes between steps (the lr, the
    batch position, the random draws) baked in as a constant. Steps 4 and 5 run at different
    learning rates and cursor positions, yet must issue the identical op stream."""
    sizes = ["model.depth=2", "model.dim=16", "model.heads=2", "model.patch_size=8"] if model == "vit_pre" else \
        ["model.width=0.25", "model.depth=8"]
    common = [o for o in CFG if not o.startswith("model")]
    cfg = compose([*common, f"model={model}", *sizes, "data.train_size=200"])
    step = build_step(cfg)
    streams = []
    for i in range(6):
        step.set_lr(0.1 if i < 5 else 0.01)
        step.batcher.advance()  # the host half, outside what a graph captures
        with OpRecorder() as recorder:
            step.compute()
        step.count += BATCH
        streams.append(recorder.ops)
    assert len(streams[4]) > 100 and streams[4] == streams[5]
    # and the learning rate really is read from the device: set to 0, a step leaves weights alone
    before = {k: v.clone() for k, v in step.model.named_parameters()}
    step.set_lr(0.0)
    step()
    assert all(torch.equal(before[k], v) for k, v in step.model.named_parameters())


def test_a_resumed_step_still_follows_the_lr_schedule(tmp_path):
    """Loading an optimizer state replaces its lr with the saved copy; the step must point it
    back at the device tensor the schedule writes (or a captured graph would read a stale lr)."""
    cfg = compose(CFG)
    step = build_step(cfg)
    step.set_lr(0.1)
    step()
    saved = TrainState(step, iteration=1).state_dict()
    # a checkpoint from an older run whose SGD ran in its foreach form (it rounds differently)
    for group in saved["optimizer"]["param_groups"]:
        group.update(fused=None, foreach=True)
    resumed = build_step(cfg)
    state = TrainState(resumed)
    state.load_state_dict(saved, tmp_path / "last.pt")
    assert state.iteration == 1 and all(g["lr"] is resumed.lr for g in resumed.optimizer.param_groups)
    assert all(g["fused"] is True and not g["foreach"] for g in resumed.optimizer.param_groups)
    before = {k: v.clone() for k, v in resumed.model.named_parameters()}
    resumed.set_lr(0.0)
    resumed()
    assert all(torch.equal(before[k], v) for k, v in resumed.model.named_parameters())


def test_graph_capture_is_chosen_where_it_can_work_and_refused_where_it_cannot():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_graph("auto", cuda, "bf16") == (True, "whole step captured as one CUDA graph")
    assert resolve_graph("always", cuda, "fp32")[0] is True
    assert resolve_graph("auto", cpu, "fp32") == (False, "eager step: CUDA graphs need a CUDA device")
    assert resolve_graph("auto", cuda, "fp16")[0] is False
    assert resolve_graph("never", cuda, "bf16") == (False, "eager step: trainer.graph=never")
    with pytest.raises(ConfigError, match="trainer.graph=always: CUDA graphs need a CUDA device"):
        resolve_graph("always", cpu, "fp32")
    with pytest.raises(ConfigError, match="trainer.graph must be one of auto, always, never; got 'sometimes'"):
        compose([*CFG, "trainer.graph=sometimes"])
    runtime = Runtime.from_config(compose(CFG).trainer)
    assert (runtime.graph, runtime.execution, runtime.layout) == (False, "eager", "channels_last")


def test_recomputing_activations_keeps_the_maths_and_saves_memory():
    """trainer.recompute_blocks: the same weights and BN statistics (and batch counts) bit for
    bit, far fewer bytes kept for the backward; models without blocks to segment refuse it."""
    from resexp.bench.memory import saved_activation_bytes

    deep = [*CFG, "model.depth=32"]
    plain, segmented = build_step(compose(deep)), build_step(compose([*deep, "trainer.recompute_blocks=2"]))
    assert segmented.execution == "recompute every 2 blocks"
    for step in (plain, segmented):
        for i in range(3):
            step.set_lr(0.1)
            step()
    for name, value in plain.model.state_dict().items():
        assert torch.equal(segmented.model.state_dict()[name], value), name
    images, _ = plain.batcher.next()
    kept = saved_activation_bytes(plain.model, images, torch.autocast("cpu", enabled=False))
    # what autograd keeps outside the checkpointed segments: the stem and head, and the inputs of
    # the 8 segments (5 blocks a stage), each (32, 4, 32, 32) to (32, 16, 8, 8) floats
    kept_segmented = saved_activation_bytes(segmented.model, images, torch.autocast("cpu", enabled=False))
    assert kept_segmented < kept / 4
    # while the backward recomputes a segment (2 blocks) it keeps that segment's activations:
    # the first stage's, whose maps are largest; far less than all 15 blocks' at once
    from resexp.bench.memory import recomputed_segment_bytes
    first_two = saved_activation_bytes(plain.model.stages[0][:2], plain.model.stem(images).requires_grad_(),
                                       torch.autocast("cpu", enabled=False))
    assert recomputed_segment_bytes(segmented.model, images, torch.autocast("cpu", enabled=False)) == first_two
    assert 0 < first_two < kept / 4
    with pytest.raises(ConfigError, match="applies to the cifar_resnet models"):
        build_step(compose([*[o for o in CFG if not o.startswith("model")], "model=vit_pre", "model.depth=2",
                            "model.dim=16", "model.heads=2", "model.patch_size=8", "trainer.recompute_blocks=2"]))


def test_a_cuda_device_without_an_index_gets_the_current_one(monkeypatch):
    """torch.cuda.set_device, streams and graphs refuse a bare "cuda" (seen on the first GPU run)."""
    from resexp.engine.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("auto") == resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(ConfigError, match=r"trainer.device=cuda:2: only 2 CUDA device\(s\) visible"):
        resolve_device("cuda:2")
