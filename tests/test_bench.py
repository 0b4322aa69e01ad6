"""`resexp bench` on CPU: both pipelines timed, the report's arithmetic and files."""

import json

import pytest
import torch
from typer.testing import CliRunner

from resexp.cli import app
from resexp.config import compose
from resexp.engine.bench import PAPER_ITERS, bench, markdown, ratio_line, report_stem, write_report
from resexp.engine.runtime import Runtime, resolve_precision

TINY = ["model=resnet20", "model.width=0.25", "trainer.batch_size=16", "trainer.device=cpu",
        "data.root=/nonexistent-cifar"]


@pytest.fixture(scope="module")
def report():
    return bench(compose(TINY), iters=2, warmup=1, repeats=3, reference=True, precisions=["auto", "fp32", "bf16"])


def test_bench_times_resexp_and_the_reference_on_the_same_model(report):
    auto, _ = resolve_precision("auto", torch.device("cpu"))
    # auto, then whichever of fp32 / bf16 auto did not pick (auto's is not timed twice), then the reference
    assert [(row["pipeline"].split()[0], row["precision"]) for row in report["rows"]] == [
        ("resexp", auto), ("resexp", "bf16" if auto == "fp32" else "fp32"), ("reference", "fp32")]
    assert [row.get("training_default") for row in report["rows"]] == [True, False, None]
    assert report["rows"][0]["layout"] == "channels_last"
    assert report["rows"][-1]["precision"] == "fp32" and report["rows"][-1]["layout"] == "NCHW"
    assert "CIFAR-10 not found" in report["data"]  # said, not silently substituted
    for row in report["rows"]:
        assert len(row["ms_per_step_rounds"]) == 3
        assert row["ms_per_step"] == pytest.approx(sorted(row["ms_per_step_rounds"])[1], abs=0.01)  # median
        assert row["images_per_s"] == pytest.approx(16 * 1000 / row["ms_per_step"], rel=0.01)
        assert row["projected_64k_min"] == pytest.approx(PAPER_ITERS * row["ms_per_step"] / 60_000, rel=0.01)
    base = report["rows"][-1]["images_per_s"]
    assert report["rows"][-1]["speedup_vs_reference"] == 1.0
    assert report["rows"][0]["speedup_vs_reference"] == pytest.approx(report["rows"][0]["images_per_s"] / base,
                                                                      abs=0.01)


def test_bench_report_files(report, tmp_path):
    json_path, md_path = write_report(report_stem(tmp_path, compose(TINY)), report, markdown(report))
    assert json_path.name == "resnet20_cpu_b16.json"
    assert json.loads(json_path.read_text()) == report
    table = md_path.read_text()
    assert table.count("| resexp") == 2 and table.count("| reference") == 1 and table.count("(training default)") == 1
    assert report["device"] in table and report["torch"] in table
    # the headline: the training default against the reference, in the JSON and on its own line
    default = next(row for row in report["rows"] if row.get("training_default"))
    assert report["speedup_vs_reference"] == default["speedup_vs_reference"]
    assert ratio_line(report) == (f"resexp ({default['precision']}, eager) vs the reference recipe: "
                                  f"{report['speedup_vs_reference']:.2f}×")
    assert f"- **{ratio_line(report)}**" in table


def test_bench_cli_rejects_an_unknown_model():
    result = CliRunner().invoke(app, ["bench", "model=resnet21"])
    assert result.exit_code == 2
    assert "resnet20" in result.output and "Traceback" not in result.output


# --- resexp bench --runs K: a sweep's K runs one after another, as processes, in lock-step ---

from contextlib import nullcontext  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from resexp.data import device_data  # noqa: E402
from resexp.engine import throughput  # noqa: E402
from resexp.engine.bench import bench_data  # noqa: E402
from resexp.engine.lockstep import LockstepStep  # noqa: E402
from resexp.engine.throughput import sweep_throughput  # noqa: E402
from resexp.models import build_model  # noqa: E402

TINY_SMALL_DATA = [*TINY, "seed=3", "trainer.precision=fp32"]


def _small_raw(cfg):
    raw, _ = bench_data(cfg)
    raw.train_images, raw.train_labels = raw.train_images[:256], raw.train_labels[:256]
    return raw


def test_lockstep_trains_each_model_exactly_as_alone():
    """Two models stepped together end where each would alone: same seed, same batches, same
    update. A loss averaged over both batches instead would halve every gradient and fail here."""
    cfg = compose(TINY_SMALL_DATA)
    raw, cpu, batch = _small_raw(cfg), torch.device("cpu"), 16
    group = LockstepStep(cfg, raw, Runtime.from_config(cfg.trainer), runs=2)
    for lr in (0.1, 0.1, 0.05):
        group.set_lr(lr)
        group()
    for k in range(2):
        data = device_data(raw, 0, True, cpu, batch, 3 + k, torch.channels_last)
        torch.manual_seed(3 + k)
        model = build_model(cfg.model, 3, 10).to(memory_format=torch.channels_last)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
        for lr in (0.1, 0.1, 0.05):
            for g in optimizer.param_groups:
                g["lr"] = lr
            images, labels = data.train.next()
            loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        for name, value in model.named_parameters():
            assert torch.allclose(group.params[name][k], value, atol=2e-5, rtol=1e-4), name
        for name, value in model.named_buffers():  # BN running statistics, per model
            assert torch.allclose(group.buffers[name][k].to(value.dtype), value, atol=2e-5, rtol=1e-4), name
    assert not torch.allclose(group.params["fc.weight"][0], group.params["fc.weight"][1])  # two different runs


def test_lockstep_refuses_what_it_cannot_keep_per_run():
    from resexp.errors import ConfigError

    cfg = compose([*TINY, "optim=adamw"])
    with pytest.raises(ConfigError, match="optim=sgd"):
        LockstepStep(cfg, _small_raw(cfg), Runtime.from_config(cfg.trainer), runs=2)


def test_sweep_throughput_report(tmp_path):
    report = sweep_throughput(compose(TINY), runs=2, iters=2, warmup=1, repeats=3)
    ways = [row["way"] for row in report["rows"]]
    assert ways[0] == "one after another" and ways[1].startswith("2 processes") and "lock-step" in ways[2]
    assert [row["runs_at_once"] for row in report["rows"]] == [1, 2, 2]
    for row in report["rows"]:
        assert len(row["ms_per_step_rounds"]) == 3
        assert row["ms_per_step"] == pytest.approx(sorted(row["ms_per_step_rounds"])[1], abs=0.01)
        # one step of every run at once: runs_at_once batches per ms_per_step
        assert row["images_per_s"] == pytest.approx(16 * row["runs_at_once"] * 1000 / row["ms_per_step"], rel=0.01)
        assert row["projected_64k_all_runs_min"] == pytest.approx(
            PAPER_ITERS * row["ms_per_step"] * 2 / row["runs_at_once"] / 60_000, rel=0.01)
        assert row["speedup_vs_one_after_another"] == pytest.approx(
            row["images_per_s"] / report["rows"][0]["images_per_s"], abs=0.01)
    assert report["fastest"] == max(report["rows"], key=lambda r: r["images_per_s"])["way"]
    json_path, md_path = write_report(report_stem(tmp_path, compose(TINY), runs=2), report,
                                      throughput.markdown(report))
    assert json_path.name == "resnet20_cpu_b16_runs2.json" and json.loads(json_path.read_text()) == report
    assert md_path.read_text().count("\n| ") == 4 and f"fastest: **{report['fastest']}**" in md_path.read_text()


def test_bench_runs_cli_rejects_lockstep_settings_before_starting_processes():
    result = CliRunner().invoke(app, ["bench", *TINY, "optim=adamw", "--runs", "2"])
    assert result.exit_code == 2
    assert "optim=sgd" in result.output and "Traceback" not in result.output


def test_saved_activation_bytes_counts_what_backward_keeps_once():
    from resexp.engine.bench import saved_activation_bytes

    # Linear keeps its input (8x10 floats); ReLU keeps its output (8x20), which the second Linear
    # keeps too: the same storage, counted once. The weights are parameters: not counted.
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5))
    x = torch.randn(8, 10, requires_grad=True)
    assert saved_activation_bytes(model, x, nullcontext()) == (8 * 10 + 8 * 20) * 4
    with torch.no_grad():
        assert saved_activation_bytes(model, x, nullcontext()) == 0


def test_step_memory_estimate_parts(report):
    from resexp.models import count_params

    params = count_params(build_model(compose(TINY).model))
    for row in report["rows"][:-1]:  # the resexp rows
        estimate = row["step_memory_estimate_gib"]
        # SGD with momentum: weight, gradient, momentum buffer, all fp32
        assert estimate["weights_grads_optimizer"] == pytest.approx(3 * 4 * params / 2**30, abs=1e-3)
        # uint8 50k train + its 4-pixel padded copy + 10k test images, int64 labels
        data = (50_000 * 3 * 32 * 32 + 50_000 * 3 * 40 * 40 + 10_000 * 3 * 32 * 32 + 60_000 * 8) / 2**30
        assert estimate["data"] == pytest.approx(data, abs=1e-3)
        assert estimate["activations"] > 0
        assert estimate["total"] == pytest.approx(sum(v for k, v in estimate.items() if k != "total"), abs=2e-3)
    fp32, bf16 = sorted(report["rows"][:-1], key=lambda r: r["precision"] != "fp32")
    # bf16 autocast keeps 2-byte conv outputs where fp32 keeps 4-byte ones
    assert bf16["step_memory_estimate_gib"]["activations"] < fp32["step_memory_estimate_gib"]["activations"]
    assert "reference" in report["rows"][-1]["pipeline"] and "step_memory_estimate_gib" not in report["rows"][-1]


def test_bench_cli_batch_override_wins_and_an_older_report_is_not_replaced(tmp_path):
    """trainer.batch_size=8 is benched at 8 (the --batch option no longer overrides it unasked),
    the ratio has a line of its own, and a second bench to the same file needs --force."""
    args = ["bench", *TINY, "model.depth=8", "trainer.batch_size=8", "--iters", "1", "--repeats", "1",
            "--warmup", "0", "--precisions", "auto", "--no-reference", "-o", str(tmp_path)]
    first = CliRunner().invoke(app, args)
    assert first.exit_code == 0, first.output
    report = json.loads((tmp_path / "resnet20_cpu_b8.json").read_text())
    assert report["batch_size"] == 8 and report["rows"][0]["pipeline"] == "resexp (the trainer's step)"
    before = (tmp_path / "resnet20_cpu_b8.json").read_bytes()
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 2 and "--force" in again.output and "Traceback" not in again.output
    assert (tmp_path / "resnet20_cpu_b8.json").read_bytes() == before
    forced = CliRunner().invoke(app, [*args[:-2], "--reference", "-o", str(tmp_path), "--force"])
    assert forced.exit_code == 0, forced.output
    assert "\nresexp (fp32, eager) vs the reference recipe: " in forced.output
    assert json.loads((tmp_path / "resnet20_cpu_b8.json").read_text())["rows"][-1]["pipeline"].startswith("reference")


def test_report_names_say_what_was_benched(tmp_path):
    names = [report_stem(tmp_path, compose([*TINY, *extra]), runs).name for extra, runs in (
        ([], 1), (["trainer.compile=true"], 1), (["trainer.graph=never", "trainer.recompute_blocks=10"], 1), ([], 3))]
    assert names == ["resnet20_cpu_b16", "resnet20_cpu_b16_compiled", "resnet20_cpu_b16_graph-never_recompute10",
                     "resnet20_cpu_b16_runs3"]


def test_counting_saved_activations_leaves_no_autograd_graph_behind():
    """A node that saves its own output (sigmoid) held through the hooks would keep its graph
    alive for good, and with it AccumulateGrad nodes that broke the CUDA-graph capture of the
    next step on an H100."""
    import weakref

    from resexp.engine.bench import saved_activation_bytes

    class SavesItsOutput(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(4, 4)

        def forward(self, x):
            y = torch.sigmoid(self.linear(x))
            self.output = weakref.ref(y)
            return y

    model = SavesItsOutput()
    assert saved_activation_bytes(model, torch.randn(2, 4), nullcontext()) == 2 * 4 * 4 * 2  # x and y, fp32
    assert model.output() is None
