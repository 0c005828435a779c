"""Owned output folders (maskgen.outputs) and the build on top of them: a user's files are never
deleted or overwritten, two runs never share a folder, deletes never follow a link."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from maskgen.errors import OutputError
from maskgen.outputs import (
    LOCK,
    MARKER,
    claim,
    is_owned,
    is_tmp_of,
    remove_owned,
    replacing,
    unique_tmp,
)


def _user_tars(folder: Path, n: int = 3) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    files = {}
    for i in range(n):
        data = os.urandom(700)
        (folder / f"train-{i:06d}.tar").write_bytes(data)
        files[f"train-{i:06d}.tar"] = data
    return files


def test_claim_writes_marker_and_locks(tmp_path: Path) -> None:
    out = tmp_path / "a" / "out"
    with claim(out, "build") as c:
        assert c.out == out.resolve() and c.held
        marker = json.loads((out / MARKER).read_text())
        assert marker["tool"] == "maskgen" and marker["kind"] == "build" and marker["created"]
        assert is_owned(out)
        assert (out / LOCK).read_text().strip() == str(os.getpid())
        with pytest.raises(OutputError, match=rf"in use by another maskgen run \(pid {os.getpid()}\)"):
            claim(out, "build")
    assert not c.held
    with claim(out, "build", mode="overwrite"):  # released: the next run gets it
        pass


@pytest.mark.parametrize("mode", ["resume", "overwrite"])
def test_user_folder_refused_untouched(tmp_path: Path, mode: str) -> None:
    user = tmp_path / "mine"
    files = _user_tars(user / "shards")
    (user / "notes.txt").write_text("keep me")
    with pytest.raises(OutputError) as e:
        claim(user, "build", mode=mode)
    msg = str(e.value)
    assert "\n" not in msg and "not made by maskgen" in msg and str(user) in msg
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt", "shards"]  # no marker, no lock
    assert {p.name: p.read_bytes() for p in (user / "shards").iterdir()} == files
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match="not a folder"):
        claim(tmp_path / "afile", "build")
    # an empty folder is claimed; a fake marker (a link to a maskgen marker) is not a marker
    with claim(tmp_path / "empty", "build"):
        pass
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / MARKER).symlink_to(tmp_path / "empty" / MARKER)
    assert not is_owned(linked)
    with pytest.raises(OutputError, match="not made by maskgen"):
        claim(linked, "build")


def test_other_kind_refused(tmp_path: Path) -> None:
    with claim(tmp_path / "o", "audit"):
        pass
    with pytest.raises(OutputError, match="holds maskgen audit output"):
        claim(tmp_path / "o", "build")
    with claim(tmp_path / "o", "build", accept=["audit"]):
        pass


def test_second_process_sees_pid_and_kill_releases(tmp_path: Path) -> None:
    """A real second process holds the lock; killing it (-9) frees the folder."""
    out = tmp_path / "o"
    code = textwrap.dedent(f"""
        import sys, time
        from maskgen.outputs import claim
        c = claim({str(out)!r}, "build")
        print("held", flush=True)
        time.sleep(120)
    """)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "held"
        with pytest.raises(OutputError) as e:
            claim(out, "build")
        assert str(e.value) == f"{out.resolve()} is in use by another maskgen run (pid {p.pid})"
    finally:
        p.kill()
        p.wait()
    with claim(out, "build") as c:
        assert c.held


def test_remove_owned_never_follows_links(tmp_path: Path) -> None:
    user = tmp_path / "user_tars"
    files = _user_tars(user)
    secret = tmp_path / "secret.txt"
    secret.write_text("precious")
    out = tmp_path / "o"
    with claim(out, "build") as c:
        (out / "shards").symlink_to(user)  # a symlinked shards/ pointing at the user's tars
        (out / "stats").mkdir()
        (out / "stats" / "a.json").write_text("{}")
        (out / "stats" / "link.json").symlink_to(secret)
        removed = c.remove(["shards/train-000000.tar", "shards/train-000001.tar", "stats/a.json",
                            "stats/link.json", "stats/missing.json", "shards"])
        assert removed == ["stats/a.json", "stats/link.json", "shards"]  # links removed as links
        assert {p.name: p.read_bytes() for p in user.iterdir()} == files  # targets survive
        assert secret.read_text() == "precious"
        for bad in ["../secret.txt", str(secret), "stats/../../secret.txt", ""]:
            with pytest.raises(ValueError):
                c.remove([bad])
        assert c.remove([MARKER, LOCK]) == [] and is_owned(out)
    with pytest.raises(OutputError, match="not made by maskgen"):
        remove_owned(user, ["train-000000.tar"])
    assert len(list(user.iterdir())) == 3


def test_unique_tmp_per_process(tmp_path: Path) -> None:
    final = tmp_path / "train-000003.tar"
    a = unique_tmp(final)
    other = subprocess.run([sys.executable, "-c", f"from maskgen.outputs import unique_tmp; print(unique_tmp({str(final)!r}))"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert a != Path(other) and a.parent == final.parent
    assert is_tmp_of(a.name, final.name) and is_tmp_of(Path(other).name, final.name)
    assert not is_tmp_of("train-000003.tar.backup", final.name) and not is_tmp_of(a.name, "train-000004.tar")
    with replacing(final) as tmp:
        tmp.write_bytes(b"x")
    assert final.read_bytes() == b"x" and not list(tmp_path.glob("*.tmp"))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as a user who can write a read-only folder")
        with pytest.raises(OutputError) as e:
            with replacing(ro / "dataset.json") as tmp:
                tmp.write_bytes(b"{}")
        assert str(e.value) == f"cannot write {ro / 'dataset.json'}: Permission denied (rerun to resume)"
    finally:
        ro.chmod(0o700)


def test_lock_free_after_kill_9_of_holder(tmp_path: Path) -> None:
    out = tmp_path / "o"
    p = subprocess.Popen([sys.executable, "-c", f"from maskgen.outputs import claim; import time; c = claim({str(out)!r}, 'build'); print(1, flush=True); time.sleep(60)"],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "1"
    os.kill(p.pid, 9)
    p.wait()
    t = time.time()
    with claim(out, "build"):
        assert time.time() - t < 1
