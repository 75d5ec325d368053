"""Adapters from the framework-agnostic core to host RL libraries (d3rlpy, stable-baselines3)."""
