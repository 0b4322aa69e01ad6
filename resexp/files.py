"""Files written whole or not at all (an output's full disk is one line naming the path), and
files read back with a size limit and a one-line error."""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from resexp.errors import ResexpError


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: readers see the old file or the new one, never half of one."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


def write_text(path: Path, text: str) -> Path:
    """An output file written whole (output_path); returns path."""
    with output_path(path) as tmp:
        tmp.write_text(text)
    return path


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], right: Sequence[int] = ()) -> list[str]:
    """A Markdown table's lines: the header, the rule (columns at the indices `right` aligned right)
    and one line per row, each cell as given (str() of it). write_csv writes the same rows as CSV."""
    rule = "|" + "".join("---:|" if i in right else "---|" for i in range(len(headers)))
    return ["| " + " | ".join(headers) + " |", rule, *("| " + " | ".join(map(str, row)) + " |" for row in rows)]


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Rows as CSV with these columns (None as an empty cell), written whole (output_path); returns path."""
    with output_path(path) as tmp, tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows({k: "" if v is None else v for k, v in row.items()} for row in rows)
    return path


def copy_file(source: Path, path: Path) -> Path:
    """An output file copied whole (output_path); returns path."""
    with output_path(path) as tmp:
        shutil.copyfile(source, tmp)
    return path


@contextmanager
def output_path(path: Path) -> Iterator[Path]:
    """atomic_path for what a command writes for people (reports, tables, figures, CSV): a full
    disk leaves the previous file as it was and is one ResexpError line naming the path, what was
    written before the disk filled and the space left there."""
    path = Path(path)
    with atomic_path(path) as tmp:
        try:
            yield tmp
        except OSError as e:
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            written, free = tmp.stat().st_size, shutil.disk_usage(path.parent).free
            kept = f"the previous {path.name} is intact" if path.is_file() else "nothing was written there"
            raise ResexpError(f"{'no space left on device' if e.errno == errno.ENOSPC else 'disk quota exceeded'}: "
                              f"{path} needs more than the {written / 2**20:.1f} MiB written before the disk "
                              f"filled, {free / 2**20:.1f} MiB free; {kept}: free some space and run the command "
                              "again") from None


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`, unique to this process and call, renamed onto `path` when
    the block succeeds and removed when it fails (a full disk leaves no half-written file)."""
    try:
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:  # the folder is read-only, or not there: said of the file asked for
        raise OSError(e.errno, e.strerror, str(path)) from None
    os.close(fd)
    tmp = Path(name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide the file from the rest of a cluster group
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it: put it straight back
    os.umask(mask)
    return mask


def read_limited(path: Path, limit: int) -> str:
    """A text file of at most `limit` bytes; larger, unreadable or not UTF-8: a one-line ResexpError."""
    try:
        with open(path, "rb") as file:
            data = file.read(limit + 1)
    except OSError as e:
        raise ResexpError(f"{path}: {e.strerror or type(e).__name__}") from None
    if len(data) > limit:
        raise ResexpError(f"{path} is larger than {limit // 2**20} MiB: not a file resexp wrote")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise ResexpError(f"{path} is corrupt (not UTF-8 text)") from None


MAX_JSON = 2**20  # a summary.json is a few kB (a segment per resume)


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file of at most MAX_JSON bytes, None if absent; a corrupt one is a one-line ResexpError."""
    if not path.is_file():
        return None
    text = read_limited(path, MAX_JSON)
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ResexpError(f"{path} is corrupt (not valid JSON: {str(e).splitlines()[0]}); "
                          "move it away (it is rewritten from the checkpoint)") from None
    except RecursionError:
        raise ResexpError(f"{path} is corrupt (nested too deeply); move it away (it is rewritten from the "
                          "checkpoint)") from None
    if not isinstance(data, dict):
        raise ResexpError(f"{path} is corrupt (not a JSON object); move it away (it is rewritten from the checkpoint)")
    return data


def load_data_only(path: Path, map_location: Any) -> Any:
    """torch.load with weights_only: data, never code. Its warnings (a pickle protocol other than
    torch's own) would come before the one line that says whether the file loads."""
    import torch  # here: the JSON helpers need no torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.load(path, map_location=map_location, weights_only=True)
