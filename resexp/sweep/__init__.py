"""Sweeps: plan.py (every job composed, validated and ordered before anything runs), launch.py
(Hydra's launcher plugins run the jobs; outcomes counted), control.py (a signal stops the whole
sweep), mps.py (CUDA MPS for several runs on one GPU)."""
