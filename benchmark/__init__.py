"""Benchmark layer: sweeps (local or Slurm), reports and throughput tables over the run folders
that every algorithm script writes (see docs/CONTRACT.md)."""
