"""Per-target schedules for the project's kernels (cpu, cuda, cortex-m) and auto-tuning."""
