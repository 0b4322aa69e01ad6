"""Every measured figure in the docs is traceable to a committed file that holds it.

    python scripts/check_claims.py            # exit 1 and one line per untraceable figure

The convention (README.md, "Contributing"):
- A measured figure is a number with a unit: %, ms, µs, s, min, h, GiB, MiB, GB, MB, × or x
  ("5.5 ms", "1.80×", "12.12%"), in README.md or a results/**/README.md, outside code.
- Its source is a committed file (or folder) linked in the same paragraph, list item or table,
  or, in a results README, any committed file of its own folder (and below): a results folder is the source
  of its README.
- The figure holds if a source file has a number equal to it at the printed precision (as
  written, or scaled by 100, 1000, 1/1000, 1/60 or 1/3600: a fraction shown as a percentage,
  seconds as ms, minutes or seconds as hours).
- What is not a measurement (a target, a limit, a setting, a command) goes in a code span
  (`15 min`), which the check skips; the paper's numbers link the module that holds them.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIGURE = re.compile(r"(?<![\w.])([-+]?\d[\d,]*(?:\.\d+)?)\s?(%|ms\b|µs\b|s\b|min\b|h\b|GiB\b|MiB\b|GB\b|MB\b|×(?!\s?\d)|x\b)")
NUMBER = re.compile(r"[-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?")
LINK = re.compile(r"\]\(([^)\s#]+)")
SCALES = (1, 100, 1000, 0.001, 1 / 60, 1 / 3600)  # as written; %; ms and s; minutes or seconds as hours
BINARY = {".png", ".pdf", ".npz", ".pt", ".gz"}


def committed() -> set[Path]:
    """The files git tracks (every file under ROOT where there is no git, as in a source tarball)."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return {p for p in ROOT.rglob("*") if p.is_file()}
    return {ROOT / name for name in listed.stdout.split("\0") if name}


@cache
def numbers(path: Path) -> tuple[float, ...]:
    if path.suffix in BINARY:
        return ()
    return tuple(float(n) for n in NUMBER.findall(path.read_text(errors="ignore").replace(",", "")))


def holds(figure: str, sources: list[Path]) -> bool:
    """Whether a source has a number equal to the figure at its printed precision."""
    text = figure.replace(",", "").lstrip("+")
    places = len(text.split(".")[1]) if "." in text else 0
    value, half = float(text), 0.5 * 10**-places + 1e-9  # a source's number rounds to the figure, either way at a tie
    return any(abs(n * scale - value) <= half for path in sources for n in numbers(path) for scale in SCALES)


def blocks(text: str) -> list[str]:
    """Paragraphs, list items and tables, code (fenced, indented 4 or more, in backticks) removed."""
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    text = re.sub(r"^ {4,}\S.*$", "", text, flags=re.M)  # indented code (list items continue with 2 spaces)
    text = re.sub(r"`[^`\n]*`", "", text)
    return [b for b in re.split(r"\n\s*\n|\n(?=\s*[-*] )", text) if b.strip()]


def check(doc: Path, tracked: set[Path]) -> list[str]:
    own = [p for p in tracked if doc.parent in p.parents and p != doc] if doc.parent != ROOT else []
    problems = []
    for block in blocks(doc.read_text()):
        figures = FIGURE.findall(block)
        if not figures:
            continue
        sources = list(own)
        for link in LINK.findall(block):
            if link.startswith(("http://", "https://")):
                continue
            target = (doc.parent / link).resolve()
            sources += [p for p in tracked if p == target or target in p.parents]
        for number, unit in figures:
            if not holds(number, sources):
                where = "no committed file linked" if not sources else "not in the linked files"
                line = " ".join(block.split())[:90]
                problems.append(f"{doc.relative_to(ROOT)}: {number}{unit}: {where} ({line} ...)")
    return problems


def main() -> int:
    tracked = committed()
    docs = [ROOT / "README.md", *sorted(p for p in tracked if p.name == "README.md"
                                        and p.is_relative_to(ROOT / "results"))]
    problems = [problem for doc in docs for problem in check(doc, tracked)]
    print("\n".join(problems) if problems else f"every measured figure of {len(docs)} docs is in a committed file")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
