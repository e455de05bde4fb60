"""Per-target schedules for the project's kernels: host CPU (cpu.py), Cortex-M (cortex_m.py),
CUDA (cuda.py), and MetaSchedule tuning (tuning.py, qemu_runner.py)."""

from __future__ import annotations


def reverse_inline_safely(sch, block) -> bool:
    """``reverse_compute_inline(block)`` only where every producer of ``block`` has ``block``
    as its sole consumer; True if it was inlined.

    TVM 0.27's ``reverse_compute_inline`` accepts a block whose producer has a second reader (the
    ``x * (0.5 + 0.5*erf(x/sqrt 2))`` of an erf GELU after a bias add: the add feeds both the
    erf and the product) and leaves a read of the removed buffer behind ("Buffer
    T_add_intermediate is used before its definition" at build time).
    """
    try:
        if any(len(sch.get_consumers(p)) != 1 for p in sch.get_producers(block)):
            return False
        sch.reverse_compute_inline(block)
        return True
    except Exception:  # noqa: BLE001 - the primitive does not apply to this block
        return False


def inline_all_except(sch, keep: tuple[str, ...], producers: bool = True) -> None:
    """Inline every block of the root whose name does not start with one of ``keep``: into its
    consumers (``compute_inline``: padding, decode; only with ``producers``) or into its
    producer (:func:`reverse_inline_safely`: scale, bias, residual add, ReLU), until nothing
    more inlines."""
    changed = True
    while changed:
        changed = False
        for blk in sch.get_child_blocks(sch.get_sblock("root")):
            if sch.get(blk).name_hint.startswith(keep):
                continue
            if producers:
                try:
                    sch.compute_inline(blk)
                    changed = True
                    break
                except Exception:  # noqa: BLE001 - not inlinable into its consumers
                    pass
            if reverse_inline_safely(sch, blk):
                changed = True
                break
