"""maskgen.parallel: a local Ray of its own (never one found on the machine), silent when quiet.

Each case runs in a fresh process with its own ``RAY_TMPDIR``; the process stops the Ray
instance it started (``ray.shutdown``), never with ``ray stop``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

pytest.importorskip("ray")

PROBE = textwrap.dedent(
    """
    import json, os, sys
    import ray
    from maskgen.parallel import cluster_cpus, ray_session, start_ray

    quiet = sys.argv[1] == "1"
    with ray_session(1, quiet=quiet) as started:
        @ray.remote
        def f(x):
            print("hello from a worker")
            return x + 1

        r = ray.get(f.remote(1))
        again = start_ray(1)
        print(json.dumps({"started": started, "cpus": cluster_cpus(), "r": r, "again": again[0],
                          "env": os.environ.get("RAY_ADDRESS")}))
    print(json.dumps({"after": ray.is_initialized()}))
    """
)


def _probe(quiet: bool) -> subprocess.CompletedProcess:
    ray_tmp = tempfile.mkdtemp(prefix="mgray")  # short: Ray's socket paths must fit 107 bytes
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    # an address where no cluster runs: ray.init() without address="local" would try it
    env.update(RAY_TMPDIR=ray_tmp, RAY_ADDRESS="127.0.0.1:1")
    try:
        return subprocess.run([sys.executable, "-c", PROBE, "1" if quiet else "0"], capture_output=True,
                              text=True, env=env, timeout=300)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.slow
def test_quiet_local_ray_prints_nothing() -> None:
    r = _probe(quiet=True)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert json.loads(lines[0]) == {"started": True, "cpus": 1, "r": 2, "again": False, "env": "127.0.0.1:1"}
    assert json.loads(lines[1]) == {"after": False}
    assert len(lines) == 2  # no forwarded worker output
    assert r.stderr == ""  # no Ray notice (token authentication, start-up) at all


@pytest.mark.slow
def test_not_quiet_shows_rays_notices() -> None:
    """The same start without quiet prints Ray's notice: what quiet silences is real."""
    r = _probe(quiet=False)
    assert r.returncode == 0, r.stderr
    assert "Token authentication is enabled" in r.stderr
    reports = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    assert reports[0]["started"] is True and reports[1] == {"after": False}


def test_the_build_starts_ray_through_parallel(monkeypatch, tmp_path) -> None:
    """One Ray start: the build calls maskgen.parallel.start_ray, quiet when progress is off,
    with the cluster address when one is given."""
    import importlib
    from types import SimpleNamespace

    from maskgen import parallel
    from maskgen.pipelines import runner
    from maskgen.pipelines.config import BUILD

    B = importlib.import_module("maskgen.pipelines.build")
    assert B.start_ray is parallel.start_ray and B.cluster_cpus is parallel.cluster_cpus
    assert not hasattr(runner, "start_ray") and not hasattr(runner, "cluster_cpus")
    calls = []
    monkeypatch.setattr(B, "start_ray", lambda *a, **kw: calls.append((a, kw)) or (True, "started"))
    monkeypatch.setattr(B, "cluster_cpus", lambda: 3)

    class _Log:
        def line(self, text: str) -> None:
            pass

    for progress, address in ((False, None), (True, None), (False, "auto")):
        cfg = BUILD.resolve(source="lfw", out=str(tmp_path), quiet=not progress, workers=None, ray_address=address)
        b = B._Build(cfg, SimpleNamespace(out=tmp_path), _Log(), 0.0, False)  # type: ignore[arg-type]
        b._start_ray()
        assert b.window == 3 and b.ray_started == (address is None)
    assert calls == [((None, None), {"quiet": True}), ((None, None), {"quiet": False}),
                     ((None, "auto"), {"quiet": True})]


@pytest.mark.slow
def test_quiet_build_prints_only_its_result(lfw_dir, tmp_path) -> None:
    """`maskgen build --quiet` prints its one result line and nothing of Ray's (no token
    notice), and starts its own local Ray even with RAY_ADDRESS pointing elsewhere."""
    ray_tmp = tempfile.mkdtemp(prefix="mgray")
    env = {k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"}
    env.update(RAY_TMPDIR=ray_tmp, RAY_ADDRESS="127.0.0.1:1")
    try:
        r = subprocess.run([sys.executable, "-m", "maskgen", "build", "lfw", "-o", str(tmp_path / "out"),
                            "--max-identities", "2", "--workers", "1", "--no-report", "--quiet"],
                           capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    assert len(r.stdout.splitlines()) == 1 and "2 classes" in r.stdout
