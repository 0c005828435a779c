"""insightface ``.bin`` files are data, never code: real malicious pickles are refused by the
reader and by ``maskgen eval --bin``; real ``.bin`` files of every pickle protocol still read."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest

import faults
from maskgen.eval.binfile import BinFileError, read_bin, write_bin
from maskgen.errors import InputError

PAYLOADS = ["os_system_in_bins", "os_system_whole", "eval_in_bins", "eval_whole",
            "subprocess_in_bins", "subprocess_whole", "numpy_object_array"]


def _jpeg(seed: int) -> bytes:
    img = np.random.default_rng(seed).integers(0, 255, (112, 112, 3), dtype=np.uint8)
    return cv2.imencode(".jpg", img)[1].tobytes()


@pytest.mark.parametrize("kind", ["os_system_whole", "eval_in_bins", "subprocess_in_bins"])
def test_the_payloads_are_real(tmp_path: Path, kind: str) -> None:
    """A plain pickle.load of these files runs the attacker's command (in a child process)."""
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(faults.malicious_pickles(marker)[kind])
    subprocess.run([sys.executable, "-c", f"import pickle; pickle.load(open({str(evil)!r}, 'rb'), encoding='bytes')"],
                   capture_output=True, timeout=60)
    assert marker.exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_reader_refuses_malicious_pickles(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(faults.malicious_pickles(marker)[kind])
    with pytest.raises(BinFileError, match="refused") as err:
        read_bin(evil)
    assert isinstance(err.value, InputError) and str(evil) in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["os_system_in_bins", "eval_whole", "subprocess_in_bins", "numpy_object_array"])
def test_eval_bin_refuses_malicious_pickles(tmp_path: Path, kind: str) -> None:
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.bin"
    evil.write_bytes(faults.malicious_pickles(marker)[kind])
    res = faults.run_maskgen(["eval", "--bin", evil, "-o", tmp_path / "ev"], cwd=tmp_path)
    line = faults.error_line(res)
    assert line.startswith(f"Error: {evil}: refused:") and "could run code" in line
    assert not marker.exists()


def test_real_bins_of_every_protocol_read(tmp_path: Path) -> None:
    blobs = [_jpeg(i) for i in range(4)]
    write_bin(tmp_path / "w.bin", blobs, [True, False])
    got, issame = read_bin(tmp_path / "w.bin")
    assert got == blobs and issame.tolist() == [True, False]
    layouts = {
        "bytes": (blobs, [True, False]),
        "numpy": ([np.frombuffer(b, np.uint8) for b in blobs], np.array([True, False])),
        "bytearray": ([bytearray(b) for b in blobs], [np.bool_(True), np.bool_(False)]),
        "tuple": (tuple(blobs), (1, 0)),
    }
    for name, obj in layouts.items():
        for proto in range(pickle.HIGHEST_PROTOCOL + 1):
            p = tmp_path / f"{name}-{proto}.bin"
            with open(p, "wb") as f:
                pickle.dump(obj, f, protocol=proto)
            got, issame = read_bin(p)
            assert got == blobs and issame.tolist() == [True, False], (name, proto)


def test_python2_bin_reads(tmp_path: Path) -> None:
    """Python 2's insightface wrote images as ``str`` (SHORT_BINSTRING): read as bytes."""
    a, b = b"\xff\xd8\xff\xe0jpeg-a", b"\xff\xd8\xff\xe0jpeg-b"
    data = (b"\x80\x02]q\x00(U" + bytes([len(a)]) + a + b"U" + bytes([len(b)]) + b
            + b"e]q\x01\x88a\x86q\x02.")
    (tmp_path / "py2.bin").write_bytes(data)
    assert pickle.loads(data, encoding="bytes") == ([a, b], [True])  # the hand-written file is valid
    got, issame = read_bin(tmp_path / "py2.bin")
    assert got == [a, b] and issame.tolist() == [True]


def test_malformed_bins_get_reasons(tmp_path: Path) -> None:
    blobs = [_jpeg(i) for i in range(2)]
    write_bin(tmp_path / "ok.bin", blobs, [True])
    data = (tmp_path / "ok.bin").read_bytes()
    cases = {
        "truncated.bin": (data[: len(data) // 2], "not a readable insightface .bin"),
        "empty.bin": (b"", "not a readable insightface .bin"),
        "dict.bin": (pickle.dumps({"a": 1}), "expected a pickled (bins, issame) pair"),
        "labels.bin": (pickle.dumps((blobs, ["yes"])), "label 0 is str"),
        "odd.bin": (pickle.dumps((blobs[:1], [True])), "1 images for 1 pairs"),
        "floats.bin": (pickle.dumps(([1.5, 2.5], [True])), "image 0 is a float"),
    }
    for name, (payload, reason) in cases.items():
        (tmp_path / name).write_bytes(payload)
        with pytest.raises(BinFileError, match=re.escape(reason)):
            read_bin(tmp_path / name)


def test_fifo_bin_refused_without_blocking(tmp_path: Path) -> None:
    fifo = faults.make_fifo(tmp_path / "fifo.bin")
    box: list = []

    def read() -> None:
        try:
            read_bin(fifo)
        except BinFileError as exc:
            box.append(str(exc))

    t = threading.Thread(target=read, daemon=True)
    t.start()
    t.join(10)
    assert box == [f"{fifo}: unreadable: not a regular file (a FIFO)"]
