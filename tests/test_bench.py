"""`resexp bench` on CPU: both pipelines timed, the report's arithmetic and files."""

import json

import pytest
import torch
from typer.testing import CliRunner

from resexp.cli import app
from resexp.config import compose
from resexp.engine.bench import PAPER_ITERS, bench, write_report
from resexp.engine.train import resolve_precision

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
    json_path, md_path = write_report(report, tmp_path)
    assert json_path.name == "resnet20_cpu_b16.json"
    assert json.loads(json_path.read_text()) == report
    table = md_path.read_text()
    assert table.count("| resexp") == 2 and table.count("| reference") == 1 and table.count("(training default)") == 1
    assert report["device"] in table and report["torch"] in table


def test_bench_cli_rejects_an_unknown_model():
    result = CliRunner().invoke(app, ["bench", "model=resnet21"])
    assert result.exit_code == 2
    assert "resnet20" in result.output and "Traceback" not in result.output
