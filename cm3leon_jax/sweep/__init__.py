"""Hyper-parameter sweeps: `spec.py` (how a sweep file is written, named, checked and summarised),
`runner.py` (running its entries one after another, or printing their Cloud TPU launch lines);
`python -m cm3leon_jax.sweep` is the command.
"""
