"""Real hostile inputs for fault-injection tests (and ``benchmarks/bad_inputs.py``).

Everything here is a real file of its kind, not a mock: a valid JPEG and PNG of 20000x20000
pixels written without ever holding those pixels, FIFOs, links to devices, truncated files,
pickles whose ``__reduce__`` runs a command, mounts of small or read-only tmpfs.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

BOMB_SIDE = 20000


def jpeg_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A valid baseline grayscale JPEG of ``width`` x ``height`` uniform grey pixels.

    Written block by block: one-code Huffman tables make every 8x8 block two zero bits (DC
    difference 0, end of block), so 20000x20000 takes 1.6 MB and no pixel buffer. Any JPEG
    decoder gives a mid-grey image of the declared size.
    """
    blocks = ((width + 7) // 8) * ((height + 7) // 8)
    nbits = 2 * blocks
    scan = bytes(nbits // 8)
    if nbits % 8:
        scan += bytes([0xFF >> (nbits % 8)])  # pad the last byte with 1 bits
        # a padded byte of 0xFF would need stuffing; 0xFF >> k < 0xFF for k >= 1
    out = bytearray(b"\xff\xd8")
    out += b"\xff\xdb" + struct.pack(">H", 67) + b"\x00" + bytes([1] * 64)  # DQT: all ones
    out += b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"  # SOF0
    counts = bytes([1] + [0] * 15)  # one code of length 1
    out += b"\xff\xc4" + struct.pack(">H", 2 + 1 + 16 + 1) + b"\x00" + counts + b"\x00"  # DC: cat 0
    out += b"\xff\xc4" + struct.pack(">H", 2 + 1 + 16 + 1) + b"\x10" + counts + b"\x00"  # AC: EOB
    out += b"\xff\xda" + struct.pack(">HB", 8, 1) + b"\x01\x00" + b"\x00\x3f\x00"  # SOS
    out += scan
    out += b"\xff\xd9"
    return bytes(out)


def with_exif(jpeg: bytes) -> bytes:
    """The same JPEG with an EXIF APP1 segment (orientation 1), which sends it to Pillow."""
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + struct.pack(">H", 1) + struct.pack(">HHII", 0x0112, 3, 1, 1 << 16) + b"\x00" * 4
    app1 = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", 2 + len(app1)) + app1 + jpeg[2:]


def png_bomb(width: int = BOMB_SIDE, height: int = BOMB_SIDE) -> bytes:
    """A valid 8-bit grayscale PNG of ``width`` x ``height`` black pixels (about 400 KB),
    compressed row by row so the raw pixels never exist at once."""
    comp = zlib.compressobj(9)
    row = bytes(1 + width)  # filter byte 0 + zero pixels
    idat = bytearray()
    for _ in range(height):
        idat += comp.compress(row)
    idat += comp.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", bytes(idat)) + chunk(b"IEND", b"")


def header_bombs(side: int = BOMB_SIDE) -> dict[str, bytes]:
    """Small files of other formats whose headers declare ``side`` x ``side`` pixels."""
    bmp_pixels = 0
    bmp = (b"BM" + struct.pack("<IHHI", 54 + bmp_pixels, 0, 0, 54)
           + struct.pack("<IiiHHIIiiII", 40, side, side, 1, 24, 0, 0, 2835, 2835, 0, 0))
    gif = (b"GIF89a" + struct.pack("<HHBBB", side, side, 0, 0, 0)
           + b"\x2c" + struct.pack("<HHHHB", 0, 0, side, side, 0) + b"\x02\x02\x44\x01\x00\x3b")
    ppm = f"P6\n{side} {side}\n255\n".encode() + bytes(64)
    return {"bomb.bmp": bmp, "bomb.gif": gif, "bomb.ppm": ppm}


class Payload:
    """An object whose unpickling runs ``func(*args)``: the classic pickle attack."""

    def __init__(self, func, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def malicious_pickles(marker: Path) -> dict[str, bytes]:
    """Pickles that create ``marker`` when loaded by a plain ``pickle.load`` (each a real
    attack: a shell command, ``eval``, a subprocess), shaped like an insightface ``.bin``."""
    m = str(marker)
    shell = Payload(os.system, (f"touch {m}",))
    evil_eval = Payload(eval, (f"open({m!r}, 'w').write('pwned')",))
    proc = Payload(subprocess.call, ([sys.executable, "-c", f"open({m!r}, 'w').close()"],))
    out = {}
    for name, payload in (("os_system", shell), ("eval", evil_eval), ("subprocess", proc)):
        # the payload as an image of the pair list, and as the whole file
        out[f"{name}_in_bins"] = pickle.dumps(([b"\xff\xd8", payload], [True]), protocol=2)
        out[f"{name}_whole"] = pickle.dumps(payload, protocol=4)
    out["numpy_object_array"] = pickle.dumps(
        ([np.array([b"x", shell], dtype=object), b"y"], [True]), protocol=4)
    return out


def make_fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "4m", readonly: bool = False) -> Iterator[Path]:
    """Mount a real tmpfs at ``path`` (size-limited, optionally read-only); unmounted after.

    Raises ``OSError`` when mounting is not possible here (not root, no mount namespace
    rights): callers skip the test."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if readonly else "")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "maskgen-test", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        raise OSError(f"cannot mount a tmpfs here: {res.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


@contextlib.contextmanager
def readonly_dir(path: Path) -> Iterator[Path]:
    """A folder no process can write into, even as root: a read-only tmpfs mount, else an
    immutable (``chattr +i``) folder. Raises ``OSError`` when neither works here."""
    try:
        with tmpfs(path, "1m", readonly=True) as p:
            yield p
        return
    except OSError:
        pass
    path.mkdir(parents=True, exist_ok=True)
    res = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if res.returncode != 0:
        raise OSError(f"cannot make a read-only folder here: {res.stderr.strip()}")
    try:
        probe = path / ".probe"
        try:
            probe.write_bytes(b"")
        except OSError:
            pass
        else:
            probe.unlink()
            raise OSError("chattr +i did not stop writes here")
        yield path
    finally:
        subprocess.run(["chattr", "-i", str(path)], capture_output=True)


def peak_rss_of(code: str, env: dict | None = None, timeout: float = 120) -> tuple[str, int, int]:
    """Run ``code`` in a fresh Python; return (its stdout, RSS before the last statement in KiB,
    peak RSS in KiB). ``code``'s last line is the measured statement; earlier lines set up."""
    *setup, last = code.strip().splitlines()
    script = "\n".join([
        "import resource, sys",
        *setup,
        "_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        last,
        "_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss",
        "print(f'RSS {_before} {_peak}')",
    ])
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=timeout, env=env)
    if res.returncode != 0:
        raise RuntimeError(res.stderr)
    lines = res.stdout.strip().splitlines()
    _, before, peak = lines[-1].split()
    return "\n".join(lines[:-1]), int(before), int(peak)


def maskgen_cmd() -> list[str]:
    """The installed ``maskgen`` console script of this interpreter (``python -m maskgen``
    where the script is absent)."""
    script = Path(sys.executable).with_name("maskgen")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "maskgen"]


def run_maskgen(args: list[str], cwd: Path, timeout: float = 600, env: dict | None = None,
                **kw) -> subprocess.CompletedProcess:
    """Run the real ``maskgen`` command in ``cwd``, with a Ray temp folder of its own (short:
    Ray's socket paths must stay under 108 bytes), removed afterwards."""
    import shutil
    import tempfile

    ray_tmp = tempfile.mkdtemp(prefix="mgr")
    env = {**os.environ, "RAY_TMPDIR": ray_tmp, **(env or {})}
    try:
        return subprocess.run(maskgen_cmd() + [str(a) for a in args], cwd=cwd, capture_output=True,
                              text=True, timeout=timeout, env=env, **kw)
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)


def error_line(res: subprocess.CompletedProcess) -> str:
    """The one ``Error:`` line a failed command ends with; asserts the CLI contract: non-zero
    exit, no traceback, exactly one error line and it is the last line of stderr."""
    assert res.returncode != 0, f"exit 0\n{res.stdout}\n{res.stderr}"
    assert "Traceback" not in res.stderr and "Traceback" not in res.stdout, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("Error:")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    return errors[0]


def tree_digest(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` (relative path -> bytes): to show a run changed nothing."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def make_bad_folder(root: Path, face_bgr: np.ndarray, copies: int = 1) -> dict[str, str]:
    """A folder-by-identity source of hostile inputs beside good photos.

    Returns {relative path (as a scan names it, undecodable bytes as ``\\xNN``): what it is}.
    Every hostile kind the reliability docs list: a FIFO, a link to /dev/zero, JPEG and PNG
    pixel bombs, truncated/empty/corrupt files, hidden files, non-UTF-8 and control-character
    names, an HTML-injection identity, a symlinked identity folder, a symlink loop, and an
    output folder of maskgen's inside the source.
    """
    import cv2

    root.mkdir(parents=True, exist_ok=True)
    good = cv2.imencode(".jpg", face_bgr, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    flipped = cv2.imencode(".jpg", face_bgr[:, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
    kinds: dict[str, str] = {}
    rb = os.fsencode(root)

    def put(rel: bytes, data: bytes, kind: str) -> None:
        p = os.path.join(rb, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
        kinds[rel.decode("utf-8", "backslashreplace")] = kind

    for c in range(copies):
        a, b = f"alice{c}".encode(), f"bob{c}".encode()
        for i in range(3):
            put(a + b"/%d.jpg" % i, good, "good")
            put(b + b"/%d.jpg" % i, flipped, "good")
        put(a + b"/truncated.jpg", good[: len(good) // 2], "truncated")
        put(a + b"/empty.jpg", b"", "empty")
        put(a + b"/corrupt.jpg", bytes(range(256)) * 20, "corrupt")
        put(a + b"/bomb.jpg", jpeg_bomb(), "pixel bomb")
        put(a + b"/bomb.png", png_bomb(), "pixel bomb")
        put(a + b"/.hidden.jpg", good, "hidden")
        put(a + b"/caf\xe9.jpg", good, "non-UTF-8 name")
        put(a + b"/new\nline.jpg", good, "newline in name")
        put(a + b"/tab\tname.jpg", good, "tab in name")
        put(b"jos\xe9%d/0.jpg" % c, good, "non-UTF-8 identity")
        put(b"<img src=x onerror=alert(%d)>/0.jpg" % c, good, "HTML identity")
        put(b"evil\nname%d/0.jpg" % c, flipped, "newline identity")
        os.mkfifo(os.path.join(rb, a + b"/fifo.jpg"))
        kinds[f"alice{c}/fifo.jpg"] = "FIFO"
        os.symlink("/dev/zero", os.path.join(rb, a + b"/zero.jpg"))
        kinds[f"alice{c}/zero.jpg"] = "device link"
        os.symlink("..", os.path.join(rb, b + b"/loop"))  # a symlink loop back to the root
        kinds[f"bob{c}/loop"] = "symlink loop"
    outside = root.parent / f"{root.name}-linked-target"
    (outside / "x").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        (outside / "x" / f"{i}.jpg").write_bytes(good)
    os.symlink(outside / "x", root / "linked")
    kinds["linked/0.jpg"] = kinds["linked/1.jpg"] = "symlinked identity"
    owned = root / "previous-build"
    owned.mkdir(exist_ok=True)
    (owned / ".maskgen-output.json").write_text('{"tool": "maskgen", "kind": "build", "created": "2026-01-01T00:00:00Z"}\n')
    (owned / "report").mkdir(exist_ok=True)
    (owned / "report" / "plot.png").write_bytes(good)
    kinds["previous-build/report/plot.png"] = "owned output (skipped)"
    return kinds


def face_folder(root: Path, face_bgr: np.ndarray, identities: int = 2, per: int = 3) -> Path:
    """A folder-by-identity dataset of real face photos, each a shifted copy of one face
    (mirrored for every other identity): ``root/id<k>/<i>.jpg``."""
    import cv2

    for k in range(identities):
        (root / f"id{k}").mkdir(parents=True, exist_ok=True)
        img = face_bgr if k % 2 == 0 else face_bgr[:, ::-1]
        for i in range(per):
            cv2.imwrite(str(root / f"id{k}" / f"{i}.jpg"), np.roll(img, 9 * i + 40 * k, axis=1))
    return root
