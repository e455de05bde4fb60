"""CLI sub-commands: one module each; importing a module registers its command."""

import importlib

# Order here is the order in `tbn-tvm --help`.
for _name in ("demo", "inspect", "compile", "run", "targets", "tune", "train", "bench"):
    importlib.import_module(f"tbn_tvm.commands.{_name}")
