"""Helper processes (maskgen.helper): results, errors, a dead helper, and no second run of the
caller's main module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from maskgen.helper import Helper, HelperCallError, HelperError


def test_call_result_error_and_death() -> None:
    with Helper() as h:
        assert h.call(os.getpid) != os.getpid()
        assert h.call(divmod, 7, 2) == (3, 1)
        with pytest.raises(HelperCallError, match="ValueError: invalid literal"):
            h.call(int, "x")
        assert h.call(sum, [1, 2]) == 3  # an error in the function leaves the helper serving
        assert h.call(os.write, 1, b"printed at the file-descriptor level\n") > 0  # not into the results
        assert h.call(divmod, 9, 4) == (2, 1)
        with pytest.raises(HelperError):
            h.call(os._exit, 3)
        assert not h.alive
        with pytest.raises(HelperError):
            h.call(sum, [1])


def test_a_call_that_cannot_be_unpickled_there_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A function the helper cannot import (defined in a module only this process has) is
    answered as an error, and the helper keeps serving."""
    mod = tmp_path / "only_here_mod.py"
    mod.write_text("def f(x):\n    return x + 1\n")
    sys.path.insert(0, str(tmp_path))
    try:
        import only_here_mod

        with Helper() as h:
            mod.unlink()  # gone before the helper looks for it
            with pytest.raises(HelperCallError, match="ModuleNotFoundError"):
                h.call(only_here_mod.f, 1)
            assert h.call(abs, -2) == 2
    finally:
        sys.path.remove(str(tmp_path))


def test_workers_and_helpers_never_run_the_main_script_again(tmp_path: Path) -> None:
    """A script without a main guard that hands work to the audit's worker processes and to a
    helper runs its top-level code exactly once (multiprocessing's spawned children would
    import it again)."""
    runs = tmp_path / "runs.txt"
    (tmp_path / "work_mod.py").write_text("def double(items):\n    return [2 * x for x in items]\n")
    script = tmp_path / "noguard.py"
    script.write_text(
        "from maskgen.audit.workers import map_in_workers\n"
        "from maskgen.helper import Helper\n"
        "import work_mod\n"
        f"open({str(runs)!r}, 'a').write('ran\\n')\n"
        "print(map_in_workers(work_mod.double, [[1, 2], [3]], workers=2))\n"
        "with Helper() as h:\n    print(h.call(work_mod.double, [5]))\n")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[:2] == ["[[2, 4], [6]]", "[10]"]
    assert runs.read_text() == "ran\n"
