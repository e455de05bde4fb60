"""A self-contained static C library from a prepared Relax module (no TVM runtime on the device).

TVM generates the kernels (C codegen, plain pointer signatures); :mod:`.driver` writes the
graph driver (call order, a static arena from :mod:`.memory_plan`, weights as ``const`` arrays).
"""
