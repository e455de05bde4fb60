"""Run a model on a board over a framed, checksummed UART protocol (host side), or on QEMU's serial port.

Frame (all integers little-endian)::

    0xA5 0x5A | type u8 | seq u8 | length u32 | payload[length] | crc32 u32

``crc32`` is CRC-32/IEEE (``zlib.crc32``) over ``type``, ``seq``, ``length`` and the payload.
A receiver hunts for the two sync bytes, so noise before a frame (a boot banner) is skipped.

==========  =====  ======================================================================
type        value  payload
==========  =====  ======================================================================
HELLO       0x01   (host -> device) empty
RUN         0x02   (host -> device) ``input_size`` float32: one sample
INFO        0x81   u32 protocol (1), u32 input_size, u32 output_size, u32 arena_bytes
RESULT      0x82   i32 status of ``tbn_model_run``, u32 DWT cycles (0 when not available,
                   e.g. under QEMU), ``output_size`` float32
ERROR       0xE0   u32 code (1 bad checksum, 2 bad length, 3 unknown type), ASCII text
FAULT       0xEF   u32 ipsr, pc, lr, cfsr, hfsr, mmfar, bfar: the device crashed
==========  =====  ======================================================================

A reply carries the ``seq`` of its request; the host ignores replies to older requests (the
HELLO handshake is repeated until the device answers, so a board that is still booting is
fine).  Every request must be answered within ``timeout_s``; an error, a fault, a bad checksum
or silence raises :class:`~tbn_tvm.errors.TBNError`.  The device side is
``templates/tbn_uart_server.c`` behind a three-function HAL (``templates/tbn_uart.h``).

``port`` is anything ``serial.serial_for_url`` opens: ``/dev/ttyACM0``, ``COM3``,
``socket://127.0.0.1:4321``.  :func:`run_uart_qemu` runs the same host code against a UART
firmware on QEMU, whose serial port is a loopback TCP server standing in for the board.

>>> y, stats = run_uart("/dev/ttyACM0", x)                 # doctest: +SKIP
>>> stats["cycles"]["mean"]                                # doctest: +SKIP
48210.0
"""

from __future__ import annotations

import socket
import struct
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tbn_tvm import progress
from tbn_tvm.errors import TBNError
from tbn_tvm.outdir import scratch_dir
from tbn_tvm.targets.cortex_m.boards import Board, get_board
from tbn_tvm.targets.cortex_m.firmware import firmware_info
from tbn_tvm.targets.cortex_m.qemu import lockup_error, qemu_machine_args
from tbn_tvm.targets.cortex_m.samples import as_batch
from tbn_tvm.targets.cortex_m.toolchain import find_qemu

SYNC = b"\xa5\x5a"
HELLO, RUN, INFO, RESULT, ERROR, FAULT = 0x01, 0x02, 0x81, 0x82, 0xE0, 0xEF
PROTOCOL = 1
#: Seconds a request may wait for its answer when no timeout is given.
DEFAULT_TIMEOUT_S = 10.0
MAX_PAYLOAD = 64 * 1024 * 1024
_HEADER = struct.Struct("<BBI")
_FAULT_NAMES = {2: "NMI", 3: "HardFault", 4: "MemManage", 5: "BusFault", 6: "UsageFault"}


@dataclass(frozen=True)
class DeviceInfo:
    """The INFO reply: what the firmware on the device serves."""

    protocol: int
    input_size: int
    output_size: int
    arena_bytes: int


def encode_frame(frame_type: int, seq: int, payload: bytes = b"") -> bytes:
    """One frame, ready to write."""
    body = _HEADER.pack(frame_type, seq & 0xFF, len(payload)) + payload
    return SYNC + body + struct.pack("<I", zlib.crc32(body))


def open_port(port: str, baudrate: int = 115200) -> Any:
    """Open a serial port (device path or pyserial URL) with a short read timeout."""
    try:
        import serial
    except ImportError:
        raise TBNError("the UART runner needs pyserial", hint="pip install pyserial") from None
    try:
        return serial.serial_for_url(port, baudrate=baudrate, timeout=0.05, write_timeout=10)
    except (serial.SerialException, ValueError, OSError) as e:
        raise TBNError(f"cannot open {port}: {e}") from None


class UartLink:
    """The host end of the protocol over an open serial port.

    >>> with UartLink(open_port("/dev/ttyACM0")) as link:      # doctest: +SKIP
    ...     info = link.hello(timeout_s=5)
    ...     y, status, cycles = link.run(x[0], timeout_s=5)
    """

    def __init__(self, port: Any) -> None:
        self.port = port
        self.seq = 0

    def __enter__(self) -> UartLink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.port.close()
        except Exception:  # noqa: BLE001 - closing a dead link must not hide the real error
            pass

    def hello(self, timeout_s: float = 10.0, retry_s: float = 0.5) -> DeviceInfo:
        """Handshake: send HELLO every ``retry_s`` until the device answers with INFO."""
        deadline = time.monotonic() + timeout_s
        while True:
            seq = self._send(HELLO)
            try:
                payload = self._reply(INFO, seq, min(deadline, time.monotonic() + retry_s))
                break
            except _Silence:
                if time.monotonic() >= deadline:
                    raise TBNError(
                        f"no answer from the device within {timeout_s:g} s",
                        hint="is the tbn-tvm UART firmware flashed, and the port and baud rate right?",
                    ) from None
        if len(payload) != 16:
            raise TBNError(f"malformed INFO frame from the device ({len(payload)} bytes)")
        info = DeviceInfo(*struct.unpack("<4I", payload))
        if info.protocol != PROTOCOL:
            raise TBNError(f"the device speaks protocol {info.protocol}, this tbn-tvm speaks {PROTOCOL}")
        return info

    def run(self, sample: np.ndarray, timeout_s: float = 10.0) -> tuple[np.ndarray, int, int]:
        """Send one sample; returns ``(outputs, status, cycles)``."""
        seq = self._send(RUN, np.ascontiguousarray(sample, dtype="<f4").tobytes())
        try:
            payload = self._reply(RESULT, seq, time.monotonic() + timeout_s)
        except _Silence:
            raise TBNError(
                f"no answer from the device within {timeout_s:g} s (hang or infinite loop?)",
                hint="raise the timeout if the model is just slow",
            ) from None
        if len(payload) < 8 or len(payload) % 4:
            raise TBNError(f"malformed RESULT frame from the device ({len(payload)} bytes)")
        status, cycles = struct.unpack_from("<iI", payload)
        return np.frombuffer(payload, dtype="<f4", offset=8).astype(np.float32), status, cycles

    # -- framing ---------------------------------------------------------------------------

    def _send(self, frame_type: int, payload: bytes = b"") -> int:
        self.seq = (self.seq + 1) & 0xFF
        try:
            self.port.write(encode_frame(frame_type, self.seq, payload))
            self.port.flush()
        except Exception as e:  # noqa: BLE001 - pyserial raises several unrelated types
            raise TBNError(f"cannot write to the device: {e}") from None
        return self.seq

    def _reply(self, expected: int, seq: int, deadline: float) -> bytes:
        """Payload of the reply of type ``expected`` to request ``seq``; errors and faults raise."""
        while True:
            frame_type, frame_seq, payload = self.read_frame(deadline)
            if frame_type == FAULT:
                raise TBNError(
                    f"the device crashed: {_describe_fault(payload)}", hint="a bug in the model's C code?"
                )
            if frame_seq != seq:
                continue  # a late answer to an earlier request (e.g. a repeated HELLO)
            if frame_type == ERROR:
                code = struct.unpack_from("<I", payload)[0] if len(payload) >= 4 else 0
                text = payload[4:].decode("ascii", "replace")
                raise TBNError(f"the device rejected a request: {text} (code {code})")
            if frame_type != expected:
                raise TBNError(f"unexpected frame type 0x{frame_type:02x} from the device")
            return payload

    def read_frame(self, deadline: float) -> tuple[int, int, bytes]:
        """The next valid frame ``(type, seq, payload)``; raises ``_Silence`` at the deadline."""
        previous = b""
        while True:  # hunt for the sync bytes
            byte = self._read(1, deadline)
            if previous == SYNC[:1] and byte == SYNC[1:]:
                break
            previous = byte
        head = self._read(_HEADER.size, deadline)
        frame_type, seq, length = _HEADER.unpack(head)
        if length > MAX_PAYLOAD:
            raise TBNError(f"garbled frame from the device (length {length})", hint="wrong baud rate?")
        payload = self._read(length, deadline)
        (crc,) = struct.unpack("<I", self._read(4, deadline))
        if zlib.crc32(head + payload) != crc:
            raise TBNError("bad checksum in a frame from the device", hint="noisy line or wrong baud rate?")
        return frame_type, seq, payload

    def _read(self, n: int, deadline: float) -> bytes:
        buf = b""
        while len(buf) < n:
            if time.monotonic() >= deadline:
                raise _Silence
            try:
                chunk = self.port.read(n - len(buf))
            except Exception as e:  # noqa: BLE001 - serial.SerialException, OSError, ...
                raise TBNError(f"lost the connection to the device: {e}") from None
            buf += chunk
        return buf


class _Silence(Exception):
    """No complete frame before the deadline."""


def run_uart(
    port: str,
    inputs: np.ndarray,
    output_size: int | None = None,
    *,
    baudrate: int = 115200,
    timeout_s: float | None = None,
    total_timeout_s: float | None = None,
) -> tuple[np.ndarray, dict]:
    """Run every sample of ``inputs`` on the device at ``port``.

    Returns ``(outputs[N, output_size] float32, stats)``; ``stats["cycles"]`` holds the DWT
    cycle counts per inference when the device measures them (real boards), else ``None``.
    ``timeout_s`` bounds the handshake and each sample's request (seconds; ``None``:
    :data:`DEFAULT_TIMEOUT_S`), ``total_timeout_s`` the whole run (``None``: no bound).  A
    device that stops answering raises :class:`TBNError` naming the sample (silence past the
    limit, or a lost connection).  Long runs show a progress bar (:mod:`tbn_tvm.progress`).
    """
    with UartLink(open_port(port, baudrate)) as link:
        return _serve_all(link, port, inputs, output_size, timeout_s, total_timeout_s)


def _serve_all(
    link: UartLink,
    port: str,
    inputs: np.ndarray,
    output_size: int | None,
    timeout_s: float | None,
    total_timeout_s: float | None = None,
) -> tuple[np.ndarray, dict]:
    from tbn_tvm.targets.cortex_m.qemu import _limits

    total_timeout_s, per_sample = _limits(total_timeout_s, timeout_s)
    if timeout_s is None:
        per_sample = DEFAULT_TIMEOUT_S
    t0 = time.monotonic()
    info = link.hello(per_sample if total_timeout_s is None else min(per_sample, total_timeout_s))
    if output_size is not None and output_size != info.output_size:
        raise TBNError(
            f"the device's model produces {info.output_size} outputs per sample, not {output_size}"
        )
    x = as_batch(inputs, info.input_size)
    outputs = np.empty((x.shape[0], info.output_size), dtype=np.float32)
    cycles = []
    n = x.shape[0]
    with progress.bar(n, f"board {port}") as update:
        for i, sample in enumerate(x):
            limit = per_sample
            if total_timeout_s is not None:
                limit = min(limit, total_timeout_s - (time.monotonic() - t0))
            try:
                if limit <= 0:
                    raise _Silence
                y, status, n_cycles = link.run(sample, limit)
            except (TBNError, _Silence) as e:
                if isinstance(e, _Silence) or ("no answer" in e.message and limit < per_sample):
                    raise TBNError(  # the whole-run limit ran out
                        f"the run did not finish within {total_timeout_s:g} s; {i} of {n} samples done",
                        hint="raise the whole-run limit (--timeout, run option timeout) or leave it unset",
                    ) from None
                hint = e.hint
                if "no answer" in e.message:
                    hint = "if the model is just slow, raise --timeout-per-sample (run option timeout_per_sample)"
                raise TBNError(f"sample {i} of {n}: {e.message}", hint=hint) from None
            if status != 0:
                raise TBNError(f"the model failed: tbn_model_run returned {status} on sample {i}")
            if y.size != info.output_size:
                raise TBNError(f"the device sent {y.size} outputs, expected {info.output_size}")
            outputs[i] = y
            cycles.append(n_cycles)
            update(i + 1)
    stats: dict = {
        "port": port,
        "samples": int(x.shape[0]),
        "wall_s": round(time.monotonic() - t0, 4),
        "device": {
            "input_size": info.input_size,
            "output_size": info.output_size,
            "arena_bytes": info.arena_bytes,
        },
        "cycles": None,
    }
    if any(cycles):
        stats["cycles"] = {
            "per_inference": cycles,
            "mean": float(np.mean(cycles)),
            "min": min(cycles),
            "max": max(cycles),
        }
    return outputs, stats


def run_uart_qemu(
    elf: str | Path,
    board: str | Board,
    inputs: np.ndarray,
    output_size: int | None = None,
    *,
    timeout_s: float | None = None,
) -> tuple[np.ndarray, dict]:
    """:func:`run_uart` against a UART firmware on QEMU, whose serial port stands in for a board.

    ``timeout_s`` bounds QEMU's start and each request (``None``: :data:`DEFAULT_TIMEOUT_S`).
    QEMU's UART is a TCP server on 127.0.0.1 that waits for the host to connect before the
    guest starts, so no byte is lost.  A crash or lockup of QEMU is reported with its message.
    """
    timeout_s = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    board = get_board(board)
    qemu_machine_args(board)  # refuses a physical board
    elf = Path(elf).resolve()
    if firmware_info(elf).mode != "uart":
        raise TBNError(f"{elf.name} is not a UART firmware", hint="build it with mode='uart'")
    qemu = find_qemu()
    with scratch_dir("tbn-uart-") as tmp_name:
        log_path = Path(tmp_name) / "qemu.log"
        proc, link, url = _start_qemu_serial(qemu, board, elf, log_path, timeout_s)
        try:
            with link:
                outputs, stats = _serve_all(link, url, inputs, output_size, timeout_s)
        except TBNError as e:
            if proc.poll() is not None:  # QEMU itself died: its message says more than a timeout
                raise _qemu_died(proc.returncode, log_path, board) from None
            raise e from None
        finally:
            _stop(proc)
    stats.update(board=board.name, machine=board.qemu_machine)
    return outputs, stats


def _start_qemu_serial(
    qemu: str, board: Board, elf: Path, log_path: Path, timeout_s: float
) -> tuple[subprocess.Popen, UartLink, str]:
    for _attempt in range(5):
        port_number = _free_tcp_port()
        url = f"socket://127.0.0.1:{port_number}"
        cmd = [
            qemu,
            *qemu_machine_args(board),
            "-serial",
            f"tcp:127.0.0.1:{port_number},server=on,wait=on",
            "-kernel",
            str(elf),
        ]
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                return proc, UartLink(open_port(url)), url
            except TBNError:
                time.sleep(0.05)  # QEMU is not listening yet
        still_running = proc.poll() is None
        _stop(proc)
        if still_running:
            raise TBNError(f"QEMU did not open its serial port within {timeout_s:g} s")
        if "in use" not in log_path.read_text(errors="replace"):  # only a lost race for the port is retried
            raise _qemu_died(proc.returncode, log_path, board)
    raise TBNError("could not find a free TCP port on 127.0.0.1 for QEMU's serial port")


def _free_tcp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _qemu_died(returncode: int | None, log_path: Path, board: Board) -> TBNError:
    text = log_path.read_text(errors="replace") if log_path.exists() else ""
    if "Lockup" in text:
        return lockup_error(text, board)
    tail = " | ".join(text.strip().splitlines()[-3:])
    return TBNError(f"QEMU exited with status {returncode}: {tail or 'no message'}")


def _describe_fault(payload: bytes) -> str:
    if len(payload) != 28:
        return f"malformed FAULT frame ({len(payload)} bytes)"
    ipsr, pc, lr, cfsr, hfsr, _mmfar, bfar = struct.unpack("<7I", payload)
    name = _FAULT_NAMES.get(ipsr & 0x1FF, f"exception {ipsr & 0x1FF}")
    return f"fault {name} pc=0x{pc:08x} lr=0x{lr:08x} cfsr=0x{cfsr:08x} hfsr=0x{hfsr:08x} bfar=0x{bfar:08x}"
