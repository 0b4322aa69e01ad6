"""`resexp bench` on CPU: the pipelines timed, the report's arithmetic (on fixed rounds, so that
a loaded machine cannot move it) and files; `--runs K`; `--sweep` on a real sweep's processes."""

import json

import pytest
import torch
from typer.testing import CliRunner

from resexp.bench.report import report_stem, write_report
from resexp.bench.single import bench_single, markdown, ratio_line, tabulate
from resexp.bench.timing import Pipeline, round_stats
from resexp.cli import app
from resexp.config import compose
from resexp.engine.runtime import Runtime, resolve_precision

TINY = ["model=resnet20", "model.width=0.25", "trainer.batch_size=16", "trainer.device=cpu",
        "data.root=/nonexistent-cifar"]


@pytest.fixture(scope="module")
def report():
    return bench_single(compose(TINY), iters=2, warmup=1, repeats=3, reference=True,
                        precisions=["auto", "fp32", "bf16"])


def test_bench_times_resexp_and_the_reference_on_the_same_model(report):
    auto, _ = resolve_precision("auto", torch.device("cpu"))
    # auto, then whichever of fp32 / bf16 auto did not pick (auto's is not timed twice), then the reference
    assert [(row["pipeline"].split()[0], row["precision"]) for row in report["rows"]] == [
        ("resexp", auto), ("resexp", "bf16" if auto == "fp32" else "fp32"), ("reference", "fp32")]
    assert [row.get("training_default") for row in report["rows"]] == [True, False, None]
    assert report["rows"][0]["layout"] == "channels_last"
    assert report["rows"][-1]["precision"] == "fp32" and report["rows"][-1]["layout"] == "NCHW"
    assert "CIFAR-10 not found" in report["data"]  # said, not silently substituted
    for row in report["rows"]:  # the arithmetic on these numbers: test_bench_rows_from_fixed_rounds
        assert len(row["ms_per_step_rounds"]) == 3
        assert row["ms_per_step"] == pytest.approx(sorted(row["ms_per_step_rounds"])[1], abs=0.01)  # median
    assert report["rows"][-1]["speedup_vs_reference"] == 1.0


def test_bench_rows_from_fixed_rounds():
    """ms/step is the median round; images/s and the 64k projection follow from it; the ratio to
    the reference comes from the unrounded medians (a slow machine's 2.03 images/s shows as 2.0,
    and 31.4 / 2.0 would say 15.70×, not 15.49×)."""
    resexp = Pipeline("resexp (the trainer's step)", "fp32", "channels_last", "eager", lambda: None,
                      rounds_s=[0.98, 1.06, 1.02], memory_estimate={"activations": 0.5, "total": 0.5})
    reference = Pipeline("reference (DataLoader, 2 workers, PIL transforms)", "fp32", "NCHW", "eager", lambda: None,
                         rounds_s=[15.8, 15.76, 16.2])
    rows = tabulate([resexp, reference], batch=16, iters=2, device=torch.device("cpu"), default_precision="fp32",
                    reference=True)
    assert rows[0] == {
        "pipeline": "resexp (the trainer's step)", "precision": "fp32", "layout": "channels_last", "execution": "eager",
        "device_type": "cpu", "ms_per_step": 510.0, "ms_per_step_rounds": [490.0, 530.0, 510.0],
        "images_per_s": 31.4, "peak_memory_gib": None, "projected_64k_min": 544.0, "peak_reserved_gib": None,
        "training_default": True, "step_memory_estimate_gib": {"activations": 0.5, "total": 0.5},
        "speedup_vs_reference": 15.49}
    assert (rows[1]["ms_per_step"], rows[1]["images_per_s"], rows[1]["projected_64k_min"]) == (7900.0, 2.0, 8426.67)
    assert rows[1]["speedup_vs_reference"] == 1.0 and "training_default" not in rows[1]
    assert "speedup_vs_reference" not in tabulate([resexp], 16, 2, torch.device("cpu"), "fp32", reference=False)[0]
    cuda = round_stats([0.5, 0.5], iters=1, images_per_step=8, peak_bytes=3 * 2**29, device=torch.device("cuda"))
    assert cuda == {"ms_per_step": 500.0, "ms_per_step_rounds": [500.0, 500.0], "images_per_s": 16.0,
                    "peak_memory_gib": 1.5}


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


@pytest.mark.parametrize("data", [["data=synthetic", "data.train_size=256", "data.test_size=64"],
                                  ["data=cifar100", "data.root=/nonexistent"],
                                  ["data=fashion_mnist", "data.root=/nonexistent"]])
def test_bench_runs_on_every_data_choice(data, tmp_path):
    """data=synthetic failed on data.root (a key it has not); a torchvision dataset not on disk is
    random images of its own shape and classes, said; Fashion-MNIST's one channel goes through the
    reference's PIL transforms too."""
    args = ["bench", *TINY[:-1], *data, "model.depth=8", "--iters", "1", "--repeats", "1", "--warmup", "1",
            "--precisions", "auto", "-o", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "resnet20_cpu_b16.json").read_text())
    expected = {"data=synthetic": "synthetic (256 generated train images)",
                "data=cifar100": "random uint8 images of CIFAR-100's shape (50,000 × 3×32×32; CIFAR-100 not found",
                "data=fashion_mnist": "random uint8 images of Fashion-MNIST's shape (60,000 × 1×32×32; "
                                      "Fashion-MNIST not found"}[data[0]]
    assert report["data"].startswith(expected)
    assert [row["pipeline"].split()[0] for row in report["rows"]] == ["resexp", "reference"]


# --- resexp bench --runs K: a sweep's K runs one after another, as processes, in lock-step ---

from contextlib import nullcontext  # noqa: E402

import torch.nn.functional as F  # noqa: E402

from resexp.bench import runs as runs_bench  # noqa: E402
from resexp.bench.lockstep import LockstepStep  # noqa: E402
from resexp.bench.runs import Way, bench_runs  # noqa: E402
from resexp.data import build_data, local_source  # noqa: E402
from resexp.models import build_model  # noqa: E402

TINY_SMALL_DATA = [*TINY, "seed=3", "trainer.precision=fp32"]


def _small_raw(cfg):
    raw, _ = local_source(cfg.data)
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
        data = build_data(cfg.data, cpu, batch, 3 + k, torch.channels_last, raw)
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


def test_bench_runs_report(tmp_path):
    report = bench_runs(compose(TINY), runs=2, iters=2, warmup=1, repeats=3)
    ways = [row["way"] for row in report["rows"]]
    assert ways[0] == "one after another" and ways[1].startswith("2 processes") and "lock-step" in ways[2]
    assert ways[3] == "2 models fused into one, one process"
    assert [row["runs_at_once"] for row in report["rows"]] == [1, 2, 2, 2]
    for row in report["rows"]:  # the arithmetic on these numbers: test_bench_runs_rows_from_fixed_rounds
        assert len(row["ms_per_step_rounds"]) == 3
        assert row["ms_per_step"] == pytest.approx(sorted(row["ms_per_step_rounds"])[1], abs=0.01)
    assert report["rows"][0]["speedup_vs_one_after_another"] == 1.0
    fastest = next(row for row in report["rows"] if row["way"] == report["fastest"])
    assert fastest["images_per_s"] == max(row["images_per_s"] for row in report["rows"])
    json_path, md_path = write_report(report_stem(tmp_path, compose(TINY), runs=2), report,
                                      runs_bench.markdown(report))
    assert json_path.name == "resnet20_cpu_b16_runs2.json" and json.loads(json_path.read_text()) == report
    assert md_path.read_text().count("\n| ") == 5 and f"fastest: **{report['fastest']}**" in md_path.read_text()


def test_bench_runs_rows_from_fixed_rounds():
    """A round is one step of every run at once: images/s counts runs_at_once batches; the K runs'
    64k iterations take K / runs_at_once times a run's; ratios and the fastest way come from the
    unrounded medians."""
    ways = [Way("one after another", 1, [1.0, 1.2, 1.1], 0, "eager"),
            Way("2 processes", 2, [1.5, 1.4, 1.6], 0, "eager"),
            Way("2 models in lock-step, one process", 2, [2.5, 2.4, 2.6], 0, "eager")]
    rows, fastest = runs_bench.tabulate(ways, runs=2, iters=2, batch=16, device=torch.device("cpu"))
    assert [(r["ms_per_step"], r["images_per_s"], r["speedup_vs_one_after_another"], r["projected_64k_all_runs_min"])
            for r in rows] == [(550.0, 29.1, 1.0, 1173.33), (750.0, 42.7, 1.47, 800.0), (1250.0, 25.6, 0.88, 1333.33)]
    assert [r["runs_at_once"] for r in rows] == [1, 2, 2] and fastest == "2 processes"


def test_bench_runs_cli_rejects_lockstep_settings_before_starting_processes():
    result = CliRunner().invoke(app, ["bench", *TINY, "optim=adamw", "--runs", "2"])
    assert result.exit_code == 2
    assert "optim=sgd" in result.output and "Traceback" not in result.output


def test_saved_activation_bytes_counts_what_backward_keeps_once():
    from resexp.bench.memory import saved_activation_bytes

    # Linear keeps its input (8x10 floats); ReLU keeps its output (8x20), which the second Linear
    # keeps too: the same storage, counted once. The weights are parameters: not counted.
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 5))
    x = torch.randn(8, 10, requires_grad=True)
    assert saved_activation_bytes(model, x, nullcontext()) == (8 * 10 + 8 * 20) * 4
    with torch.no_grad():
        assert saved_activation_bytes(model, x, nullcontext()) == 0


def test_step_memory_estimate_parts(report):
    from model_oracle import count_params

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

    from resexp.bench.memory import saved_activation_bytes

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


# --- resexp bench --sweep: the real sweep's processes for a window, its wall time projected ---

from datetime import datetime, timezone  # noqa: E402

from omegaconf import OmegaConf  # noqa: E402

from resexp.bench import sweep as sweep_bench  # noqa: E402
from resexp.bench.sweep import RunSpeed, Target, Window, list_schedule, project, read_runs  # noqa: E402
from resexp.errors import ResexpError  # noqa: E402
from resexp.sweep.plan import Job, Packing, Sweep  # noqa: E402


def test_list_schedule_starts_each_job_on_the_first_slot_to_come_free():
    assert list_schedule([3, 1, 2, 2], slots=2) == 5  # slot A: 3; B: 1, then 2 (ends 3), then 2 (ends 5)
    assert list_schedule([5, 1, 1, 1, 1], slots=2) == 5  # B takes the four short ones while A runs
    assert list_schedule([1, 1, 1, 10], slots=3) == 11  # the long job last: it starts only when a slot frees
    assert list_schedule([10, 1, 1, 1], slots=3) == 10  # longest first: no tail
    assert list_schedule([2, 3, 4], slots=1) == 9
    assert list_schedule([], slots=4) == 0


def test_projection_of_the_work_left():
    """Measured runs go on at their own it/s; one not measured at the measured runs' mean
    layer-iterations/s ((10 × 20 + 12 × 20) / 2 = 220) over its depth; one not started pays the
    start-up; a finished run has nothing left."""
    runs = [RunSpeed("a", "resnet20", 20, 1000, "stopped", 200, 10.0, 5.0),  # 800 left at 10 it/s: 80 s
            RunSpeed("b", "plain20", 20, 1000, "finished", 1000, 12.0, 5.0),  # 0 s
            RunSpeed("c", "resnet44", 44, 1000, "stopped", 100, None, 6.0),  # 900 at 220 / 44 = 5 it/s: 180 s
            RunSpeed("d", "resnet110", 110, 1000)]  # not started: 1000 at 220 / 110 = 2 it/s + 5 s
    seconds = project(runs, startup_s=5.0)
    assert seconds == pytest.approx([80, 0, 180, 505])
    assert list_schedule(seconds, slots=2) == pytest.approx(585)  # d waits for a's slot (free at 80)
    assert list_schedule(seconds, slots=3) == pytest.approx(505)  # d takes b's slot at once
    with pytest.raises(ResexpError, match="more --seconds"):
        project([RunSpeed("c", "resnet44", 44, 1000, "stopped", 100, None, 6.0)], startup_s=5.0)


def _summary(run_dir, launched, started_after, **fields):
    started = datetime.fromtimestamp(launched + started_after, timezone.utc).isoformat(timespec="seconds")
    run_dir.mkdir(parents=True)
    (run_dir / "summary.json").write_text(json.dumps(
        {"segments": [{"started": started, "device": "NVIDIA H200", "start": 0,
                       "end": fields.get("iterations", 0)}], **fields}))


def test_sweep_bench_report_from_fixed_summaries(tmp_path):
    """What the window left in each run's summary.json, in launch order, down to the report's
    numbers, JSON and table: a run that began after SIGTERM (a launcher going on) counts as not
    started; a failed run refuses the bench in one line."""
    launched = datetime(2026, 12, 4, 18, 30, tzinfo=timezone.utc).timestamp()
    specs = [("resnet110", 110), ("plain56", 56), ("resnet20", 20), ("plain20", 20)]
    jobs = [Job([f"model={name}"], OmegaConf.create({"model": {"name": name, "depth": depth},
                                                     "trainer": {"max_iters": 1000, "device": "cpu",
                                                                 "compile": False},
                                                     "run": {"sweep": "figure6"}}),
                tmp_path / "sweeps" / "figure6" / f"model={name}", False, None) for name, depth in specs]
    _summary(jobs[0].run_dir, launched, 12, status="stopped", iterations=100, max_iters=1000, iters_per_s=2.0,
             peak_gpu_memory_gib=1.25)
    _summary(jobs[1].run_dir, launched, 14, status="stopped", iterations=250, max_iters=1000, iters_per_s=5.0)
    _summary(jobs[2].run_dir, launched, 12, status="finished", iterations=1000, max_iters=1000, iters_per_s=16.0,
             train_error=10.0, test_error=12.0, best_test_error=11.5)
    _summary(jobs[3].run_dir, launched, 125, status="running", iterations=300, max_iters=1000, iters_per_s=20.0)
    plan = Sweep(jobs, "joblib", {"n_jobs": 2}, [], Packing(), 1)
    target = Target(["sweep=figure6", "data=synthetic"], tmp_path, plan)
    window = Window(launched, 120.0, "SIGTERM, exit 143 3 s later")
    runs, device = read_runs(plan, window)
    assert device == "NVIDIA H200"
    assert [(r.status, r.iterations, r.iters_per_s, r.started_s) for r in runs] == [
        ("stopped", 100, 2.0, 12.0), ("stopped", 250, 5.0, 14.0), ("finished", 1000, 16.0, 12.0),
        ("started after the window", 0, None, None)]
    # layer-iterations/s: 220, 280, 320 (mean 273.3); plain20 at 273.3 / 20 it/s, after the 12 s start-up
    left = project(runs, startup_s=12.0)
    assert left == pytest.approx([450, 150, 0, 1000 / (820 / 3 / 20) + 12])
    report = sweep_bench.sweep_report(target, runs, left, list_schedule(left, 2), window, 12.0, device, False)
    assert report["command"] == "resexp sweep sweep=figure6 data=synthetic"
    assert (report["runs"], report["runs_at_once"], report["startup_s"], report["runs_at_close"]) == (4, 2, 12.0, 2)
    assert report["layer_iters_per_s_at_close"] == 500 and report["layer_iters_per_s_per_run"] == 273
    assert report["peak_gpu_memory_gib_at_close"] is None  # plain56's summary has none
    assert report["layer_iterations"] == 1000 * 206 and report["layer_iterations_done"] == 11000 + 14000 + 20000
    # slots: resnet110 450 s | plain56 150 s, resnet20 0 s, then plain20 85.2 s: ends at 235.2
    assert report["projected_rest_s"] == pytest.approx(450) and report["projected_total_s"] == pytest.approx(570)
    assert [r["left_s"] for r in report["per_run"]] == [450.0, 150.0, 0.0, 85.2]
    assert sweep_bench.headline(report) == ("projected wall time of the whole sweep: 9.5 min (2.0 min measured, "
                                            "then 7.5 min for the rest, 2 at once)")
    stem = sweep_bench.sweep_stem(tmp_path / "out", plan)
    assert stem.name == "sweep_figure6_cpu_4runs"
    compiled = Sweep([Job(jobs[0].overrides, OmegaConf.merge(jobs[0].cfg, {"trainer": {"compile": True}}),
                          jobs[0].run_dir, False, None)], "joblib", {}, [], Packing(), 1)
    assert sweep_bench.sweep_stem(tmp_path, compiled).name == "sweep_figure6_cpu_1runs_compiled"
    json_path, md_path = write_report(stem, report, sweep_bench.markdown(report))
    assert json.loads(json_path.read_text()) == report
    table = md_path.read_text()
    assert f"**{sweep_bench.headline(report)}**" in table and "500 layer-iterations/s" in table
    assert ("| model=resnet110 | resnet110 | 110 | stopped | 100 / 1,000 | 2.0 | 220 | 12 s | 1.25 GiB | 7.5 min |"
            in table)
    assert "| model=plain20 | plain20 | 20 | started after the window | 0 / 1,000 | - | - | - | - | 1.4 min |" in table
    assert "runs per GPU" not in table  # one run per GPU
    shared = {**report, "mps_runs_per_gpu": 6}
    assert ", 6 runs per GPU under CUDA MPS" in sweep_bench.markdown({**shared, "under_mps": True})
    assert ", 6 runs per GPU by time slicing (no CUDA MPS daemon ran)" in sweep_bench.markdown(shared)
    (jobs[1].run_dir / "summary.json").write_text(json.dumps({"status": "failed", "error": "DataError: gone"}))
    with pytest.raises(ResexpError, match="run model=plain56 of the benched sweep failed: DataError: gone"):
        read_runs(plan, window)


@pytest.mark.parametrize("args, message", [
    (["--sweep", "figure7"], "unknown sweep preset 'figure7'"),
    (["--sweep", "figure6", "run.root=/tmp/elsewhere"], "temporary run.root of its own"),
    (["--sweep", "figure6", "hydra/launcher=submitit_local"], "hydra/launcher=basic or joblib, not submitit_local"),
    (["--sweep", "figure6", "--iters", "5"], "--iters does not apply to --sweep"),
    (["model=resnet20", "--seconds", "5"], "--seconds does not apply without --sweep"),
])
def test_bench_sweep_refusals_are_one_line(args, message):
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_bench_sweep_times_a_real_sweep_and_leaves_no_process(tmp_path, monkeypatch):
    """Three runs, two at once on the CPU, stopped after 30 s: the two running ones report their
    speed, the third is projected from theirs, and no process of the sweep survives the bench."""
    from resexp.sweep.launch import prepare_sweep

    monkeypatch.setattr(sweep_bench, "STOP_GRACE_S", 20)
    started = []
    popen = sweep_bench.subprocess.Popen

    def remember(*args, **kwargs):
        started.append(popen(*args, **kwargs))
        return started[-1]

    monkeypatch.setattr(sweep_bench.subprocess, "Popen", remember)
    overrides = ["model=plain20,resnet20,plain32", "model.width=0.25", "data=synthetic", "data.train_size=512",
                 "data.test_size=64", "trainer.batch_size=16", "trainer.max_iters=100000", "trainer.log_every=5",
                 "trainer.probe_every=0", "hydra/launcher=joblib", "hydra.sweeper.cpu_runs=2"]
    result = CliRunner().invoke(app, ["bench", "--sweep", *overrides, "--seconds", "30", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert not sweep_bench.group_members(started[0].pid)  # the sweep's process group is gone
    report = json.loads((tmp_path / "sweep_adhoc_cpu_3runs.json").read_text())
    assert (report["runs"], report["runs_at_once"], report["device_type"]) == (3, 2, "cpu")
    assert report["window_s"] == pytest.approx(30, abs=2)
    measured = [run for run in report["per_run"] if run["iters_per_s"]]
    assert measured and all(run["layer_iters_per_s"] == round(run["iters_per_s"] * run["depth"]) for run in measured)
    launch_order = [job.cfg.model.name for job in prepare_sweep([*overrides, f"run.root={tmp_path}"]).jobs]
    assert [run["model"] for run in report["per_run"]] == launch_order
    assert report["projected_total_s"] > report["window_s"]
    assert "projected wall time of the whole sweep" in result.output
