"""The resexp Streamlit page (`resexp app`, needs `pip install 'resexp[app]'`).

Two views:
  * One block: `resexp block` interactively — one Transformer block on one small vector under a
    norm placement, computed by resexp.report.block_view (the model's own residual_step), as a
    table of the steps and the same bar chart the CLI draws.
  * Run browser: a sweep directory's Figure 6 and Table 6 (He et al.), or, for a ViT
    norm-placement sweep, the norms figure and table — what `resexp figure` / `resexp table` write.

Run with `resexp app` or `streamlit run resexp/app.py`. Widgets have explicit keys (tests/test_app.py).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from resexp.errors import ResexpError, explain
from resexp.model_config import PLACEMENTS
from resexp.report.block_view import MAX_DIM, block_steps, check_placement, draw_block, rule_text

DIM_RANGE = (2, min(16, MAX_DIM))
X_RANGE = (-5.0, 5.0)
KINDS = {"auto": "auto (norms if every run is a ViT)", "fig6": "Figure 6 / Table 6 (He et al.)",
         "norms": "norm placements (ViT)"}


def _message(error: BaseException) -> str:
    """The one line the CLI would print for this error."""
    return explain(error)[1]


def steps_frame(steps) -> pd.DataFrame:
    """Rows: steps; columns x[0..d-1] and norm (the CLI's table, unrounded)."""
    dim = len(steps[0][1])
    rows = {name: [*values.tolist(), float(values.norm())] for name, values in steps}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[*(f"x[{i}]" for i in range(dim)), "norm"])


def block_view() -> None:
    st.subheader("One Transformer block on one vector")
    st.caption("G(x) = W x + b with W ~ N(0, 1/d), b ~ N(0, 0.1²) from the seed; fresh LayerNorms "
               "(DyT or Derf under dyt or derf). The same computation as `resexp block`.")
    left, right = st.columns([1, 2])
    with left:
        dim = st.slider("dimension d", *DIM_RANGE, value=4, key="dim")
        placement = st.selectbox("placement", PLACEMENTS, index=PLACEMENTS.index("pre"), key="placement")
        blocks = int(st.number_input("blocks N (DeepNorm's α, Mix-LN's Post-LN share)", min_value=1,
                                     max_value=1000, value=1, step=1, key="blocks"))
        seed = int(st.number_input("seed (W, b and x)", min_value=0, value=42, step=1, key="seed"))
        by_hand = st.checkbox("set x by hand", value=False, key="by_hand")
        x = None
        if by_hand:
            x = [st.slider(f"x[{i}]", *X_RANGE, value=1.0 if i % 2 == 0 else -1.0, step=0.1, key=f"x{i}")
                 for i in range(dim)]
    with right:
        try:
            check_placement(placement)
            steps = block_steps(placement, dim, seed, x, blocks)
        except ResexpError as error:
            st.error(_message(error))
            return
        st.markdown(f"**{placement}**: x ← {rule_text(placement, blocks)}")
        st.dataframe(steps_frame(steps))
        with tempfile.TemporaryDirectory() as tmp:
            png = draw_block(steps, placement, Path(tmp) / "block.png", blocks)
            st.image(png.read_bytes(), caption="each step's components (the figure `resexp block` writes)")


def _kind(runs, choice: str) -> str:
    if choice != "auto":
        return choice
    return "norms" if all(r.config.model.get("arch") == "vit" for r in runs) else "fig6"


def run_browser() -> None:
    from resexp.report.figures import draw_figure6, figure6_series
    from resexp.report.norms_figure import draw_norms_figure
    from resexp.report.norms_lr import draw_lr_figure, lr_rows, varies_lr
    from resexp.report.norms_table import norms_runs, norms_table
    from resexp.report.runs import scan_runs
    from resexp.report.tables import table6

    st.subheader("Run browser")
    sweep_dir = st.text_input("sweep directory", value="", key="sweep_dir",
                              placeholder="e.g. runs/sweeps/figure6").strip()
    choice = st.selectbox("report", list(KINDS), format_func=KINDS.get, key="kind")
    if not sweep_dir:
        st.info("Give a sweep directory (or any folder of run directories).")
        return
    try:
        runs, unreadable = scan_runs(sweep_dir)
        kind = _kind(runs, choice)
        lr_figure = lr_table = None
        if kind == "norms":
            figure, rows, extra = draw_norms_figure(runs), norms_table(runs), norms_runs(runs)
            if varies_lr(runs):  # a learning-rate sweep: final loss against lr, as resexp figure/table write it
                lr_figure, lr_table = draw_lr_figure(runs), lr_rows(runs)
        else:
            figure, rows, extra = draw_figure6(figure6_series(runs)), table6(runs), None
    except ResexpError as error:
        st.error(_message(error))
        return
    st.caption(f"{len(runs)} runs under {sweep_dir}" + (f", {len(unreadable)} left out" if unreadable else ""))
    if unreadable:
        st.warning("Runs left out (not in the report): "
                   + "; ".join(f"{u.path} ({u.what}: {u.reason})" for u in unreadable))
    st.pyplot(figure)
    st.markdown("**Norm placements**" if kind == "norms" else "**Table 6**")
    st.dataframe(pd.DataFrame(rows))
    if lr_figure is not None:
        st.markdown("**Learning-rate sensitivity**: final training loss per placement, depth and lr")
        st.pyplot(lr_figure)
        st.dataframe(pd.DataFrame(lr_table))
    if extra is not None:
        with st.expander("every run"):
            st.dataframe(pd.DataFrame(extra))


def main() -> None:
    st.set_page_config(page_title="resexp", layout="wide")
    st.title("resexp")
    view = st.sidebar.radio("view", ("One block", "Run browser"), key="view")
    if view == "One block":
        block_view()
    else:
        run_browser()


main()
