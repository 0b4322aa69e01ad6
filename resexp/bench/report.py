"""Where a bench report goes and how it is written: stem.json (the report) and stem.md (its
table), never over an older report without --force."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from resexp.engine.runtime import resolve_device
from resexp.files import write_json
from resexp.errors import ConfigError


def report_stem(out_dir: Path, cfg: DictConfig, runs: int = 1) -> Path:
    """<model>_<device>_b<batch>[_runs<K>][_compiled][_graph-<choice>][_recompute<N>]: where the
    report of a step bench goes, known before it runs (so an older report is not silently replaced)."""
    t = cfg.trainer
    parts = [f"{cfg.model.name}_{resolve_device(str(t.device)).type}_b{t.batch_size}",
             f"runs{runs}" if runs > 1 else "", "compiled" if t.compile else "",
             f"graph-{t.graph}" if t.graph != "auto" else "", f"recompute{t.recompute_blocks}" if t.recompute_blocks else ""]
    return out_dir / "_".join(p for p in parts if p)


def check_not_written(stem: Path, force: bool) -> None:
    """A new report never replaces an older one without --force."""
    existing = [p for p in (stem.with_suffix(".json"), stem.with_suffix(".md")) if p.exists()]
    if existing and not force:
        raise ConfigError(f"{existing[0]} already exists; pass --force to replace it, or -o for another folder")


def write_report(stem: Path, report: dict[str, Any], text: str) -> list[Path]:
    """stem.json (the report) and stem.md (its table)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(stem.with_suffix(".json"), report)
    stem.with_suffix(".md").write_text(text)
    return [stem.with_suffix(".json"), stem.with_suffix(".md")]
