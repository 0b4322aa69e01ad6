"""Files written whole or not at all, and JSON objects read back with a one-line error."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from resexp.errors import ResexpError


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic: readers see the old file or the new one, never half of one."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary name beside `path`, unique to this process and call, renamed onto `path` when
    the block succeeds and removed when it fails (a full disk leaves no half-written file)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object file, None if absent; a corrupt one is a one-line ResexpError."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise ResexpError(f"{path} is corrupt ({type(e).__name__}: {str(e).splitlines()[0]}); "
                          "move it away (it is rewritten from the checkpoint)") from None
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
