"""The Streamlit page (resexp/app.py) through Streamlit's own AppTest, and `resexp app` without Streamlit."""

import logging
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fake_runs import write_run
from resexp.cli import app as cli_app
from resexp.views.block import block_steps

AppTest = pytest.importorskip("streamlit.testing.v1").AppTest

APP = str(Path(__file__).resolve().parents[1] / "resexp" / "app.py")
TIMEOUT = 60  # the first run imports torch and matplotlib
RUNS = [("plain20", 20, False, 0), ("plain20", 20, False, 1), ("resnet20", 20, True, 0)]


@pytest.fixture(autouse=True)
def no_bare_mode_warnings():
    """AppTest runs the page in this process, where Streamlit warns "missing ScriptRunContext" for
    every element (harmless, "can be ignored when running in bare mode"): a hundred lines in a log."""
    logger = logging.getLogger("streamlit.runtime.scriptrunner_utils.script_run_context")
    level = logger.level
    logger.setLevel(logging.ERROR)
    yield
    logger.setLevel(level)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep")
    for run in RUNS:
        write_run(root, *run, "finished")
    return root


def started():
    at = AppTest.from_file(APP, default_timeout=TIMEOUT).run()
    assert not at.exception, at.exception
    return at


def images(at):
    """st.image / st.pyplot elements ("imgs" in older Streamlit versions)."""
    return [*at.get("image"), *at.get("imgs")]


def table_values(at):
    frame = at.dataframe[0].value
    return list(frame.index), frame


def assert_steps_shown(at, placement, dim, seed=42, x=None, blocks=1):
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    names, frame = table_values(at)
    expected = block_steps(placement, dim, seed, x, blocks)
    assert names == [name for name, _ in expected]
    assert list(frame.columns) == [*(f"x[{i}]" for i in range(dim)), "norm"]
    for name, vector in expected:
        np.testing.assert_allclose(frame.loc[name, [f"x[{i}]" for i in range(dim)]].to_numpy(dtype=float),
                                   vector.numpy(), rtol=1e-6, atol=1e-6)
        assert frame.loc[name, "norm"] == pytest.approx(float(vector.norm()), rel=1e-6)


def test_block_view_defaults_and_widgets():
    at = started()
    assert_steps_shown(at, "pre", 4)
    assert len(images(at)) == 1  # the bar chart

    at.slider(key="dim").set_value(6)
    at.selectbox(key="placement").select("deepnorm")
    at.number_input(key="blocks").set_value(8)
    at.number_input(key="seed").set_value(3)
    at.run()
    assert_steps_shown(at, "deepnorm", 6, seed=3, blocks=8)
    assert "α = (2·8)^(1/4)" in at.markdown[-1].value

    at.selectbox(key="placement").select("mix").run()
    assert_steps_shown(at, "mix", 6, seed=3, blocks=8)


def test_block_view_x_by_hand():
    at = started()
    at.slider(key="dim").set_value(3)
    at.selectbox(key="placement").select("post")
    at.checkbox(key="by_hand").check().run()
    x = [1.0, -1.0, 1.0]  # the sliders' starting values
    assert_steps_shown(at, "post", 3, x=x)
    at.slider(key="x1").set_value(2.5).run()
    x[1] = 2.5
    assert_steps_shown(at, "post", 3, x=x)


def test_every_placement_is_offered():
    from resexp.views.block import BLOCK_PLACEMENTS
    from resexp.model_config import PLACEMENTS

    at = started()
    assert tuple(at.selectbox(key="placement").options) == PLACEMENTS
    for placement in PLACEMENTS:
        at.selectbox(key="placement").select(placement).run()
        assert not at.exception, at.exception
        if placement in BLOCK_PLACEMENTS:
            assert_steps_shown(at, placement, 4)
        else:  # rezero, none: no norm to show; one line, as `resexp block` says
            assert len(at.error) == 1 and "placement must be one of" in at.error[0].value


def browse(path):
    at = started()
    at.sidebar.radio(key="view").set_value("Run browser").run()
    at.text_input(key="sweep_dir").input(str(path)).run()
    assert not at.exception, at.exception
    return at


def test_run_browser_shows_figure6_and_table6(sweep):
    at = browse(sweep)
    assert not at.error, [e.value for e in at.error]
    assert len(images(at)) == 1  # Figure 6
    frame = at.dataframe[0].value
    assert sorted(frame["model"]) == ["ResNet-20", "plain-20"]
    assert sorted(frame["seeds"]) == [1, 2]


def test_run_browser_on_an_lr_sweep_adds_loss_against_lr(tmp_path):
    from test_report_norms import LR_RUNS, write_vit_run

    logged = {(n, d, lr): write_vit_run(tmp_path, n, p, True, d, 0, 0, st, lr=lr, loss_scale=k)
              for n, p, d, lr, k, st in LR_RUNS}
    at = browse(tmp_path)
    assert not at.error, [e.value for e in at.error]
    assert len(images(at)) == 2  # the norms figure and final loss against lr
    placements, lrs = at.dataframe[0].value, at.dataframe[1].value
    assert list(placements["model"]) == ["vit_post", "vit_pre"]
    assert list(zip(lrs["model"], lrs["depth"], lrs["best_lr"])) == [("vit_post", 6, 3e-4), ("vit_pre", 6, 1e-3),
                                                                      ("vit_pre", 24, 1e-3)]
    assert lrs["lr_0.0003"][0] == logged["vit_post", 6, 3e-4]["summary"]["train_loss"]


@pytest.mark.parametrize("bad", ["does/not/exist", "empty"])
def test_run_browser_bad_directory_is_one_error(tmp_path, bad):
    target = tmp_path / bad
    if bad == "empty":
        target.mkdir()
    at = browse(target)
    assert len(at.error) == 1
    assert "\n" not in at.error[0].value and str(target) in at.error[0].value
    assert not at.dataframe and not images(at)


def test_cli_app_without_streamlit(monkeypatch):
    monkeypatch.setitem(sys.modules, "streamlit", None)  # `import streamlit` fails, find_spec says None
    result = CliRunner().invoke(cli_app, ["app"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert "resexp app needs Streamlit: pip install 'resexp[app]'" in lines[0]
