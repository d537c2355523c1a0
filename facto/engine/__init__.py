"""Runs: one training step (`step`), the loop that trains baseline and Facto side by side (`train`),
the models and data they train on (`build`, `models`, `data`), events and their recording
(`events`, `recorder`), sweeps, background jobs and their worker processes, DistributedDataParallel,
and the benchmarks that time the same step (`bench`, `gpu_bench`).
"""
