"""`resexp models`: every named model (configs/model/) with its parameters and MACs, counted from its
config (resexp.model_size), so the command imports no torch and builds no model."""

from __future__ import annotations

from rich.table import Table

from resexp.config import compose, group_choices
from resexp.model_size import model_size


def model_table() -> Table:
    """A row per named model: arch, depth, residual (with its shortcut option or norm placement),
    parameters and forward MACs per image."""
    table = Table("model", "arch", "depth", "residual", "params", "MACs / image")
    for name in group_choices("model"):
        cfg = compose([f"model={name}"]).model
        size = model_size(cfg)
        residual = str(cfg.get("residual", "-"))
        # The detail that matters per arch: the ResNet shortcut option, the ViT norm placement.
        detail = cfg.get("shortcut") if cfg.get("residual") else None
        detail = cfg.get("norm_placement", detail)
        if detail:
            residual += f" ({detail})"
        table.add_row(
            name, cfg.arch, str(cfg.depth), residual,
            f"{size.params / 1e6:.3f}M", f"{size.macs / 1e6:,.2f}M",
        )
    return table
