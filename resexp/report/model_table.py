"""`resexp models`: every named model (configs/model/) built, with its parameters and MACs."""

from __future__ import annotations

from rich.table import Table

from resexp.config import compose, group_choices
from resexp.models import build_model, count_macs, count_params


def model_table() -> Table:
    """A row per named model: arch, depth, residual (with its shortcut option or norm placement),
    parameters and forward MACs per image."""
    table = Table("model", "arch", "depth", "residual", "params", "MACs / image")
    for name in group_choices("model"):
        cfg = compose([f"model={name}"]).model
        model = build_model(cfg)
        residual = str(cfg.get("residual", "-"))
        # The detail that matters per arch: the ResNet shortcut option, the ViT norm placement.
        detail = cfg.get("shortcut") if cfg.get("residual") else None
        detail = cfg.get("norm_placement", detail)
        if detail:
            residual += f" ({detail})"
        table.add_row(
            name, cfg.arch, str(cfg.depth), residual,
            f"{count_params(model) / 1e6:.3f}M", f"{count_macs(model) / 1e6:,.2f}M",
        )
    return table
