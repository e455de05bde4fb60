"""Relax passes, one per file; :mod:`tbn_tvm.passes.pipeline` lists their order."""
