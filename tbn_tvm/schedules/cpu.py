"""Host CPU schedules for the compact-weight kernels.

For now the kernels are left in their naive loop order (correct, not fast); tuned records are
applied by :mod:`tbn_tvm.schedules.tuning` when given.
"""

from __future__ import annotations


def schedule_cpu(mod, target):
    """Return ``mod`` with the project's PrimFuncs scheduled for ``target`` (host CPU)."""
    return mod
