"""The docs' measured figures are traceable (scripts/check_claims.py): the check on this tree,
and on a fixture tree where it must fail."""

import importlib.util
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "check_claims.py"


def load_checker():
    spec = importlib.util.spec_from_file_location("check_claims", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_measured_figure_in_the_docs_is_in_a_committed_file():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout


def test_the_check_fails_on_a_figure_without_a_source_or_not_in_it(tmp_path):
    checker = load_checker()
    checker.ROOT = tmp_path
    (tmp_path / "results" / "x").mkdir(parents=True)
    (tmp_path / "results" / "x" / "bench.json").write_text('{"ms": 5.4871, "ratio": 0.0212}')
    (tmp_path / "results" / "y.md").write_text("| step | 7.25 ms |")
    doc = tmp_path / "README.md"
    doc.write_text("The step takes 5.49 ms ([bench](results/x/bench.json)), 2.1% of it in the loader "
                   "([bench](results/x/bench.json)).\n\nAnother takes 7.25 ms.\n\n"
                   "A third takes 7.3 ms ([table](results/y.md)).\n\nThe target is `15 min`.\n\n"
                   "Linked but wrong: 6.0 ms ([bench](results/x/bench.json)).\n")
    tracked = {tmp_path / "results" / "x" / "bench.json", tmp_path / "results" / "y.md", doc}
    problems = checker.check(doc, tracked)
    assert [p.split(": ")[1:3] for p in problems] == [["7.25ms", "no committed file linked (Another takes 7.25 ms. ...)"],
                                                      ["6.0ms", "not in the linked files (Linked but wrong"]]
    # a results README's own folder is its source
    own = tmp_path / "results" / "x" / "README.md"
    own.write_text("It took 5.487 ms, and 9 s more.\n")
    assert [p.split(": ")[1] for p in checker.check(own, tracked | {own})] == ["9s"]
