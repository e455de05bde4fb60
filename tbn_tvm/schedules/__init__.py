"""Per-target schedules for the project's kernels: host CPU (cpu.py) and Cortex-M (cortex_m.py)."""
