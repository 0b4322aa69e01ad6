"""Sweeps: launch.py (multirun: Hydra's entry with -m, which instantiates resexp's sweeper,
hydra_plugins/resexp_sweeper; the jobs to Hydra's launcher; outcomes counted), plan.py (the sweep
expanded once, every job composed, validated and ordered before anything runs), control.py (a
signal stops the whole sweep; a run's GPU), mps.py (CUDA MPS for several runs on one GPU)."""
