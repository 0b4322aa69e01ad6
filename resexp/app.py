"""The resexp Streamlit page (`resexp app`, needs `pip install 'resexp[app]'`).

Two views:
  * One block: `resexp block` interactively — one Transformer block on one small vector under a
    norm placement, computed by resexp.views.block (the model's own residual_step), as a
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
from resexp.views.block import MAX_DIM, block_steps, check_placement, draw_block, rule_text

DIM_RANGE = (2, min(16, MAX_DIM))
X_RANGE = (-5.0, 5.0)


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


def run_browser() -> None:
    from resexp.kinds import REPORTS, kind_of, report_kind
    from resexp.runs import scan_runs

    st.subheader("Run browser")
    sweep_dir = st.text_input("sweep directory", value="", key="sweep_dir",
                              placeholder="e.g. runs/sweeps/figure6").strip()
    titles = {"auto": "auto (norms if every run is a ViT)"} | {name: kind.title for name, kind in REPORTS.items()}
    choice = st.selectbox("report", list(titles), format_func=titles.get, key="kind")
    if not sweep_dir:
        st.info("Give a sweep directory (or any folder of run directories).")
        return
    try:
        runs, unreadable = scan_runs(sweep_dir)
        report = kind_of(runs) if choice == "auto" else report_kind(choice)
        drawn, tables = report.draw(runs), report.tables(runs)  # as resexp figure/table write them
    except ResexpError as error:
        st.error(_message(error))
        return
    st.caption(f"{len(runs)} runs under {sweep_dir}" + (f", {len(unreadable)} left out" if unreadable else ""))
    if unreadable:
        st.warning("Runs left out (not in the report): "
                   + "; ".join(f"{u.path} ({u.what}: {u.reason})" for u in unreadable))
    st.pyplot(drawn.figures[""])
    st.markdown(f"**{report.table_title}**")
    st.dataframe(pd.DataFrame(tables.main))
    if tables.lr is not None:
        st.markdown("**Learning-rate sensitivity**: final training loss per placement, depth and lr")
        st.pyplot(drawn.figures["_lr"])
        st.dataframe(pd.DataFrame(tables.lr))
    if tables.runs is not None:
        with st.expander("every run"):
            st.dataframe(pd.DataFrame(tables.runs))


def main() -> None:
    st.set_page_config(page_title="resexp", layout="wide")
    st.title("resexp")
    view = st.sidebar.radio("view", ("One block", "Run browser"), key="view")
    if view == "One block":
        block_view()
    else:
        run_browser()


main()
