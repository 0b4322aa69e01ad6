"""Text for terminals and reports: tables that read at 80 columns (nothing cut to "Res…"), durations."""

from __future__ import annotations

from collections.abc import Sequence

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text


def fitted_table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str, width: int,
                 shared: Sequence[str] = ()) -> Table:
    """A rich table of rows (cells as text, rich markup allowed). A column named in `shared` whose
    cells are all equal (one dataset, one device) is said once in the title instead; the first
    column (what each row is) never wraps, the others wrap at spaces; no word is cut to "Res…".
    `width` is the console's."""
    keep = [i for i, header in enumerate(headers) if header not in shared or len({row[i] for row in rows}) > 1]
    said = [f"{headers[i]}: {rows[0][i]}" for i in range(len(headers)) if i not in keep and rows]
    # No caption: rich crops a caption as wide as a tight table; callers print their notes below it.
    table = Table(title=", ".join([title, *said]), title_justify="left", box=box.SIMPLE_HEAD, show_edge=False,
                  pad_edge=False, padding=(0, 1, 0, 0))
    for position, i in enumerate(keep):  # no narrower than its longest word (of a cell or the header)
        texts = (headers[i], *(Text.from_markup(row[i]).plain for row in rows))
        words = [word for text in texts for word in text.split()]
        table.add_column(headers[i], no_wrap=position == 0, min_width=max(map(len, words), default=1), overflow="fold")
    for row in rows:
        table.add_row(*(row[i] for i in keep))
    # Squeezed to the console by itself, rich can end up a character or two too wide and cut the last
    # column; given a width, it holds to it (checked at 71 to 120 columns for Table 6).
    if Console(width=width).measure(table).maximum > width - 2:
        table.width = width - 2
    return table


def duration(seconds: float) -> str:
    """A time span in the fewest units that say it: 42s, 6m24s, 1h05m, 2d03h."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    if seconds < 86400:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 86400}d{seconds % 86400 // 3600:02d}h"
