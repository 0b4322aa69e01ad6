"""resexp's sweeper, on Hydra's public plugin interface (hydra.plugins.sweeper.Sweeper).

Hydra instantiates it for a multirun (`resexp sweep ...`, `resexp train -m ...`: hydra.main
with -m) from configs/hydra/sweeper/resexp.yaml, with the launcher Hydra instantiates for it. It
plans the whole sweep first (resexp.sweep.plan: expanded once, every job composed, validated and
its directory checked, longest first) and then launches the unfinished jobs
(resexp.sweep.launch), or only prints the plan (mode=dry_run). With pack=FILE it plans exactly the
runs of one packed SLURM job (resexp.sweep.pack).
"""

from __future__ import annotations

from typing import Any, Optional

from hydra.core.plugins import Plugins
from hydra.plugins.sweeper import Sweeper
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig

MODES = ("launch", "dry_run", "plan")


class ResexpSweeper(Sweeper):
    def __init__(self, params: Optional[dict[str, str]] = None, mode: str = "launch", runs_per_gpu: int = 1,
                 cpu_runs: int = 1, mps: bool = True, pack: Optional[str] = None) -> None:
        # Checked in sweep(): Hydra would wrap an error raised here in its own, several lines long.
        self.params = dict(params or {})
        self.mode = mode
        self.packing = (runs_per_gpu, cpu_runs, mps)
        self.pack = pack
        self.hydra_context: Optional[HydraContext] = None
        self.task_function: Optional[TaskFunction] = None
        self.config: Optional[DictConfig] = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.hydra_context, self.task_function, self.config = hydra_context, task_function, config

    def sweep(self, arguments: list[str]) -> Any:
        from resexp.errors import ConfigError
        from resexp.sweep.launch import OUTCOME, run_sweep
        from resexp.sweep.pack import read_pack
        from resexp.sweep.plan import Packing, apply_launcher_overrides, dry_run, plan_sweep

        assert self.hydra_context is not None and self.config is not None
        if self.mode not in MODES:
            raise ConfigError(f"hydra.sweeper.mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        packing = Packing(*self.packing)
        # The preset's sweeps (hydra.sweeper.params) first: the command line's value of a key replaces them.
        overrides = [*(f"{key}={value}" for key, value in self.params.items()), *arguments]
        runs = read_pack(self.pack)["runs"] if self.pack else None  # a packed SLURM job's runs
        plan = plan_sweep(self.hydra_context.config_loader, self.config, overrides, packing, runs)
        if self.mode == "plan":
            OUTCOME.append(plan)
        elif self.mode == "dry_run":
            print("\n".join(dry_run(plan)))
        else:
            def make_launcher():
                apply_launcher_overrides(self.config, plan.launcher_overrides)
                return Plugins.instance().instantiate_launcher(hydra_context=self.hydra_context,
                                                               task_function=self.task_function, config=self.config)

            OUTCOME.append(run_sweep(plan, make_launcher))
        return OUTCOME[-1] if OUTCOME else None
