"""Sweeps: Hydra's multirun drives the task below through a launcher plugin.

`resexp sweep` calls `main` in multirun mode, so basic (sequential), joblib (local processes)
and submitit (SLURM or local) launchers all run the same importable task function; submitit
pickles it, and on pre-emption or time-out re-queues it, and train() resumes from the run's
last checkpoint. Finished runs are skipped, unfinished ones resumed.
"""

from __future__ import annotations

import os
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from resexp.config import GROUPS, compose, config_dir
from resexp.engine.mps import cuda_mps
from resexp.errors import ResexpError


def _visible_gpus() -> int:
    import torch

    return torch.cuda.device_count()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="train")
def main(cfg: DictConfig) -> str:
    """One run of a sweep, in the run directory Hydra assigned to this job."""
    from resexp.engine.train import train

    hydra_cfg = HydraConfig.get()
    with open_dict(cfg):
        cfg.run.dir = hydra_cfg.runtime.output_dir
        gpus = _visible_gpus()
        if gpus > 1 and cfg.trainer.device == "auto":  # spread the runs over the GPUs
            cfg.trainer.device = f"cuda:{hydra_cfg.job.num % gpus}"
    parallel = OmegaConf.select(hydra_cfg.launcher, "n_jobs", default=1)
    if parallel > 1 and cfg.trainer.progress == "auto":  # bars of parallel runs would overwrite each other
        with open_dict(cfg):
            cfg.trainer.progress = "lines"
    if gpus == 0 and parallel > 1:  # share the CPU cores instead of fighting over them
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // parallel))
    try:
        summary = train(cfg)
    except ResexpError as e:  # one bad run must not stop the rest of the sweep
        print(f"error: {cfg.run.dir}: {e}", file=sys.stderr)
        return "failed"
    return summary["status"]


def _is_swept(override: str) -> bool:
    value = override.split("=", 1)[-1]
    return "," in value or value.startswith(("range(", "choice(", "glob("))


def _preset_config(overrides: list[str]) -> DictConfig | None:
    """The preset file a sweep names (sweep=NAME), as written."""
    preset = next((o.split("=", 1)[1] for o in overrides if o.startswith("sweep=")), None)
    return None if preset is None else OmegaConf.load(config_dir() / "sweep" / f"{preset}.yaml")


def _preset_sweeps(preset: DictConfig | None) -> list[str]:
    """The sweeps a preset declares in hydra.sweeper.params, as overrides."""
    params = None if preset is None else OmegaConf.select(preset, "hydra.sweeper.params")
    return [f"{key}={value}" for key, value in (params or {}).items()]


def _preset_launcher(preset: DictConfig | None) -> str | None:
    """The launcher a preset picks in its defaults list (override /hydra/launcher: NAME)."""
    for entry in (preset or {}).get("defaults", []):
        if isinstance(entry, DictConfig) and "override /hydra/launcher" in entry:
            return entry["override /hydra/launcher"]
    return None


def check_overrides(overrides: list[str], preset_sweeps: list[str] | None = None) -> DictConfig:
    """Compose every value of every simple sweep (key=a,b,c) once, so a bad value fails here
    with resexp's one-line error instead of inside Hydra's multirun. Returns the first config."""
    if preset_sweeps is None:
        preset_sweeps = _preset_sweeps(_preset_config(overrides))
    given = {o.split("=", 1)[0] for o in overrides}
    preset = [o for o in preset_sweeps if o.split("=", 1)[0] not in given]
    fixed = [o for o in overrides if not _is_swept(o) and not o.startswith("hydra")]
    swept = [o.split("=", 1) for o in [*preset, *overrides]
             if _is_swept(o) and "(" not in o and not o.startswith("hydra")]
    # Every swept value next to the first value of the other sweeps, so that fixed keys are
    # checked against a swept group's choices (model=vit_pre,vit_post with model.dim=64).
    firsts = {key: values.split(",")[0] for key, values in swept}
    first = compose([*fixed, *(f"{k}={v}" for k, v in firsts.items())])
    for key, values in swept:
        for value in values.split(",")[1:]:
            compose([*fixed, *(f"{k}={value if k == key else v}" for k, v in firsts.items())])
    return first


def chosen_launcher(overrides: list[str], preset_launcher: str | None = None) -> str:
    """The launcher a sweep runs with: the command line's, else the preset's, else basic."""
    return next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra/launcher=")),
                preset_launcher or "basic")


def launcher_overrides(overrides: list[str], cfg: DictConfig, preset_launcher: str | None = None) -> list[str]:
    """Settings the launcher plugins leave to chance, made explicit unless the user set them."""
    given = {o.split("=", 1)[0] for o in overrides}
    launcher = chosen_launcher(overrides, preset_launcher)
    # Run directories are named by what varies between runs only: the swept keys.
    # Hydra matches exclude_keys against the key as written, "+"/"++" prefix included.
    fixed = [k for o in overrides if not _is_swept(o) for k in dict.fromkeys((o.split("=", 1)[0],
                                                                              o.split("=", 1)[0].lstrip("+~")))]
    excluded = ["sweep", "run.root", "run.sweep", *fixed]
    extra = [f"hydra.job.config.override_dirname.exclude_keys=[{','.join(repr(k) for k in excluded)}]"]
    if launcher == "joblib" and "hydra.launcher.n_jobs" not in given:
        # joblib's default (-1: one job per CPU core) oversubscribes cores and GPUs alike.
        gpus = _visible_gpus()
        n_jobs = gpus * cfg.launcher.runs_per_gpu if gpus else cfg.launcher.cpu_runs
        extra.append(f"hydra.launcher.n_jobs={n_jobs}")
    if launcher == "submitit_local" and "hydra.launcher.gpus_per_node" not in given:
        # submitit_local sets CUDA_VISIBLE_DEVICES from gpus_per_node: give each run one GPU if any.
        extra.append(f"hydra.launcher.gpus_per_node={min(1, _visible_gpus())}")
    return extra


def run_sweep(overrides: list[str]) -> None:
    """Check the overrides, then run `main` in multirun mode (as `python -m resexp.sweep -m ...`)."""
    preset_config = _preset_config(overrides)
    preset = _preset_sweeps(preset_config)
    first = check_overrides(overrides, preset)
    # Hydra first composes a multirun's config without its sweeps, i.e. with the default model:
    # a key of a swept group (model.dim=64 with model=vit_pre,vit_post) would be refused there.
    # Checked above against every swept choice, it is passed as ++key (set, adding if absent).
    # A key the preset sweeps stays as written: Hydra lets it replace the preset's sweep.
    preset_keys = {o.split("=", 1)[0] for o in preset}
    groups = (preset_keys | {o.split("=", 1)[0] for o in overrides if _is_swept(o)}) & set(GROUPS)
    overrides = [f"++{o}" if o.split(".", 1)[0] in groups and not _is_swept(o)
                 and o.split("=", 1)[0] not in preset_keys else o for o in overrides]
    extra = launcher_overrides(overrides, first, _preset_launcher(preset_config))
    # Several local processes per GPU share it through CUDA MPS (resexp/engine/mps.py).
    local = chosen_launcher(overrides, _preset_launcher(preset_config)) == "joblib"
    per_gpu = int(first.launcher.runs_per_gpu) if local and first.launcher.mps else 1
    argv = sys.argv
    sys.argv = [argv[0], "--multirun", *overrides, *extra]
    try:
        with cuda_mps(per_gpu, _visible_gpus()) as shared:
            main()
            if shared:  # joblib keeps its workers (and their CUDA contexts) for reuse: end them before MPS
                from joblib.externals.loky import get_reusable_executor

                get_reusable_executor().shutdown(wait=True)
    finally:
        sys.argv = argv


if __name__ == "__main__":
    os.environ.setdefault("HYDRA_FULL_ERROR", "0")
    main()
