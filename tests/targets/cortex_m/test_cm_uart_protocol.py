"""The host side of the UART protocol against a scripted fake device on a loopback socket.

The fake device builds its frames independently (struct + zlib), so these tests check the
host against the protocol as documented, including the failure paths a real line produces.
"""

from __future__ import annotations

import socket
import struct
import threading
import zlib
from collections.abc import Callable

import numpy as np
import pytest

from tbn_tvm.errors import TBNError
from tbn_tvm.targets.cortex_m import run_uart
from tbn_tvm.targets.cortex_m.uart import encode_frame

pytest.importorskip("serial")

HELLO, RUN, INFO, RESULT, ERROR, FAULT = 0x01, 0x02, 0x81, 0x82, 0xE0, 0xEF


def frame(kind: int, seq: int, payload: bytes = b"", crc: int | None = None) -> bytes:
    body = struct.pack("<BBI", kind, seq, len(payload)) + payload
    return b"\xa5\x5a" + body + struct.pack("<I", zlib.crc32(body) if crc is None else crc)


def info(seq: int) -> bytes:
    return frame(INFO, seq, struct.pack("<4I", 1, 3, 2, 128))


def result(seq: int, x: np.ndarray, status: int = 0, cycles: int = 0) -> bytes:
    y = np.array([x.sum(), x.max()], "<f4")
    return frame(RESULT, seq, struct.pack("<iI", status, cycles) + y.tobytes())


class FakeDevice:
    """Serves one connection; ``respond(kind, seq, payload, n)`` returns the bytes to send back."""

    def __init__(self, respond: Callable[[int, int, bytes, int], bytes]) -> None:
        self.respond = respond
        self.requests: list[tuple[int, int, bytes]] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"socket://127.0.0.1:{self.server.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        buf = b""
        with conn:
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while (start := buf.find(b"\xa5\x5a")) >= 0 and len(buf) >= start + 8:
                    kind, seq, length = struct.unpack_from("<BBI", buf, start + 2)
                    end = start + 8 + length + 4
                    if len(buf) < end:
                        break
                    payload = buf[start + 8 : end - 4]
                    assert struct.unpack("<I", buf[end - 4 : end])[0] == zlib.crc32(buf[start + 2 : end - 4])
                    buf = buf[end:]
                    self.requests.append((kind, seq, payload))
                    conn.sendall(self.respond(kind, seq, payload, len(self.requests)))

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def device():
    made: list[FakeDevice] = []

    def make(respond: Callable[[int, int, bytes, int], bytes]) -> FakeDevice:
        made.append(FakeDevice(respond))
        return made[-1]

    yield make
    for d in made:
        d.close()


def well_behaved(kind: int, seq: int, payload: bytes, n: int) -> bytes:
    if kind == HELLO:
        return info(seq)
    return result(seq, np.frombuffer(payload, "<f4"), cycles=1000 + n)


X = np.arange(12, dtype=np.float32).reshape(4, 3)


def test_encode_frame_layout() -> None:
    assert encode_frame(RUN, 0x17, b"\x01\x02") == frame(RUN, 0x17, b"\x01\x02")
    assert encode_frame(HELLO, 300)[3] == 300 & 0xFF  # seq wraps at a byte


def test_round_trip_with_cycles(device) -> None:
    d = device(well_behaved)
    y, stats = run_uart(d.url, X, output_size=2, timeout_s=2)
    np.testing.assert_array_equal(y, np.stack([X.sum(1), X.max(1)], 1))
    assert [k for k, _, _ in d.requests] == [HELLO, RUN, RUN, RUN, RUN]
    assert all(
        np.frombuffer(p, "<f4").tolist() == X[i].tolist() for i, (_, _, p) in enumerate(d.requests[1:])
    )
    assert stats["cycles"]["per_inference"] == [1002, 1003, 1004, 1005] and stats["samples"] == 4
    assert stats["device"] == {"input_size": 3, "output_size": 2, "arena_bytes": 128}


def test_noise_stale_replies_and_a_late_boot_are_tolerated(device) -> None:
    def respond(kind: int, seq: int, payload: bytes, n: int) -> bytes:
        if kind == HELLO and n == 1:
            return b""  # still booting: the host repeats HELLO
        if kind == HELLO:
            return b"boot banner \xa5\xa5\r\n" + info(seq - 1) + info(seq)  # noise, a stale INFO, the reply
        return frame(ERROR, seq - 1, b"\x01\0\0\0old") + well_behaved(kind, seq, payload, n)

    y, _ = run_uart(device(respond).url, X[:2], timeout_s=3)
    np.testing.assert_array_equal(y[:, 0], X[:2].sum(1))


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (lambda seq, x: result(seq, x)[:-1] + b"\0", "bad checksum in a frame from the device"),
        (
            lambda seq, x: frame(ERROR, seq, struct.pack("<I", 2) + b"RUN payload is not one input sample"),
            r"rejected a request: RUN payload is not one input sample \(code 2\)",
        ),
        (
            lambda seq, x: frame(FAULT, 0, struct.pack("<7I", 3, 0x1234, 0x5679, 0x10000, 0x40000000, 0, 0)),
            "the device crashed: fault HardFault pc=0x00001234 lr=0x00005679 cfsr=0x00010000",
        ),
        (lambda seq, x: result(seq, x, status=-3), "tbn_model_run returned -3 on sample 0"),
        (lambda seq, x: b"", r"no answer from the device within 0.4 s \(hang or infinite loop\?\)"),
        (lambda seq, x: frame(INFO, seq, b"\0" * 16), "unexpected frame type 0x81"),
    ],
    ids=["checksum", "device-error", "fault", "status", "silence", "wrong-type"],
)
def test_failures_raise_one_line_errors(device, reply, message: str) -> None:
    def respond(kind: int, seq: int, payload: bytes, n: int) -> bytes:
        return info(seq) if kind == HELLO else reply(seq, np.frombuffer(payload, "<f4"))

    with pytest.raises(TBNError, match=message):
        run_uart(device(respond).url, X, timeout_s=0.4)


def test_mismatched_sizes_are_refused(device) -> None:
    with pytest.raises(TBNError, match="do not hold 3 values per sample"):
        run_uart(device(well_behaved).url, np.zeros((2, 5), np.float32), timeout_s=1)
    with pytest.raises(TBNError, match="produces 2 outputs per sample, not 7"):
        run_uart(device(well_behaved).url, X, output_size=7, timeout_s=1)


def test_no_device_at_all(device) -> None:
    with pytest.raises(TBNError, match="no answer from the device within 0.3 s"):
        run_uart(device(lambda *a: b"").url, X, timeout_s=0.3)
    with pytest.raises(TBNError, match="cannot open /nonexistent/ttyACM9"):
        run_uart("/nonexistent/ttyACM9", X)


def test_a_silent_sample_is_named_with_the_option_to_raise(device) -> None:
    def respond(kind: int, seq: int, payload: bytes, n: int) -> bytes:
        return b"" if n == 4 else well_behaved(kind, seq, payload, n)  # HELLO, 2 samples, then silence

    with pytest.raises(TBNError) as e:
        run_uart(device(respond).url, X, timeout_s=0.4)
    assert e.value.message.startswith("sample 2 of 4: no answer from the device within 0.4 s")
    assert "--timeout-per-sample" in str(e.value)


def test_the_whole_run_limit_bounds_slow_samples(device) -> None:
    import time

    def respond(kind: int, seq: int, payload: bytes, n: int) -> bytes:
        if kind != HELLO:
            time.sleep(0.3)  # each sample well within its own limit
        return well_behaved(kind, seq, payload, n)

    y, _ = run_uart(device(respond).url, X, timeout_s=2)  # no whole-run limit: 1.2 s is fine
    assert y.shape == (4, 2)
    with pytest.raises(TBNError) as e:
        run_uart(device(respond).url, X, timeout_s=2, total_timeout_s=0.5)
    assert "did not finish within 0.5 s" in e.value.message and "of 4 samples done" in e.value.message
    assert "--timeout" in str(e.value)
