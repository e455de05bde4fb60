"""CLI sub-commands: one module each; importing a module registers its command."""

import importlib

# Order here is the order in `tbn-tvm --help`.
for _name in ("demo", "inspect", "compile", "run", "train", "tune", "bench"):
    try:
        importlib.import_module(f"tbn_tvm.commands.{_name}")
    except ModuleNotFoundError as e:  # a command module not written yet
        if e.name != f"tbn_tvm.commands.{_name}":
            raise
