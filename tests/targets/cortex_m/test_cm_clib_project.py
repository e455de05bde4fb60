"""The generated C library drops into a user's own project (issue 14).

A small user project of its own -- ``main.c`` calling ``tbn_model_run`` -- is built with
arm-none-eabi-gcc and ``-Wall -Wextra -Werror`` twice: with GNU make through ``lib/tbn_model.mk``
and with CMake through ``add_subdirectory(lib)``, each exactly as the fragment's comment says.
The model ends in a Softmax, so its kernels call ``expf``: the fragments must link libm.  Both
builds must leave ``OUT_DIR`` as compile wrote it (objects go to the user's build folder).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import onnx
import onnx_zoo as zoo
import pytest
from onnx import helper

import tbn_tvm

pytestmark = pytest.mark.qemu  # needs arm-none-eabi-gcc (skipped with the reason where absent)

CPU_FLAGS = "-mcpu=cortex-m4 -mthumb -mfloat-abi=hard -mfpu=fpv4-sp-d16"

MAIN_C = """\
#include "model.h"

static float input[TBN_MODEL_INPUT_SIZE];
static float output[TBN_MODEL_OUTPUT_SIZE];

int main(void)
{
    for (unsigned i = 0; i < TBN_MODEL_INPUT_SIZE; i++)
        input[i] = (float)i / (float)TBN_MODEL_INPUT_SIZE;
    if (tbn_model_run(input, output) != 0)
        return 1;
    return output[0] > 0.5f;
}
"""

MAKEFILE = f"""\
CC := {{gcc}}
CFLAGS := {CPU_FLAGS} -O2 -Wall -Wextra -Werror
LDFLAGS := {CPU_FLAGS} --specs=nosys.specs -Wl,--gc-sections
include {{lib}}/tbn_model.mk
CFLAGS += $(TBN_CFLAGS)
LDLIBS += $(TBN_LDLIBS)
OBJS := build/main.o $(TBN_OBJS)

app.elf: $(OBJS)
\t$(CC) $(LDFLAGS) $^ $(LDLIBS) -o $@

build/main.o: main.c
\t@mkdir -p build
\t$(CC) $(CFLAGS) -c $< -o $@
"""

CMAKELISTS = """\
cmake_minimum_required(VERSION 3.13)
project(user_app C)
add_compile_options(-Wall -Wextra -Werror)
add_subdirectory(${TBN_LIB} tbn_model)
add_executable(app.elf main.c)
target_link_libraries(app.elf PRIVATE tbn_model)
target_link_options(app.elf PRIVATE -Wl,--gc-sections)
"""

TOOLCHAIN = f"""\
set(CMAKE_SYSTEM_NAME Generic)
set(CMAKE_SYSTEM_PROCESSOR arm)
set(CMAKE_C_COMPILER {{gcc}})
set(CMAKE_TRY_COMPILE_TARGET_TYPE STATIC_LIBRARY)
set(CMAKE_C_FLAGS_INIT "{CPU_FLAGS}")
set(CMAKE_EXE_LINKER_FLAGS_INIT "--specs=nosys.specs")
"""


def _softmax_mlp() -> onnx.ModelProto:
    model = zoo.mlp().model
    out = model.graph.output[0].name
    model.graph.node[-1].output[0] = "logits"
    model.graph.node.append(helper.make_node("Softmax", ["logits"], [out], axis=-1))
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def library(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("clib") / "out"
    tbn_tvm.compile(_softmax_mlp(), board="mps2-an386", measure=False).save(out)
    assert {"tbn_model.mk", "CMakeLists.txt", "model.h"} <= {p.name for p in (out / "lib").iterdir()}
    return out


def _gcc() -> str:
    from tbn_tvm.targets.cortex_m.toolchain import find_gcc

    return find_gcc()


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _check_elf(elf: Path) -> None:
    nm = Path(_gcc()).with_name(Path(_gcc()).name.replace("gcc", "nm"))
    symbols = subprocess.run([str(nm), str(elf)], capture_output=True, text=True, check=True).stdout
    defined = {line.split()[-1] for line in symbols.splitlines() if len(line.split()) == 3}
    assert {"main", "tbn_model_run", "expf"} <= defined  # the model, and libm's expf linked in


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"


@pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")
def test_make_project_with_werror_links(library, tmp_path):
    before = _files(library)
    (tmp_path / "main.c").write_text(MAIN_C)
    (tmp_path / "Makefile").write_text(MAKEFILE.format(gcc=_gcc(), lib=library / "lib"))
    _run(["make"], tmp_path)
    _check_elf(tmp_path / "app.elf")
    assert _files(library) == before, "building with tbn_model.mk wrote into OUT_DIR"


@pytest.mark.skipif(shutil.which("cmake") is None, reason="CMake is not installed")
def test_cmake_project_with_werror_links(library, tmp_path):
    before = _files(library)
    (tmp_path / "main.c").write_text(MAIN_C)
    (tmp_path / "CMakeLists.txt").write_text(CMAKELISTS)
    (tmp_path / "arm.cmake").write_text(TOOLCHAIN.format(gcc=_gcc()))
    _run(
        [
            "cmake",
            "-S",
            ".",
            "-B",
            "build",
            "-DCMAKE_TOOLCHAIN_FILE=arm.cmake",
            f"-DTBN_LIB={library / 'lib'}",
        ],
        tmp_path,
    )
    _run(["cmake", "--build", "build"], tmp_path)
    _check_elf(tmp_path / "build" / "app.elf")
    assert _files(library) == before, "building with lib/CMakeLists.txt wrote into OUT_DIR"


@pytest.fixture(scope="module")
def libraries(library, tmp_path_factory) -> list[Path]:
    """The Softmax MLP's library, a tiled CNN's (conv kernels) and a dense conv-BN build's."""
    root = tmp_path_factory.mktemp("plain")
    outs = [library]
    for name, options in (("cnn", {}), ("conv_bn", {"compress": False})):
        tbn_tvm.compile(getattr(zoo, name)().model, board="mps2-an386", measure=False, **options).save(
            root / name
        )
        outs.append(root / name)
    return outs


def test_every_generated_source_builds_as_a_plain_source_with_werror(libraries, tmp_path):
    """Each generated .c file, added to a project as it is (STM32CubeIDE, Keil, MCUXpresso,
    PlatformIO do so: no tbn_model.mk), builds warning-free with -Wall -Wextra -Werror and
    -Wconversion under arm-none-eabi-gcc and the host's gcc/clang (TVM's kernels once tripped
    -Wextra on their unused packed-call parameters)."""
    compilers = [[_gcc(), *CPU_FLAGS.split()]] + [[cc] for cc in ("gcc", "clang") if shutil.which(cc)]
    flags = ["-O2", "-Wall", "-Wextra", "-Werror", "-Wconversion", "-Wsign-conversion"]
    sources = [c for out in libraries for c in sorted((out / "lib").glob("*.c"))]
    assert {c.name for c in sources} == {"kernels.c", "model.c", "weights.c"}
    for cc in compilers:
        for src in sources:
            proc = subprocess.run(
                [*cc, *flags, "-c", str(src), "-o", str(tmp_path / "x.o")], capture_output=True, text=True
            )
            assert proc.returncode == 0 and not proc.stderr, f"{cc[0]} {src}:\n{proc.stderr[-3000:]}"
