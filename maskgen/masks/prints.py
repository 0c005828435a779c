"""Printed and knitted fabrics seen on real cloth masks, drawn procedurally in template space.

brand (generic invented words and logos, no real trademark), cartoon, flag, plaid (tartan),
knit, lace and camouflage. Each has seeded variants (``"camo:3"``): a spec's ``texture="camo"``
gets its variant from the sample's seed, so a build draws many looks, reproducibly, while the
template cache stays bounded (variants x designs x colours). Everything is a pure function of
(u, v, variant): the same print on every worker and every run.
"""

from __future__ import annotations

import cv2
import numpy as np

from maskgen.masks.textures import FABRIC, SECOND, Ink, Print, hex_cells, register_pattern, shade_of

VARIANTS = 8

# Invented names (checked against nothing but common sense: short, pronounceable, not a brand
# anyone would recognise); the prints look like branding without copying any.
WORDS = ("ZENVA", "LUMORA", "KAVIQ", "OSTREN", "VYNTA", "MERAXO", "TULKA", "QUIVEN")
ACCENTS = ("#d8342c", "#f2b705", "#2a7de1", "#1e9e5a", "#ffffff", "#ff7a1a", "#111111", "#9b4dca")


def _aa(d, px):
    return np.clip(0.5 + d / px, 0.0, 1.0)


def _rng(name: str, variant: int) -> np.random.Generator:
    return np.random.default_rng([sum(map(ord, name)), variant])


def partition(layers: list[tuple[np.ndarray, Ink]]) -> list[tuple[np.ndarray, Ink]]:
    """Over-composited layers equal to ``sum(w_k * ink_k)`` for weights that sum to 1."""
    out = []
    acc = np.zeros_like(layers[0][0])
    for w, ink in layers:
        acc = acc + w
        out.append((np.where(acc > 1e-6, w / np.maximum(acc, 1e-6), 0.0), ink))
    return out


def value_noise(u, v, seed: int, scale: float, octaves: int = 2) -> np.ndarray:
    """Smooth noise in [-1, 1] as a function of template coordinates (not of the array shape)."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(u, dtype=np.float64)
    amp, total = 1.0, 0.0
    for _ in range(octaves):
        lat = rng.uniform(-1, 1, (64, 64))
        x = (u + 0.5) / scale
        y = (v * (240.0 / 320.0) + 0.5) / scale
        xi, yi = np.floor(x).astype(int), np.floor(y).astype(int)
        fx, fy = x - xi, y - yi
        fx, fy = fx * fx * (3 - 2 * fx), fy * fy * (3 - 2 * fy)
        xi %= 63
        yi %= 63
        a = lat[yi, xi] * (1 - fx) + lat[yi, xi + 1] * fx
        b = lat[yi + 1, xi] * (1 - fx) + lat[yi + 1, xi + 1] * fx
        out += amp * (a * (1 - fy) + b * fy)
        total += amp
        amp *= 0.5
        scale *= 0.5
    return out / total


class _Canvas:
    """Raster drawing (OpenCV text and shapes) at the template grid, addressed in (u, v)."""

    def __init__(self, u: np.ndarray, v: np.ndarray) -> None:
        self.u0, self.v0 = float(u[0, 0]), float(v[0, 0])
        self.du = float(u[0, 1] - u[0, 0]) if u.shape[1] > 1 else 1.0
        self.dv = float(v[1, 0] - v[0, 0]) if v.shape[0] > 1 else 1.0
        self.shape = u.shape

    def xy(self, uu: float, vv: float) -> tuple[int, int]:
        return int(round((uu - self.u0) / self.du)), int(round((vv - self.v0) / self.dv))

    def px(self, du: float) -> float:
        return du / self.du

    def new(self) -> np.ndarray:
        return np.zeros(self.shape, np.uint8)


def _text(cv: _Canvas, img, word, uc, vc, width_u, thick_u, angle=0.0):
    """Draw ``word`` centred at (uc, vc), about ``width_u`` wide, onto ``img`` (255 = ink)."""
    font = cv2.FONT_HERSHEY_DUPLEX
    (tw, th), _ = cv2.getTextSize(word, font, 1.0, 1)
    scale = cv.px(width_u) / max(tw, 1)
    thick = max(1, int(round(cv.px(thick_u))))
    tmp = np.zeros_like(img)
    x, y = cv.xy(uc, vc)
    org = (int(x - tw * scale / 2), int(y + th * scale / 2))
    cv2.putText(tmp, word, org, font, scale, 255, thick, cv2.LINE_AA)
    if angle:
        m = cv2.getRotationMatrix2D((float(x), float(y)), angle, 1.0)
        tmp = cv2.warpAffine(tmp, m, (img.shape[1], img.shape[0]))
    np.maximum(img, tmp, out=img)


def _logo(cv: _Canvas, img, kind: int, uc, vc, r_u):
    """A generic mark: ring, triangle, swoosh-like arc, star, hexagon, bars, diamond, circle."""
    x, y = cv.xy(uc, vc)
    r = cv.px(r_u)
    t = max(1, int(round(r * 0.28)))
    k = kind % 8
    if k == 0:
        cv2.circle(img, (x, y), int(r), 255, t, cv2.LINE_AA)
    elif k == 1:
        pts = np.array([[x, y - r], [x + r * 0.9, y + r * 0.6], [x - r * 0.9, y + r * 0.6]], np.int32)
        cv2.fillPoly(img, [pts], 255, cv2.LINE_AA)
    elif k == 2:
        cv2.ellipse(img, (x, y), (int(r * 1.3), int(r * 0.55)), -15, 20, 200, 255, t, cv2.LINE_AA)
    elif k == 3:
        a = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
        rr = np.where(np.arange(10) % 2 == 0, r, r * 0.45)
        pts = np.stack([x + rr * np.cos(a), y + rr * np.sin(a)], 1).astype(np.int32)
        cv2.fillPoly(img, [pts], 255, cv2.LINE_AA)
    elif k == 4:
        a = np.linspace(0, 2 * np.pi, 7)[:-1]
        pts = np.stack([x + r * np.cos(a), y + r * np.sin(a)], 1).astype(np.int32)
        cv2.polylines(img, [pts], True, 255, t, cv2.LINE_AA)
    elif k == 5:
        for i in range(3):
            h = r * (0.6 + 0.4 * i)
            cv2.rectangle(img, (int(x - r + i * r * 0.75), int(y + r * 0.6 - h)), (int(x - r + i * r * 0.75 + r * 0.45), int(y + r * 0.6)), 255, -1, cv2.LINE_AA)
    elif k == 6:
        pts = np.array([[x, y - r], [x + r * 0.8, y], [x, y + r], [x - r * 0.8, y]], np.int32)
        cv2.fillPoly(img, [pts], 255, cv2.LINE_AA)
    else:
        cv2.circle(img, (x, y), int(r), 255, -1, cv2.LINE_AA)


def _w(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float64) / 255.0


@register_pattern("brand", VARIANTS, "invented brand words and logos")
def brand(u, v, px, var):
    rng = _rng("brand", var)
    cv = _Canvas(u, v)
    word = WORDS[var % len(WORDS)]
    text, mark = cv.new(), cv.new()
    if var < 4:  # one logo and word, on the image-left half (a small side logo) or centred
        if var % 2 == 0:
            _logo(cv, mark, int(rng.integers(8)), 0.27, 0.50, 0.045)
            _text(cv, text, word, 0.27, 0.62, 0.22, 0.006)
        else:
            _logo(cv, mark, int(rng.integers(8)), 0.5, 0.42, 0.06)
            _text(cv, text, word, 0.5, 0.62, 0.42, 0.010)
    else:  # an all-over repeat of small words and marks, slanted
        for j, vv in enumerate(np.arange(-0.1, 1.4, 0.16)):
            for i, uu in enumerate(np.arange(-0.2 + 0.14 * (j % 2), 1.3, 0.28)):
                if (i + j) % 2 == 0:
                    _text(cv, text, word, uu, vv, 0.16, 0.004, angle=12.0)
                else:
                    _logo(cv, mark, var + i, uu, vv, 0.025)
    accent = Ink.of(ACCENTS[int(rng.integers(len(ACCENTS)))])
    return Print([(_w(text), SECOND), (_w(mark), accent)])


_TOON = ("#ffd23f", "#ff6b6b", "#4ecdc4", "#ffffff", "#a66cff", "#7bd389")


@register_pattern("cartoon", VARIANTS, "cartoon faces, stars, hearts and cats")
def cartoon(u, v, px, var):
    rng = _rng("cartoon", var)
    cv = _Canvas(u, v)
    fills = [cv.new() for _ in range(3)]
    line = cv.new()
    cols = rng.choice(len(_TOON), 3, replace=False)
    cell = 0.17 + 0.05 * (var % 3)
    r = cell * 0.32
    t = max(1, int(round(cv.px(0.006))))
    for j, vv in enumerate(np.arange(-0.1, 1.5, cell * 0.9)):
        for i, uu in enumerate(np.arange(-0.2 + (j % 2) * cell / 2, 1.3, cell)):
            kind = (var + i * 3 + j * 5) % 4
            k = (i + 2 * j) % 3
            x, y = cv.xy(uu + rng.uniform(-0.02, 0.02), vv + rng.uniform(-0.02, 0.02))
            rp = cv.px(r)
            if kind == 0:  # smiling face
                cv2.circle(fills[k], (x, y), int(rp), 255, -1, cv2.LINE_AA)
                cv2.circle(line, (x, y), int(rp), 255, t, cv2.LINE_AA)
                for ex in (-0.35, 0.35):
                    cv2.circle(line, (int(x + ex * rp), int(y - 0.2 * rp)), max(1, int(rp * 0.12)), 255, -1, cv2.LINE_AA)
                cv2.ellipse(line, (x, int(y + 0.1 * rp)), (int(rp * 0.5), int(rp * 0.4)), 0, 20, 160, 255, t, cv2.LINE_AA)
            elif kind == 1:  # star
                a = np.linspace(0, 2 * np.pi, 11)[:-1] - np.pi / 2
                rr = np.where(np.arange(10) % 2 == 0, rp, rp * 0.45)
                pts = np.stack([x + rr * np.cos(a), y + rr * np.sin(a)], 1).astype(np.int32)
                cv2.fillPoly(fills[k], [pts], 255, cv2.LINE_AA)
                cv2.polylines(line, [pts], True, 255, t, cv2.LINE_AA)
            elif kind == 2:  # heart
                s = np.linspace(0, 2 * np.pi, 40)
                hx = 16 * np.sin(s) ** 3
                hy = -(13 * np.cos(s) - 5 * np.cos(2 * s) - 2 * np.cos(3 * s) - np.cos(4 * s))
                pts = np.stack([x + hx * rp / 17, y + hy * rp / 17], 1).astype(np.int32)
                cv2.fillPoly(fills[k], [pts], 255, cv2.LINE_AA)
                cv2.polylines(line, [pts], True, 255, t, cv2.LINE_AA)
            else:  # cat face: a head with two ears
                ears = [np.array([[x - rp * 0.9, y - rp * 0.3], [x - rp * 0.7, y - rp * 1.2], [x - rp * 0.2, y - rp * 0.8]], np.int32),
                        np.array([[x + rp * 0.9, y - rp * 0.3], [x + rp * 0.7, y - rp * 1.2], [x + rp * 0.2, y - rp * 0.8]], np.int32)]
                cv2.fillPoly(fills[k], ears, 255, cv2.LINE_AA)
                cv2.circle(fills[k], (x, y), int(rp * 0.9), 255, -1, cv2.LINE_AA)
                cv2.polylines(line, ears, True, 255, t, cv2.LINE_AA)
                cv2.circle(line, (x, y), int(rp * 0.9), 255, t, cv2.LINE_AA)
                for ex in (-0.3, 0.3):
                    cv2.circle(line, (int(x + ex * rp), int(y - 0.1 * rp)), max(1, int(rp * 0.1)), 255, -1, cv2.LINE_AA)
    layers = [(_w(f), Ink.of(_TOON[int(c)])) for f, c in zip(fills, cols)]
    return Print(layers + [(_w(line), Ink.of("#1a1a1a"))])


_FLAG = ("#c8102e", "#ffffff", "#0a3d91", "#138a36", "#ffcd00", "#111111", "#ff8200", "#5bc2e7")


@register_pattern("flag", VARIANTS, "flag-like tricolours, crosses, stars and bands")
def flag(u, v, px, var):
    rng = _rng("flag", var)
    c = [Ink.of(_FLAG[int(k)]) for k in rng.choice(len(_FLAG), 3, replace=False)]
    if var % 3 == 0:  # many flags have a white middle
        c[1] = Ink.of("#ffffff")
    layout = var % 8
    aspect = 240.0 / 320.0
    if layout == 0:  # horizontal tricolour
        a = _aa(1 / 3 - v, px)
        b = _aa(v - 2 / 3, px)
        return Print(partition([(a, c[0]), (np.clip(1 - a - b, 0, 1), c[1]), (b, c[2])]))
    if layout == 1:  # vertical tricolour
        a = _aa(1 / 3 - u, px)
        b = _aa(u - 2 / 3, px)
        return Print(partition([(a, c[0]), (np.clip(1 - a - b, 0, 1), c[1]), (b, c[2])]))
    if layout == 2:  # nordic cross
        cross = np.maximum(_aa(0.07 - np.abs(u - 0.38), px), _aa(0.07 * aspect - np.abs(v - 0.5) * aspect, px))
        inner = np.maximum(_aa(0.035 - np.abs(u - 0.38), px), _aa(0.035 * aspect - np.abs(v - 0.5) * aspect, px))
        return Print([(np.ones_like(u), c[0]), (cross, c[1]), (inner, c[2])])
    if layout == 3:  # stripes with a canton and a star
        stripes = _aa(0.5 * 0.143 - np.abs(((v / 0.143) % 1.0) - 0.5) * 0.143, px)
        canton = _aa(0.42 - u, px) * _aa(0.5 - v, px)
        star = _star(u, v, 0.21, 0.25, 0.07, px)
        return Print([(np.ones_like(u), c[1]), (stripes, c[0]), (canton, c[2]), (star * canton, Ink.of("#ffffff"))])
    if layout == 4:  # disc on a field
        d = np.hypot(u - 0.5, (v - 0.5) * aspect)
        return Print([(np.ones_like(u), c[1]), (_aa(0.2 - d, px), c[0])])
    if layout == 5:  # diagonal band
        d = np.abs((u - 0.5) * aspect - (v - 0.5) * aspect * 1.0) / np.sqrt(2)
        return Print([(np.ones_like(u), c[0]), (_aa(0.16 - d, px), c[1]), (_aa(0.08 - d, px), c[2])])
    if layout == 6:  # chevron from the image left
        tri = _aa(0.45 - u - np.abs(v - 0.5) * 0.9, px)
        a = _aa(0.5 - v, px)
        return Print([(a, c[0]), (1 - a, c[1]), (tri, c[2])])
    # a large star on a two-band field
    a = _aa(0.5 - v, px)
    return Print([(a, c[0]), (1 - a, c[1]), (_star(u, v, 0.5, 0.5, 0.17, px), c[2])])


def _star(u, v, uc, vc, r, px):
    """Anti-aliased five-pointed star (signed distance approximated in polar form)."""
    aspect = 240.0 / 320.0
    dx, dy = u - uc, (v - vc) * aspect
    rr = np.hypot(dx, dy)
    th = np.arctan2(dy, dx) + np.pi / 2
    k = np.abs(((th / (2 * np.pi / 5)) % 1.0) - 0.5) * 2  # 0 at a point, 1 between points
    edge = r * (1 - 0.55 * k)
    return _aa(edge - rr, px)


@register_pattern("plaid", VARIANTS, "tartan and plaid checks with a twill weave")
def plaid(u, v, px, var):
    rng = _rng("plaid", var)
    inks = [FABRIC, shade_of(0.45), SECOND, Ink.of(ACCENTS[int(rng.integers(len(ACCENTS)))])]
    period = 0.16 + 0.06 * (var % 3)
    # the sett: band widths per colour in one period (mirrored, as tartans are)
    widths = rng.uniform(0.5, 2.0, 4)
    widths[3] = 0.25  # the accent is a thin line
    edges = np.cumsum(widths) / widths.sum() * 0.5

    def band(x):
        f = np.abs(((x / period) % 1.0) - 0.5)  # 0..0.5, mirrored
        idx = np.searchsorted(edges, f.ravel()).reshape(f.shape)
        return np.minimum(idx, 3)

    bu, bv = band(u), band(v * (240.0 / 320.0))
    twill = (np.floor((u * 320.0 + v * 240.0) / 2.0) % 2).astype(np.float64)  # 2-pixel diagonal
    layers = []
    for k, ink in enumerate(inks):
        w = twill * (bu == k) + (1 - twill) * (bv == k)
        layers.append((cv2.GaussianBlur(w.astype(np.float32), (0, 0), 0.6).astype(np.float64), ink))
    return Print(partition(layers))


@register_pattern("knit", VARIANTS, "knitted stitches, some with Nordic-style bands")
def knit(u, v, px, var):
    cols = 0.022 + 0.006 * (var % 3)
    rows = cols * 0.75
    x = u / cols
    y = v / rows
    fx = (x % 1.0) - 0.5
    fy = (y % 1.0)
    # each stitch is a V: two slanted loops meeting at the bottom
    slant = np.abs(fx) * 1.2 - (1.0 - fy) * 0.6
    loop = np.exp(-(slant / 0.22) ** 2) * (0.6 + 0.4 * np.sin(np.pi * fy))
    gap = np.exp(-((np.abs(fx) - 0.5) / 0.08) ** 2)
    relief = 0.78 + 0.32 * loop - 0.12 * gap
    layers = [(np.clip(0.6 * gap, 0, 1), shade_of(0.7))]
    if var >= 4:  # a band of a second colour with a stepped motif
        row = np.floor(y)
        colu = np.floor(x)
        band = (np.abs(((row / 18.0) % 1.0) - 0.5) < 0.12).astype(np.float64)
        motif = ((np.abs(colu % 8 - 4) + np.abs(row % 6 - 3)) < 3).astype(np.float64) * (band == 0)
        layers.append((np.maximum(band, motif * ((row // 6) % 3 == 1)), SECOND))
    return Print(layers, relief=relief)


@register_pattern("lace", VARIANTS, "lace over a lining: net and rosettes")
def lace(u, v, px, var):
    cell = 0.045 + 0.01 * (var % 2)
    dx, dy, _ = hex_cells(u, v, cell)
    r = np.hypot(dx, dy)
    net = _aa(0.004 - np.abs(r - cell * 0.48), px * 1.5)  # the hexagonal net of threads
    big = 0.2 + 0.04 * (var % 3)
    bx, by, _ = hex_cells(u + 0.1 * (var % 4), v, big)
    br = np.hypot(bx, by)
    th = np.arctan2(by, bx)
    petals = 0.07 * (0.6 + 0.4 * np.abs(np.cos((3 + var % 3) * th)))
    rosette = np.maximum(_aa(0.006 - np.abs(br - petals), px), _aa(0.01 - np.abs(br - 0.025), px))
    solid = _aa(petals - 0.012 - br, px) * (0.5 + 0.5 * np.cos(th * 12) > 0.3)
    thread = np.clip(net + rosette + solid, 0, 1)
    # the lining shows through the holes; the lace threads are the fabric colour
    relief = 0.86 + 0.18 * thread
    return Print([(np.ones_like(u), SECOND), (thread, FABRIC)], relief=relief)


_WOODLAND = ("#5b6b3a", "#3b2f23", "#1d1d1b", "#8a8458")
_URBAN = ("#8e9096", "#55585e", "#2a2b2e", "#c5c7ca")


@register_pattern("camo", VARIANTS, "camouflage blobs: woodland, urban, tinted")
def camo(u, v, px, var):
    if var < 4:
        inks = [Ink.of(c) for c in _WOODLAND]
    elif var < 6:
        inks = [Ink.of(c) for c in _URBAN]
    else:
        inks = [FABRIC, shade_of(0.7), shade_of(0.45), SECOND]
    scale = 0.09 + 0.03 * (var % 2)
    layers = [(np.ones_like(u), inks[0])]
    for k in range(1, 4):
        n = value_noise(u, v, 1000 * var + k, scale, octaves=3)
        layers.append((_aa(n - 0.12, 0.04), inks[k]))
    return Print(layers)
