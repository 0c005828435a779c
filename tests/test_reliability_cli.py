"""Every command ends a user error with one ``Error:`` line and a non-zero exit, no traceback.

Run through real subprocesses of the installed ``maskgen`` command: a read-only folder is a
real read-only tmpfs mount (root ignores file modes), an interrupt is a real SIGINT, memory is
exhausted under a real address-space limit.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

import faults
from maskgen.cli import COMMANDS, describe_os_error, one_line


@pytest.fixture(scope="module")
def faces(tmp_path_factory: pytest.TempPathFactory, astronaut: np.ndarray) -> Path:
    """A tiny folder-by-identity dataset: two identities of three real face photos."""
    return faults.face_folder(tmp_path_factory.mktemp("faces"), cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR))


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, faces: Path) -> Path:
    """A real build folder of ``faces`` (for ``card`` and ``train``)."""
    work = tmp_path_factory.mktemp("built")
    res = faults.run_maskgen(["build", faces, "-o", work / "b", "--workers", "1", "--quiet",
                              "--samples-per-shard", "4"], cwd=work)
    assert res.returncode == 0, res.stderr
    return work / "b"


@pytest.fixture
def readonly(tmp_path: Path):
    try:
        with faults.readonly_dir(tmp_path / "ro") as ro:
            yield ro
    except OSError as exc:
        pytest.skip(str(exc))


def test_help_on_the_group_and_every_command(tmp_path: Path) -> None:
    """``-h`` and ``--help`` on the group and every command, each in its own real process."""
    runs = {(name, flag): subprocess.Popen(faults.maskgen_cmd() + ([name] if name else []) + [flag], cwd=tmp_path,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for name in ["", *COMMANDS] for flag in ("-h", "--help")}
    outs = {}
    for (name, flag), proc in runs.items():
        outs[name, flag], err = proc.communicate(timeout=300)
        assert proc.returncode == 0 and outs[name, flag].startswith("Usage: maskgen"), (name, flag, err)
    assert "--debug" in outs["", "-h"] and outs["", "-h"] == outs["", "--help"]


def test_bad_option_is_one_line(tmp_path: Path) -> None:
    res = faults.run_maskgen(["build", "--ratio", "abc"], cwd=tmp_path)
    line = faults.error_line(res)
    assert res.returncode == 2 and "--ratio" in line and "maskgen build -h" in line
    assert faults.error_line(faults.run_maskgen(["nosuchcommand"], cwd=tmp_path)).startswith("Error: No such command")
    assert "Usage:" not in faults.run_maskgen(["--bogus"], cwd=tmp_path).stderr


@pytest.mark.parametrize("command", ["mask", "build", "audit", "card"])
def test_write_into_read_only_folder(command: str, tmp_path: Path, readonly: Path, faces: Path,
                                     request: pytest.FixtureRequest) -> None:
    src = request.getfixturevalue("built") if command == "card" else faces
    args = {"mask": ["mask", faces / "id0", "-o", readonly / "out"],
            "build": ["build", faces, "-o", readonly / "out", "--workers", "1", "--quiet"],
            "audit": ["audit", faces, "-o", readonly / "out"],
            "card": ["card", src, "-o", readonly / "out"]}[command]
    res = faults.run_maskgen(args, cwd=tmp_path)
    line = faults.error_line(res)
    assert line == f"Error: cannot write {readonly / 'out'}: Read-only file system", line
    assert res.returncode == 1


def test_debug_shows_the_traceback(tmp_path: Path, readonly: Path, faces: Path) -> None:
    res = faults.run_maskgen(["--debug", "mask", faces / "id0", "-o", readonly / "out"], cwd=tmp_path)
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    assert res.stderr.strip().splitlines()[-1].startswith("Error: cannot write")
    res = faults.run_maskgen(["mask", faces / "id0", "-o", readonly / "out"], cwd=tmp_path,
                             env={"MASKGEN_DEBUG": "1"})
    assert "Traceback" in res.stderr


def test_train_with_no_matching_shards(tmp_path: Path) -> None:
    res = faults.run_maskgen(["train", "--shards", str(tmp_path / "nothing" / "*.tar"), "--device", "cpu",
                              "-o", tmp_path / "runs"], cwd=tmp_path)
    line = faults.error_line(res)
    assert "no shard matches" in line and "nothing" in line


def test_train_set_with_a_mistyped_value(tmp_path: Path, built: Path) -> None:
    res = faults.run_maskgen(["train", "--set", "lr=abc", "--shards", str(built / "shards" / "*.tar"),
                              "--device", "cpu", "-o", tmp_path / "runs", "--num-workers", "0"],
                             cwd=tmp_path)
    line = faults.error_line(res)
    assert "abc" in line


def test_interrupt_is_one_line_and_exit_130(tmp_path: Path, astronaut: np.ndarray) -> None:
    src = tmp_path / "many"
    src.mkdir()
    bgr = cv2.cvtColor(astronaut, cv2.COLOR_RGB2BGR)
    for i in range(400):
        cv2.imwrite(str(src / f"{i:03d}.jpg"), np.roll(bgr, i, axis=1), [cv2.IMWRITE_JPEG_QUALITY, 60])
    out = tmp_path / "out"
    proc = subprocess.Popen(faults.maskgen_cmd() + ["mask", str(src), "-o", str(out)], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not any(out.glob("*.jpg")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)  # interrupt once real work is under way
        assert proc.poll() is None, "mask finished before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    res = subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)
    assert faults.error_line(res) == "Error: interrupted" and res.returncode == 130


def test_memory_exhausted_is_one_line(tmp_path: Path) -> None:
    """A real MemoryError: ``eval --bin`` of a 1 GiB file under an address-space limit that
    leaves a few hundred MB above what the imports need."""
    big = tmp_path / "huge.bin"
    with open(big, "wb") as f:
        f.truncate(1024**3)
    code = f"""
import resource, sys
import maskgen.cli, maskgen.eval.api, maskgen.masks
vm = int([l for l in open('/proc/self/status') if l.startswith('VmSize')][0].split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + 300 * 2**20, resource.RLIM_INFINITY))
sys.argv = ['maskgen', 'eval', '--bin', {str(big)!r}, '-o', {str(tmp_path / 'ev')!r}]
maskgen.cli.main()
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert faults.error_line(res).startswith("Error: out of memory")


def test_unexpected_error_names_debug(tmp_path: Path) -> None:
    """A bug (here: a command module raising ZeroDivisionError) is one line plus the hint."""
    code = """
import click, maskgen.cli
@click.command('boom')
def boom():
    1 / 0
maskgen.cli.main.add_command(boom)
maskgen.cli.main(['boom'])
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert faults.error_line(res) == ("Error: internal error: ZeroDivisionError: division by zero "
                                      "(rerun with --debug for the traceback)")


def test_messages_stay_on_one_line() -> None:
    name = os.fsdecode(b"bad\nname\xff.jpg")
    msg = describe_os_error(PermissionError(13, "Permission denied", name))
    assert one_line(msg) == "cannot open bad\\nname\\xff.jpg: Permission denied"
    full = describe_os_error(OSError(28, "No space left on device", "out/x.tar"))
    assert full == "cannot write out/x.tar: No space left on device (free some space and rerun)"


def test_closed_stdout_ends_quietly(tmp_path: Path, faces: Path) -> None:
    """``maskgen landmarks DIR | head -c 10``: the reader leaves; no traceback, no error line."""
    many = tmp_path / "many"
    many.mkdir()
    photos = sorted(faces.rglob("*.jpg"))
    for i in range(60):  # 60 JSON lines of ~3 KB: more than a pipe's buffer
        os.link(photos[i % len(photos)], many / f"{i:02d}.jpg")
    proc = subprocess.Popen(faults.maskgen_cmd() + ["landmarks", str(many)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=tmp_path)
    assert proc.stdout.read(10) == b'{"path": "'
    proc.stdout.close()
    _, err = proc.communicate(timeout=120)
    assert b"Traceback" not in err and b"Exception ignored" not in err and b"Error:" not in err, err
