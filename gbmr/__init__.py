"""gbmr: Graph-Based Memory Reconstruction and the deep-RL baselines to compare it with."""

__version__ = "0.1.0"
