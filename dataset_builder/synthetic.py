"""SYNTHETIC default data: seeded FLIR-ONE-like indoor scenes with the paper's three classes.

No public copy of the paper's 1100 FLIR ONE pairs exists, so the demo trains on
scenes drawn here. Everything this module writes is labelled SYNTHETIC (README.txt,
pairs.json, and from there dataset.json and the manifest's source column).

What makes it a fair stand-in:
  * visible appearance PREDICTS temperature through materials (skin is 33-35 C,
    clothing cooler, a lit microwave window is hot, a lit screen is warm, plant
    leaves are cooler than the wall...), so a network has something to learn;
  * realistic nuisances it must not learn: posters/text/stripes with no thermal
    trace, cast shadows, lighting and white balance, radiators and "just used"
    microwaves that are hot with no visible cue, the room's ambient temperature;
  * the FLIR ONE sensor chain: area integration to 160x120, optics PSF, heat halo
    around hot objects, vignetting drift, column fixed-pattern and NETD noise,
    and up to one IR pixel of residual visible/IR misalignment.
One scene = one primary object class (class balance is exact up to one pair);
a second, smaller object of another class appears in some scenes, as in real rooms.
"""
from __future__ import annotations

import colorsys
import json
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from thermalnet import spec
from thermalnet.atomic import write_text

from thermalnet.imageio import write_npy, write_png

VIS_H, VIS_W = spec.FLIR_ONE_VISIBLE_SIZE
IR_H, IR_W = spec.FLIR_ONE_IR_SIZE
GENERATOR_VERSION = 1
README = """SYNTHETIC DATA - NOT REAL FLIR ONE PHOTOGRAPHS

Made by dataset_builder.synthetic (version {version}), seed {seed}, {count} pairs.
Rendered indoor scenes with the Thermalnet paper's three object classes (human,
microwave oven, computer) through a simple FLIR ONE sensor model: visible 640x480
RGB PNG (visible/), IR 160x120 float32 degC arrays (ir/*.npy), already aligned.
classes.csv gives each pair's primary object class. Use it to exercise the kit,
never as evidence about real thermal imagery.
"""


# -- primitives --------------------------------------------------------------------------

@dataclass
class Prim:
    """One filled shape: its colour (RGB 0..255, None = thermal only) and its apparent
    temperature (degC, None = visible only, e.g. printed text), and whether it casts a shadow."""

    kind: str
    geom: tuple
    rgb: Optional[Tuple[float, float, float]]
    temp: Optional[float]
    caster: bool = True


def _pts(p):
    return np.round(np.asarray(p, dtype=np.float64)).astype(np.int32).reshape(-1, 1, 2)


def _draw_one(img, p: Prim, value):
    g = p.geom
    if p.kind == "rect":
        x0, y0, x1, y1 = (int(round(v)) for v in g)
        cv2.rectangle(img, (x0, y0), (x1 - 1, y1 - 1), value, -1)
    elif p.kind == "ellipse":
        cx, cy, ax, ay, ang = g
        cv2.ellipse(img, (int(round(cx)), int(round(cy))), (max(1, int(round(ax))), max(1, int(round(ay)))),
                    float(ang), 0, 360, value, -1)
    elif p.kind == "poly":
        cv2.fillPoly(img, [_pts(g)], value)
    elif p.kind == "line":
        (x0, y0), (x1, y1), th = g
        cv2.line(img, (int(round(x0)), int(round(y0))), (int(round(x1)), int(round(y1))), value,
                 max(1, int(round(th))))
    else:
        raise ValueError(p.kind)


def _render(prims: Sequence[Prim], rgb: np.ndarray, temp: np.ndarray) -> None:
    for p in prims:
        if p.rgb is not None:
            _draw_one(rgb, p, tuple(float(c) for c in p.rgb))
        if p.temp is not None:
            _draw_one(temp, p, float(p.temp))


def _render_mask(prims: Sequence[Prim], mask: np.ndarray, scale: float) -> None:
    for p in prims:
        if p.caster and p.rgb is not None:
            g = p.geom
            if p.kind == "rect" or p.kind == "poly":
                g = tuple(np.asarray(g, dtype=np.float64).ravel() * scale) if p.kind == "rect" else \
                    np.asarray(g, dtype=np.float64) * scale
            elif p.kind == "ellipse":
                g = (g[0] * scale, g[1] * scale, g[2] * scale, g[3] * scale, g[4])
            elif p.kind == "line":
                g = ((g[0][0] * scale, g[0][1] * scale), (g[1][0] * scale, g[1][1] * scale), g[2] * scale)
            _draw_one(mask, Prim(p.kind, g, None, None), 1.0)


# -- colours -------------------------------------------------------------------------------

def _hsv(h, s, v):
    r, g, b = colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0), 1), min(max(v, 0), 1))
    return (255 * r, 255 * g, 255 * b)


def _jitter(rng, c, amount=12):
    return tuple(float(np.clip(v + rng.normal(0, amount), 0, 255)) for v in c)


def _scale(c, f):
    return tuple(float(np.clip(v * f, 0, 255)) for v in c)


WALLS = [(236, 232, 222), (222, 216, 200), (205, 210, 212), (200, 214, 226), (214, 224, 204),
         (238, 226, 206), (180, 178, 172), (226, 204, 190), (190, 200, 170), (246, 244, 240)]
FLOORS = {"wood": [(150, 105, 65), (120, 80, 50), (180, 140, 95), (95, 65, 45)],
          "carpet": [(110, 100, 95), (80, 90, 110), (140, 120, 100), (90, 110, 90), (150, 60, 55)],
          "tile": [(200, 200, 195), (170, 165, 155), (215, 205, 185), (120, 120, 125)]}
TABLES = [(160, 120, 80), (200, 170, 130), (240, 240, 236), (40, 40, 42), (120, 90, 60), (180, 180, 175)]
SKIN = [(255, 224, 196), (241, 194, 160), (224, 172, 138), (198, 134, 98), (160, 104, 72),
        (120, 78, 52), (90, 58, 40)]
HAIR = [(20, 16, 14), (60, 40, 25), (110, 75, 40), (200, 170, 110), (150, 150, 150), (140, 60, 30)]


def _cloth(rng):
    if rng.random() < 0.3:           # greys, black, white, navy: common clothes
        return _jitter(rng, [(30, 30, 32), (230, 230, 228), (120, 120, 125), (35, 45, 80)][rng.integers(4)], 8)
    return _hsv(rng.random(), rng.uniform(0.3, 0.9), rng.uniform(0.25, 0.9))


# -- the scene -----------------------------------------------------------------------------

@dataclass
class Room:
    ambient: float
    horizon: int                                  # wall/floor boundary (visible rows)
    table: Optional[Tuple[int, int, int, int]]    # x0, top, x1, front bottom


def _lowfreq(rng, h, w, cells=(6, 8)):
    return cv2.resize(rng.standard_normal(cells).astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC)


def _background(rng, amb: float, rgb: np.ndarray, temp: np.ndarray) -> Room:
    h, w = rgb.shape[:2]
    horizon = int(h * rng.uniform(0.5, 0.85))
    wall = _jitter(rng, WALLS[rng.integers(len(WALLS))], 6)
    rgb[:horizon] = wall
    # wall: warmer near the ceiling, gentle insulation blotches (both invisible)
    grad = rng.uniform(0.3, 1.5)
    rows = np.linspace(1, 0, h, dtype=np.float32)[:, None]
    temp[:] = amb + grad * rows + 0.25 * _lowfreq(rng, h, w)
    kind = ["wood", "carpet", "tile"][rng.integers(3)]
    floor = _jitter(rng, FLOORS[kind][rng.integers(len(FLOORS[kind]))], 8)
    rgb[horizon:] = floor
    temp[horizon:] -= rng.uniform(0.5, 2.5)
    if kind == "wood":
        gap = int(rng.uniform(20, 45))
        for x in range(int(rng.uniform(0, gap)), w, gap):
            cv2.line(rgb, (x, horizon), (x + int(rng.uniform(-60, 60)), h), _scale(floor, 0.75), 1)
    elif kind == "tile":
        step = int(rng.uniform(40, 90))
        for y in range(horizon + step // 3, h, step):
            cv2.line(rgb, (0, y), (w, y), _scale(floor, 0.8), 2)
        for x in range(int(rng.uniform(0, step)), w, step):
            cv2.line(rgb, (x, horizon), (x, h), _scale(floor, 0.8), 2)
    # skirting board
    sk = int(rng.uniform(6, 14))
    cv2.rectangle(rgb, (0, horizon - sk), (w, horizon), _jitter(rng, (235, 232, 225), 10), -1)
    table = None
    if rng.random() < 0.75:
        x0 = int(rng.uniform(-0.2, 0.35) * w)
        x1 = int(x0 + rng.uniform(0.55, 1.1) * w)
        top = int(rng.uniform(0.45, 0.72) * h)
        front = top + int(rng.uniform(0.02, 0.06) * h)
        table = (x0, top, x1, front)
    return Room(amb, horizon, table)


def _table_prims(rng, room: Room, h: int) -> List[Prim]:
    if room.table is None:
        return []
    x0, top, x1, front = room.table
    col = _jitter(rng, TABLES[rng.integers(len(TABLES))], 8)
    t = room.ambient + rng.uniform(-0.5, 0.5)
    depth = int(rng.uniform(0.04, 0.1) * h)
    prims = [Prim("rect", (x0, top - depth, x1, top), _scale(col, 1.08), t),
             Prim("rect", (x0, top, x1, front), _scale(col, 0.8), t)]
    leg = max(4, (front - top) // 2)
    for lx in (x0 + 10, x1 - 10 - leg):
        prims.append(Prim("rect", (lx, front, lx + leg, h), _scale(col, 0.7), t))
    return prims


def _surface_y(rng, room: Room, h: int) -> int:
    """Where objects stand: the table top, else the floor."""
    if room.table is not None:
        x0, top, x1, front = room.table
        return int(top - rng.uniform(0.2, 0.8) * (0.06 * h))
    return int(room.horizon + rng.uniform(0.1, 0.6) * (h - room.horizon))


# -- object classes ---------------------------------------------------------------------------

def _person(rng, room: Room, w: int, h: int, scale: float = 1.0) -> List[Prim]:
    amb = room.ambient
    hh = h * rng.uniform(0.14, 0.27) * scale            # head height
    hw = hh * rng.uniform(0.68, 0.8)
    cx = w * rng.uniform(0.2, 0.8)
    cy = h * rng.uniform(0.18, 0.42)
    skin = _jitter(rng, SKIN[rng.integers(len(SKIN))], 6)
    t_face = rng.uniform(33.0, 35.0)
    t_skin = t_face - rng.uniform(0.3, 1.5)             # hands/forearms a little cooler
    short = rng.random() < 0.35                          # T-shirt: thin fabric reads warmer than a sweater
    t_cloth = amb + (rng.uniform(7.5, 9.5) if short else rng.uniform(5.0, 7.5))
    cloth = _cloth(rng)
    prims = []
    ys = cy + 0.5 * hh + 0.22 * hh                      # shoulder line
    sw = hw * rng.uniform(2.3, 2.9)
    yb = ys + hh * rng.uniform(2.6, 3.2)                # hips
    # legs/trousers (cooler: thicker fabric, further from the core)
    trousers = _cloth(rng)
    t_tr = amb + rng.uniform(3.0, 7.0)
    for side in (-1, 1):
        prims.append(Prim("rect", (cx + side * sw * 0.05 - (sw * 0.2 if side < 0 else 0), yb - 5,
                                   cx + side * sw * 0.05 + (sw * 0.2 if side > 0 else 0), h + 5), trousers, t_tr))
    # torso
    torso = [(cx - sw / 2, ys + hh * 0.12), (cx - sw * 0.42, ys), (cx + sw * 0.42, ys), (cx + sw / 2, ys + hh * 0.12),
             (cx + sw * 0.42, yb), (cx - sw * 0.42, yb)]
    prims.append(Prim("poly", torso, cloth, t_cloth))
    # clothing details with no thermal trace: stripes, folds, print
    if rng.random() < 0.25:
        stripe = _cloth(rng)
        for k in range(int(rng.integers(3, 7))):
            y = ys + (k + 1) * (yb - ys) / 8
            prims.append(Prim("rect", (cx - sw * 0.42, y, cx + sw * 0.42, y + hh * 0.08), stripe, None, False))
    if rng.random() < 0.3:
        prims.append(Prim("rect", (cx - sw * 0.15, ys + hh * 0.6, cx + sw * 0.15, ys + hh * 1.2), _cloth(rng), None,
                          False))
    for k in range(int(rng.integers(1, 4))):
        x = cx + rng.uniform(-0.3, 0.3) * sw
        prims.append(Prim("line", ((x, ys + hh * 0.5), (x + rng.uniform(-15, 15), yb), 2), _scale(cloth, 0.8),
                          None, False))
    # neckline: V or round, bare skin
    if rng.random() < 0.6:
        prims.append(Prim("poly", [(cx - hw * 0.35, ys), (cx + hw * 0.35, ys), (cx, ys + hh * rng.uniform(0.25, 0.6))],
                          skin, t_skin + 0.5))
    # arms: sleeves, forearms (bare with short sleeves), hands
    pose = rng.integers(3)
    th = hw * rng.uniform(0.32, 0.42)
    for side in (-1, 1):
        sh = (cx + side * sw * 0.44, ys + th * 0.5)
        el = (cx + side * sw * rng.uniform(0.5, 0.6), ys + hh * rng.uniform(1.3, 1.6))
        if pose == 0:      # hanging
            wr = (el[0] + side * rng.uniform(0, 8), el[1] + hh * rng.uniform(1.1, 1.4))
        elif pose == 1:    # hands in front
            wr = (cx + side * sw * rng.uniform(0.05, 0.2), el[1] + hh * rng.uniform(0.4, 0.8))
        else:              # one raised / waving
            wr = (el[0] + side * hh * rng.uniform(0.2, 0.6), el[1] - hh * rng.uniform(0.8, 1.4)) if side > 0 else \
                (el[0], el[1] + hh * 1.2)
        if short:
            mid = ((sh[0] + el[0]) / 2, (sh[1] + el[1]) / 2)
            prims.append(Prim("line", (sh, mid, th), cloth, t_cloth))
            prims.append(Prim("line", (mid, el, th * 0.85), skin, t_skin))
            prims.append(Prim("line", (el, wr, th * 0.8), skin, t_skin))
        else:
            prims.append(Prim("line", (sh, el, th), cloth, t_cloth))
            prims.append(Prim("line", (el, wr, th * 0.9), cloth, t_cloth - rng.uniform(0, 1.5)))
        if rng.random() < 0.1:   # gloves/holding something: cool, dark
            prims.append(Prim("ellipse", (wr[0], wr[1], th * 0.6, th * 0.75, 0), (40, 40, 40), amb + 3))
        else:
            prims.append(Prim("ellipse", (wr[0], wr[1], th * 0.55, th * 0.7, rng.uniform(-30, 30)), skin, t_skin))
    # neck, head, hair, face
    prims.append(Prim("rect", (cx - hw * 0.22, cy + hh * 0.3, cx + hw * 0.22, ys + 2), _scale(skin, 0.92), t_skin + 0.7))
    hair_col = _jitter(rng, HAIR[rng.integers(len(HAIR))], 6)
    if rng.random() < 0.9:
        long_hair = rng.random() < 0.35
        prims.append(Prim("ellipse", (cx, cy - hh * 0.08 + (hh * 0.25 if long_hair else 0), hw * 0.56,
                                      hh * (0.78 if long_hair else 0.54), 0), hair_col, amb + rng.uniform(5, 9)))
    prims.append(Prim("ellipse", (cx, cy + hh * 0.05, hw * 0.47, hh * 0.45, 0), skin, t_face))
    if rng.random() < 0.3:   # fringe
        prims.append(Prim("ellipse", (cx, cy - hh * 0.3, hw * 0.45, hh * 0.16, 0), hair_col, amb + rng.uniform(6, 9)))
    ey = cy - hh * 0.02
    for side in (-1, 1):
        ex = cx + side * hw * 0.19
        prims.append(Prim("ellipse", (ex, ey, hw * 0.08, hh * 0.04, 0), (240, 240, 235), t_face + 0.8, False))
        prims.append(Prim("ellipse", (ex, ey, hw * 0.04, hh * 0.035, 0), _jitter(rng, (60, 45, 30), 15),
                          t_face + 0.8, False))
        prims.append(Prim("line", ((ex - hw * 0.1, ey - hh * 0.09), (ex + hw * 0.1, ey - hh * 0.1), hh * 0.025),
                          _scale(hair_col, 0.9), None, False))
    prims.append(Prim("ellipse", (cx, cy + hh * 0.14, hw * 0.06, hh * 0.08, 0), _scale(skin, 0.88),
                      t_face - rng.uniform(1.0, 2.5), False))     # nose tip: cooler
    prims.append(Prim("ellipse", (cx, cy + hh * 0.28, hw * 0.15, hh * 0.04, 0), _jitter(rng, (170, 80, 80), 15),
                      t_face + 0.3, False))
    if rng.random() < 0.25:   # glasses: LWIR-opaque lenses read cool
        frame = _jitter(rng, (25, 25, 25), 10)
        for side in (-1, 1):
            ex = cx + side * hw * 0.19
            prims.append(Prim("ellipse", (ex, ey, hw * 0.15, hh * 0.09, 0), frame, amb + rng.uniform(5, 8), False))
            prims.append(Prim("ellipse", (ex, ey, hw * 0.12, hh * 0.07, 0), _scale(skin, 0.95),
                              amb + rng.uniform(3, 6), False))
        prims.append(Prim("line", ((cx - hw * 0.05, ey), (cx + hw * 0.05, ey), 2), frame, None, False))
    return prims


def _microwave(rng, room: Room, w: int, h: int, scale: float = 1.0) -> List[Prim]:
    amb = room.ambient
    mw = w * rng.uniform(0.28, 0.52) * scale
    mh = mw * rng.uniform(0.55, 0.63)
    base = _surface_y(rng, room, h)
    x0 = w * rng.uniform(0.02, 0.98) - mw / 2
    y1 = base
    y0 = y1 - mh
    body_kind = rng.integers(4)
    body = [(238, 238, 234), (32, 32, 34), (175, 178, 182), (200, 202, 206)][body_kind]
    body = _jitter(rng, body, 5)
    eps = 0.35 if body_kind == 3 else 0.93           # stainless reflects the (ambient) room
    state = rng.random()
    running = state < 0.5
    warm_off = 0.5 <= state < 0.58                    # just used: warm, but nothing shows it
    heat = rng.uniform(0.0, 1.0)                      # how long it has run: shows as steam on the glass
    if running:
        t_window, t_door, t_body, t_vent = (amb + 16 + 14 * heat + rng.normal(0, 1.0), amb + 7 + 7 * heat,
                                            amb + 2 + 4 * heat, amb + 10 + 12 * heat)
    elif warm_off:
        t_window, t_door, t_body, t_vent = (amb + rng.uniform(6, 14), amb + rng.uniform(3, 8),
                                            amb + rng.uniform(1, 4), amb + rng.uniform(4, 10))
    else:
        t_window, t_door, t_body, t_vent = (amb + rng.uniform(0, 1), amb + rng.uniform(0, 1),
                                            amb + rng.uniform(0, 1.5), amb + rng.uniform(0, 1.5))

    def app(t, e=eps):
        return e * t + (1 - e) * amb

    prims = [Prim("rect", (x0 + mw * 0.06, y1, x0 + mw * 0.12, y1 + mh * 0.04), (25, 25, 25), app(t_body)),
             Prim("rect", (x0 + mw * 0.88, y1, x0 + mw * 0.94, y1 + mh * 0.04), (25, 25, 25), app(t_body)),
             Prim("rect", (x0, y0, x0 + mw, y1), body, app(t_body)),
             Prim("rect", (x0 + mw * 0.05, y0, x0 + mw * 0.95, y0 + mh * 0.05), _scale(body, 0.85), app(t_vent))]
    for k in range(int(rng.integers(6, 14))):     # vent slots on top
        xs = x0 + mw * (0.1 + 0.8 * k / 14)
        prims.append(Prim("rect", (xs, y0 + mh * 0.01, xs + 3, y0 + mh * 0.04), (20, 20, 20), None, False))
    door_col = body if rng.random() < 0.6 else _jitter(rng, (30, 30, 32), 6)
    dx0, dx1 = x0 + mw * 0.03, x0 + mw * 0.72
    dy0, dy1 = y0 + mh * 0.07, y1 - mh * 0.05
    prims.append(Prim("rect", (dx0, dy0, dx1, dy1), door_col, app(t_door, 0.9)))
    wx0, wx1 = dx0 + mw * 0.06, dx1 - mw * 0.06
    wy0, wy1 = dy0 + mh * 0.1, dy1 - mh * 0.1
    if running:
        glow = np.array([255, 205, 120]) * rng.uniform(0.8, 1.0)
        steam = 0.5 * heat
        prims.append(Prim("rect", (wx0, wy0, wx1, wy1), tuple(glow * 0.75 * (1 - steam) + 235 * steam), t_window))
        prims.append(Prim("ellipse", ((wx0 + wx1) / 2, wy1 - (wy1 - wy0) * 0.2, (wx1 - wx0) * 0.35,
                                      (wy1 - wy0) * 0.12, 0), tuple(np.minimum(glow * 1.05, 255)), None, False))
        food = _hsv(rng.uniform(0.0, 0.12), rng.uniform(0.5, 0.9), rng.uniform(0.4, 0.8))
        prims.append(Prim("ellipse", ((wx0 + wx1) / 2 + rng.uniform(-10, 10), wy1 - (wy1 - wy0) * 0.3,
                                      (wx1 - wx0) * 0.18, (wy1 - wy0) * 0.15, 0), food, None, False))
        prims.append(Prim("rect", (wx0, wy0, wx1, wy0 + (wy1 - wy0) * 0.15), tuple(np.minimum(glow * 1.1, 255)),
                          None, False))
        if heat > 0.3:     # condensation drops fogging the upper glass
            fog = tuple(np.minimum(glow * 0.6 * (1 - steam) + 245 * steam, 255))
            prims.append(Prim("rect", (wx0, wy0, wx1, wy0 + (wy1 - wy0) * heat * 0.6), fog, None, False))
    else:
        dark = rng.uniform(25, 60)
        prims.append(Prim("rect", (wx0, wy0, wx1, wy1), (dark, dark, dark * 1.05), app(t_window, 0.9)))
        # faint reflection of the room on the glass (visible only)
        prims.append(Prim("poly", [(wx0, wy0), (wx0 + (wx1 - wx0) * 0.3, wy0), (wx0, wy0 + (wy1 - wy0) * 0.5)],
                          (dark + 25, dark + 25, dark + 28), None, False))
    for yy in np.arange(wy0 + 4, wy1, 6):           # door mesh (visible only)
        prims.append(Prim("line", ((wx0, yy), (wx1, yy), 1), (0, 0, 0), None, False))
    prims.append(Prim("rect", (dx1 - mw * 0.035, dy0 + mh * 0.15, dx1 - mw * 0.01, dy1 - mh * 0.15),
                      _scale(door_col, 0.7), app(t_door, 0.9)))
    # control panel: display and buttons
    px0, px1 = x0 + mw * 0.75, x0 + mw * 0.97
    panel = _scale(body, 0.9) if rng.random() < 0.5 else (28, 28, 30)
    prims.append(Prim("rect", (px0, dy0, px1, dy1), panel, app(t_body + (1.5 if running else 0))))
    disp = (px0 + mw * 0.02, dy0 + mh * 0.05, px1 - mw * 0.02, dy0 + mh * 0.18)
    prims.append(Prim("rect", disp, (10, 12, 10), None, False))
    show = running or warm_off or rng.random() < 0.6
    if show:
        digit = _hsv([0.33, 0.55, 0.0][rng.integers(3)], 0.8, 1.0)
        n = 4 if not running else int(rng.integers(2, 5))
        dwid = (disp[2] - disp[0]) / 5
        for k in range(n):
            xd = disp[0] + dwid * (k + 0.6)
            prims.append(Prim("rect", (xd, disp[1] + 3, xd + dwid * 0.6, disp[3] - 3), digit, None, False))
    bw = (px1 - px0) * 0.3
    for r in range(int(rng.integers(3, 6))):
        for c in range(2):
            bx = px0 + (px1 - px0) * (0.15 + 0.45 * c)
            by = dy0 + mh * (0.28 + 0.12 * r)
            if by + bw * 0.5 < dy1:
                prims.append(Prim("rect", (bx, by, bx + bw, by + bw * 0.5), _scale(panel, 1.4) if panel[0] < 100
                                  else _scale(panel, 0.75), None, False))
    return prims


def _screen_content(rng, x0, y0, x1, y1, on: bool, light: float = 1.0) -> List[Prim]:
    if not on:
        d = rng.uniform(12, 35)
        return [Prim("poly", [(x0, y0), (x0 + (x1 - x0) * 0.45, y0), (x0, y0 + (y1 - y0) * 0.6)],
                     (d + 12, d + 12, d + 16), None, False)]
    out = [Prim("rect", (x0, y0, x1, y1), _hsv(rng.random(), rng.uniform(0.2, 0.8), rng.uniform(0.4, 0.95)),
                None, False)]
    for _ in range(int(rng.integers(1, 5))):
        wx0 = rng.uniform(x0, x1 - (x1 - x0) * 0.3)
        wy0 = rng.uniform(y0, y1 - (y1 - y0) * 0.3)
        wx1 = min(x1, wx0 + (x1 - x0) * rng.uniform(0.3, 0.7))
        wy1 = min(y1, wy0 + (y1 - y0) * rng.uniform(0.3, 0.7))
        paper = (245, 245, 245) if rng.random() < 0.6 else (45, 48, 55)
        out.append(Prim("rect", (wx0, wy0, wx1, wy1), paper, None, False))
        out.append(Prim("rect", (wx0, wy0, wx1, wy0 + max(3, (wy1 - wy0) * 0.1)), _hsv(rng.random(), 0.5, 0.7),
                        None, False))
        ink = (80, 80, 80) if paper[0] > 128 else (200, 200, 200)
        for yy in np.arange(wy0 + (wy1 - wy0) * 0.2, wy1 - 3, 6):
            out.append(Prim("line", ((wx0 + 4, yy), (wx0 + 4 + (wx1 - wx0 - 8) * rng.uniform(0.3, 0.95), yy), 1),
                            ink, None, False))
    out.append(Prim("rect", (x0, y1 - max(3, (y1 - y0) * 0.06), x1, y1), (30, 30, 40), None, False))  # taskbar
    for p in out:
        p.rgb = _scale(p.rgb, light)
    return out


def _keyboard(rng, cx, y, kw, amb, col) -> List[Prim]:
    kh = kw * rng.uniform(0.12, 0.2)
    x0, x1 = cx - kw / 2, cx + kw / 2
    out = [Prim("rect", (x0, y - kh, x1, y), col, amb + rng.uniform(0.3, 1.5))]
    key = _scale(col, 1.6) if col[0] < 100 else _scale(col, 0.8)
    for r in range(4):
        yy = y - kh + kh * (0.12 + 0.21 * r)
        prims_x = np.arange(x0 + 3, x1 - 6, max(6, kw / 18))
        for xx in prims_x:
            out.append(Prim("rect", (xx, yy, xx + max(3, kw / 24), yy + kh * 0.14), key, None, False))
    return out


def _computer(rng, room: Room, w: int, h: int, scale: float = 1.0) -> List[Prim]:
    amb = room.ambient
    base = _surface_y(rng, room, h)
    on = rng.random() < 0.75
    prims: List[Prim] = []
    cx = w * rng.uniform(0.15, 0.85)
    if rng.random() < 0.6:       # desktop monitor (+ keyboard, maybe a tower)
        mw = w * rng.uniform(0.28, 0.55) * scale
        mh = mw * (9 / 16 if rng.random() < 0.6 else 10 / 16)
        stand_h = mh * rng.uniform(0.2, 0.35)
        y1 = base - stand_h
        y0 = y1 - mh
        x0, x1 = cx - mw / 2, cx + mw / 2
        bezel = _jitter(rng, (25, 25, 27) if rng.random() < 0.75 else (200, 200, 205), 5)
        b = mw * rng.uniform(0.015, 0.04)
        light = rng.uniform(0.55, 1.0)      # backlight level: brighter screens run warmer
        t_screen = amb + (4 + 6 * light if on else rng.uniform(0, 1))
        t_bezel = amb + (2 + 3 * light if on else rng.uniform(0, 0.8))
        prims += [Prim("rect", (cx - mw * 0.15, base - mh * 0.04, cx + mw * 0.15, base), bezel, amb + 0.5),
                  Prim("rect", (cx - mw * 0.04, y1, cx + mw * 0.04, base), bezel, amb + (1.5 if on else 0.3)),
                  Prim("rect", (x0, y0, x1, y1), bezel, t_bezel),
                  Prim("rect", (x0 + b, y0 + b, x1 - b, y1 - b * 1.5), (15, 15, 18), t_screen)]
        if on:   # backlight heat rises: top of the panel warmer (thermal only)
            prims.append(Prim("rect", (x0 + b, y0 + b, x1 - b, y0 + b + (mh - 2.5 * b) * 0.35), None,
                              t_screen + rng.uniform(0.5, 2.0)))
        prims += _screen_content(rng, x0 + b, y0 + b, x1 - b, y1 - b * 1.5, on, light)
        if on:
            prims.append(Prim("ellipse", (x1 - b * 2, y1 - b * 0.7, 2, 2, 0), (120, 200, 255), None, False))
        if rng.random() < 0.8:
            kcol = _jitter(rng, (30, 30, 32) if rng.random() < 0.6 else (225, 225, 222), 5)
            prims += _keyboard(rng, cx + rng.uniform(-0.1, 0.1) * mw, base + mh * 0.15, mw * rng.uniform(0.6, 0.8),
                               amb, kcol)
            mx = cx + mw * rng.uniform(0.45, 0.6)
            prims.append(Prim("ellipse", (mx, base + mh * 0.1, mw * 0.035, mw * 0.05, 0), kcol,
                              amb + rng.uniform(0.5, 2.5)))
        if rng.random() < 0.35:  # tower
            tw, th = mw * rng.uniform(0.25, 0.35), mw * rng.uniform(0.6, 0.8)
            tx = x1 + mw * 0.05 if rng.random() < 0.5 else x0 - mw * 0.05 - tw
            tcol = _jitter(rng, (30, 30, 33) if rng.random() < 0.7 else (200, 200, 200), 5)
            t_case = amb + (rng.uniform(5, 7) if on else rng.uniform(0, 1))
            prims.append(Prim("rect", (tx, base - th, tx + tw, base), tcol, t_case))
            prims.append(Prim("rect", (tx + tw * 0.15, base - th * 0.45, tx + tw * 0.85, base - th * 0.1),
                              _scale(tcol, 0.6) if tcol[0] > 100 else _scale(tcol, 1.8),
                              t_case + (rng.uniform(3, 7) if on else 0)))
            if on:
                prims.append(Prim("ellipse", (tx + tw / 2, base - th * 0.85, 3, 3, 0), (80, 160, 255), None, False))
    else:                        # laptop: lid with screen, warm base
        lw = w * rng.uniform(0.3, 0.5) * scale
        lid_h = lw * rng.uniform(0.55, 0.65)
        depth = lw * rng.uniform(0.12, 0.2)
        shell = _jitter(rng, [(190, 192, 196), (40, 40, 44), (120, 122, 128)][rng.integers(3)], 5)
        light = rng.uniform(0.55, 1.0)
        t_base = amb + (8 + 5 * light if on else rng.uniform(0, 1))
        t_screen = amb + (3 + 5 * light if on else rng.uniform(0, 1))
        x0, x1 = cx - lw / 2, cx + lw / 2
        hinge = base - depth
        prims.append(Prim("poly", [(x0, base), (x1, base), (x1 - lw * 0.06, hinge), (x0 + lw * 0.06, hinge)],
                          shell, t_base))
        prims.append(Prim("poly", [(x0 + lw * 0.1, base - depth * 0.35), (x1 - lw * 0.1, base - depth * 0.35),
                                   (x1 - lw * 0.14, hinge + depth * 0.1), (x0 + lw * 0.14, hinge + depth * 0.1)],
                          _scale(shell, 0.5) if shell[0] > 100 else _scale(shell, 0.6), t_base + (3 if on else 0)))
        ly0 = hinge - lid_h
        prims.append(Prim("rect", (x0 + lw * 0.06, ly0, x1 - lw * 0.06, hinge), _scale(shell, 0.35), t_screen))
        b = lw * 0.025
        prims.append(Prim("rect", (x0 + lw * 0.06 + b, ly0 + b, x1 - lw * 0.06 - b, hinge - b), (15, 15, 18),
                          t_screen))
        prims += _screen_content(rng, x0 + lw * 0.06 + b, ly0 + b, x1 - lw * 0.06 - b, hinge - b, on, light)
        prims.append(Prim("rect", (x0 + lw * 0.1, hinge - 3, x1 - lw * 0.1, hinge + 2), None,
                          amb + (rng.uniform(14, 22) if on else rng.uniform(0, 1))))     # hinge vent
    return prims


# -- room clutter: nuisances ------------------------------------------------------------------

def _clutter(rng, room: Room, w: int, h: int) -> Tuple[List[Prim], List[Tuple[float, float, float]]]:
    amb = room.ambient
    prims: List[Prim] = []
    lights = []
    if rng.random() < 0.35:      # window (cold glass), maybe a radiator under it
        ww, wh = w * rng.uniform(0.2, 0.4), h * rng.uniform(0.25, 0.4)
        wx = rng.uniform(0, w - ww)
        wy = rng.uniform(0.02, 0.15) * h
        frame = _jitter(rng, (240, 240, 238), 6)
        day = rng.random() < 0.7
        sky = _jitter(rng, (185, 215, 240) if day else (30, 40, 70), 15)
        prims += [Prim("rect", (wx - 8, wy - 8, wx + ww + 8, wy + wh + 8), frame, amb - rng.uniform(0.5, 2), False),
                  Prim("rect", (wx, wy, wx + ww, wy + wh), sky, amb - rng.uniform(2, 8), False),
                  Prim("rect", (wx + ww / 2 - 4, wy, wx + ww / 2 + 4, wy + wh), frame, None, False)]
        if rng.random() < 0.6 and wy + wh + 30 < room.horizon:
            rh = min(room.horizon - (wy + wh) - 20, h * 0.15)
            ry = room.horizon - rh - 10
            hot = rng.random() < 0.6
            rcol = _jitter(rng, (238, 238, 234), 5)
            t_rad = amb + (rng.uniform(15, 35) if hot else rng.uniform(0, 1))
            prims.append(Prim("rect", (wx, ry, wx + ww, ry + rh), rcol, t_rad))
            for xx in np.arange(wx + 5, wx + ww, 9):
                prims.append(Prim("line", ((xx, ry + 3), (xx, ry + rh - 3), 2), _scale(rcol, 0.8), None, False))
    if rng.random() < 0.25:      # door
        dw = w * rng.uniform(0.15, 0.22)
        dx = rng.uniform(0, w - dw)
        dcol = _jitter(rng, [(150, 110, 70), (245, 245, 240), (110, 80, 55)][rng.integers(3)], 8)
        prims += [Prim("rect", (dx, room.horizon * rng.uniform(0.05, 0.2), dx + dw, room.horizon), dcol,
                       amb - rng.uniform(0, 1), False),
                  Prim("ellipse", (dx + dw * 0.85, room.horizon * 0.6, 5, 5, 0), (200, 190, 120), None, False)]
    for _ in range(int(rng.integers(0, 3))):   # posters/pictures: colour, no heat
        pw, ph = w * rng.uniform(0.08, 0.22), h * rng.uniform(0.08, 0.25)
        px, py = rng.uniform(0, w - pw), rng.uniform(0.02, 0.5) * room.horizon
        prims.append(Prim("rect", (px - 4, py - 4, px + pw + 4, py + ph + 4), _jitter(rng, (60, 45, 35), 30), None,
                          False))
        prims.append(Prim("rect", (px, py, px + pw, py + ph), _hsv(rng.random(), rng.uniform(0.2, 0.8), 0.8),
                          None, False))
        for _ in range(int(rng.integers(2, 6))):
            qx, qy = rng.uniform(px, px + pw * 0.7), rng.uniform(py, py + ph * 0.7)
            prims.append(Prim("rect", (qx, qy, qx + pw * rng.uniform(0.1, 0.3), qy + ph * rng.uniform(0.1, 0.3)),
                              _hsv(rng.random(), rng.uniform(0.3, 1), rng.uniform(0.3, 1)), None, False))
    if rng.random() < 0.3:       # shelf with books
        sw_, sy = w * rng.uniform(0.2, 0.4), rng.uniform(0.15, 0.45) * room.horizon
        sx = rng.uniform(0, w - sw_)
        x = sx
        while x < sx + sw_ - 10:
            bw = rng.uniform(8, 20)
            bh = rng.uniform(35, 60)
            prims.append(Prim("rect", (x, sy - bh, x + bw, sy), _hsv(rng.random(), rng.uniform(0.3, 0.9),
                                                                     rng.uniform(0.3, 0.9)), amb + rng.uniform(-0.3, 0.3)))
            x += bw + 1
        prims.append(Prim("rect", (sx - 5, sy, sx + sw_ + 5, sy + 8), _jitter(rng, (130, 95, 60), 15), amb))
    if rng.random() < 0.2:       # plant: leaves cooler than the air (transpiration)
        px = rng.uniform(0.05, 0.95) * w
        py = _surface_y(rng, room, h)
        ps = rng.uniform(30, 60)
        prims.append(Prim("poly", [(px - ps * 0.5, py - ps), (px + ps * 0.5, py - ps), (px + ps * 0.35, py),
                                   (px - ps * 0.35, py)], _jitter(rng, (170, 90, 60), 12), amb - rng.uniform(0, 1)))
        for _ in range(int(rng.integers(5, 10))):
            lx, ly = px + rng.uniform(-ps, ps), py - ps - rng.uniform(0, ps * 1.5)
            prims.append(Prim("ellipse", (lx, ly, ps * 0.35, ps * 0.15, rng.uniform(0, 180)),
                              _hsv(rng.uniform(0.22, 0.38), rng.uniform(0.5, 0.9), rng.uniform(0.3, 0.7)),
                              amb - rng.uniform(0.5, 2.5)))
    if rng.random() < 0.2:       # lamp: bright and hot
        lx = rng.uniform(0.1, 0.9) * w
        ly = rng.uniform(0.03, 0.3) * h
        r = rng.uniform(12, 25)
        shade = _jitter(rng, (235, 225, 200), 15)
        prims.append(Prim("poly", [(lx - r * 1.6, ly + r), (lx + r * 1.6, ly + r), (lx + r, ly - r), (lx - r, ly - r)],
                          shade, amb + rng.uniform(3, 10)))
        prims.append(Prim("ellipse", (lx, ly + r * 1.1, r * 0.8, r * 0.4, 0), (255, 250, 235), amb + rng.uniform(20, 45)))
        lights.append((lx, ly + r, rng.uniform(0.2, 0.5)))
    if rng.random() < 0.5:       # wall socket (visible only)
        sx, sy = rng.uniform(0.05, 0.95) * w, room.horizon - rng.uniform(20, 60)
        prims.append(Prim("rect", (sx, sy, sx + 18, sy + 18), (240, 240, 236), None, False))
        prims.append(Prim("ellipse", (sx + 9, sy + 9, 5, 5, 0), (200, 200, 196), None, False))
    return prims, lights


# -- sensor models ------------------------------------------------------------------------------

def _camera_visible(rng, rgb: np.ndarray, lights) -> np.ndarray:
    h, w = rgb.shape[:2]
    xx = np.arange(w, dtype=np.float32)[None, :]
    yy = np.arange(h, dtype=np.float32)[:, None]
    xn, yn = xx / w - 0.5, yy / h - 0.5
    shade = 1.0 + rng.uniform(-0.3, 0.3) * xn + rng.uniform(-0.3, 0.3) * yn   # light direction
    shade *= 1.0 - rng.uniform(0.05, 0.3) * (xn * xn + yn * yn) * 2            # lens vignetting
    shade *= 1.0 + 0.04 * _lowfreq(rng, h, w, (4, 5))
    gain = rng.uniform(0.6, 1.2)
    wb = np.array([1 + rng.normal(0, 0.05), 1.0, 1 + rng.normal(0, 0.05)], dtype=np.float32)
    if rng.random() < 0.4:    # tungsten-ish light
        wb *= np.array([1.08, 1.0, 0.85], dtype=np.float32)
    out = rgb * (shade * np.float32(gain))[:, :, None] * wb
    for lx, ly, strength in lights:
        glow = np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / np.float32(2 * (0.18 * w) ** 2)) * np.float32(strength * 255)
        out += glow[:, :, None] * np.array([1.0, 0.92, 0.75], dtype=np.float32)
    out = cv2.GaussianBlur(out, (0, 0), rng.uniform(0.5, 0.9))
    out += rng.standard_normal((h, w, 1), dtype=np.float32) * np.float32(rng.uniform(1.0, 2.5))  # luminance noise
    return np.clip(out, 0, 255).astype(np.uint8)


def _camera_ir(rng, temp: np.ndarray, amb: float) -> np.ndarray:
    """Apparent temperature at visible resolution -> FLIR ONE-like 160x120 degC."""
    ir = cv2.resize(temp, (IR_W, IR_H), interpolation=cv2.INTER_AREA)
    # hot objects warm the air and surfaces around them
    excess = np.maximum(ir - amb, 0)
    ir = ir + cv2.GaussianBlur(excess, (0, 0), rng.uniform(4, 8)) * rng.uniform(0.04, 0.12)
    # residual visible/IR misalignment (parallax after calibration): up to ~1 IR pixel
    dx, dy = rng.uniform(-1, 1, size=2)
    m = np.array([[1, 0, dx], [0, 1, dy]], dtype=np.float32)
    ir = cv2.warpAffine(ir, m, (IR_W, IR_H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    ir = cv2.GaussianBlur(ir, (0, 0), rng.uniform(0.6, 0.95))        # optics PSF
    yy, xx = np.mgrid[0:IR_H, 0:IR_W].astype(np.float32)
    r2 = ((xx / IR_W - 0.5) ** 2 + (yy / IR_H - 0.5) ** 2) * 2
    ir += rng.uniform(-0.8, 0.3) * r2 + rng.normal(0, 0.3)            # vignetting drift, offset error
    ir += rng.normal(0, 0.03, size=(1, IR_W)).astype(np.float32)       # column fixed pattern
    ir += rng.normal(0, rng.uniform(0.07, 0.12), size=ir.shape).astype(np.float32)   # NETD
    return np.round(ir, 2).astype(np.float32)


def render_scene(seed: int, index: int, object_class: str) -> Tuple[np.ndarray, np.ndarray, Dict]:
    """One SYNTHETIC pair: (visible 480x640x3 uint8 RGB, IR 120x160 float32 degC, info)."""
    if object_class not in spec.OBJECT_CLASSES:
        raise ValueError("unknown object class %r (%s)" % (object_class, ", ".join(spec.OBJECT_CLASSES)))
    rng = np.random.default_rng([seed, index])
    h, w = VIS_H, VIS_W
    amb = float(np.clip(rng.normal(21.0, 1.0), 18.0, 24.0))
    rgb = np.empty((h, w, 3), np.float32)
    temp = np.empty((h, w), np.float32)
    room = _background(rng, amb, rgb, temp)
    clutter, lights = _clutter(rng, room, w, h)
    _render(clutter, rgb, temp)
    makers = {"human": _person, "microwave_oven": _microwave, "computer": _computer}
    objects: List[Prim] = []
    table = _table_prims(rng, room, h)
    others = [c for c in spec.OBJECT_CLASSES if c != object_class]
    second = others[rng.integers(len(others))] if rng.random() < 0.2 else None
    if second is not None:
        objects += makers[second](rng, room, w, h, scale=0.6)
    main = makers[object_class](rng, room, w, h)
    if object_class == "human":
        objects = (objects + main + table) if rng.random() < 0.5 else (objects + table + main)
    else:
        objects = table + objects + main
    # cast shadows on the wall/floor (visible only), from a low-resolution caster mask
    mask = np.zeros((h // 4, w // 4), np.float32)
    _render_mask([p for p in objects if p.caster], mask, 0.25)
    sdx, sdy = rng.uniform(-8, 8), rng.uniform(2, 8)
    shadow = cv2.warpAffine(mask, np.array([[1, 0, sdx], [0, 1, sdy]], np.float32), (w // 4, h // 4))
    shadow = cv2.GaussianBlur(shadow, (0, 0), rng.uniform(2, 4))
    shadow = cv2.resize(shadow, (w, h), interpolation=cv2.INTER_LINEAR)
    rgb *= (1.0 - rng.uniform(0.15, 0.35) * shadow)[:, :, None]
    _render(objects, rgb, temp)
    visible = _camera_visible(rng, rgb, lights)
    ir = _camera_ir(rng, temp, amb)
    info = {"object_class": object_class, "second_object": second, "ambient": round(amb, 2),
            "t_min": float(ir.min()), "t_max": float(ir.max()), "t_mean": float(ir.mean())}
    return visible, ir, info


# -- writing a pairs folder -------------------------------------------------------------------

def class_plan(count: int, seed: int) -> List[str]:
    """Exactly balanced classes (up to one), in a seeded random order."""
    classes = [spec.OBJECT_CLASSES[i % len(spec.OBJECT_CLASSES)] for i in range(count)]
    order = np.random.default_rng([seed, 1 << 20]).permutation(count)
    return [classes[i] for i in order]


def sample_id(index: int) -> str:
    return "syn_%05d" % index


def _make_one(args):
    folder, seed, index, object_class, png_compression = args
    cv2.setNumThreads(1)
    visible, ir, info = render_scene(seed, index, object_class)
    sid = sample_id(index)
    write_png(os.path.join(folder, "visible", sid + ".png"), visible, png_compression, fast=True)
    write_npy(os.path.join(folder, "ir", sid + ".npy"), ir)
    info["id"] = sid
    return info


def summarize(infos: Sequence[Dict]) -> Dict:
    """Class balance and temperature ranges of generated pairs."""
    out = {"count": len(infos), "classes": {}}
    for c in spec.OBJECT_CLASSES:
        sub = [i for i in infos if i["object_class"] == c]
        if not sub:
            continue
        tmax = np.array([i["t_max"] for i in sub])
        tmin = np.array([i["t_min"] for i in sub])
        out["classes"][c] = {"count": len(sub), "t_min": float(tmin.min()), "t_max": float(tmax.max()),
                             "median_image_max": float(np.median(tmax)),
                             "median_image_min": float(np.median(tmin))}
    if infos:
        out["t_min"] = float(min(i["t_min"] for i in infos))
        out["t_max"] = float(max(i["t_max"] for i in infos))
        out["ambient"] = [float(min(i["ambient"] for i in infos)), float(max(i["ambient"] for i in infos))]
    return out


def format_summary(s: Dict) -> str:
    lines = ["SYNTHETIC pairs: %d" % s["count"]]
    for c, d in s["classes"].items():
        lines.append("  %-15s %5d pairs (%4.1f%%)  IR %6.1f .. %6.1f degC  (median image range %.1f .. %.1f)"
                     % (c, d["count"], 100.0 * d["count"] / max(1, s["count"]), d["t_min"], d["t_max"],
                        d["median_image_min"], d["median_image_max"]))
    if "t_min" in s:
        lines.append("  all             IR %.1f .. %.1f degC, room ambient %.1f .. %.1f degC"
                     % (s["t_min"], s["t_max"], s["ambient"][0], s["ambient"][1]))
    return "\n".join(lines)


def generate(out: str, count: int = spec.PAPER_TRAIN + spec.PAPER_TEST, seed: int = spec.SEED,
             workers: Optional[int] = None, png_compression: int = 1, progress: bool = True) -> Dict:
    """Write a SYNTHETIC pairs folder (visible/, ir/, classes.csv, README.txt, pairs.json) atomically."""
    from tqdm import tqdm

    from thermalnet.atomic import atomic_output_dir
    from .parallel import make_pool

    if count < 1:
        raise ValueError("count must be >= 1, got %d" % count)
    plan = class_plan(count, seed)
    workers = max(1, workers or os.cpu_count() or 1)
    with atomic_output_dir(out, marker="pairs.json") as tmp:
        os.makedirs(os.path.join(tmp, "visible"))
        os.makedirs(os.path.join(tmp, "ir"))
        jobs = [(tmp, seed, i, plan[i], png_compression) for i in range(count)]
        bar = tqdm(total=count, desc="SYNTHETIC scenes", unit="pair", disable=not progress)
        infos = []
        if workers == 1 or count < 8:
            for j in jobs:
                infos.append(_make_one(j))
                bar.update()
        else:
            with make_pool(workers) as pool:
                for info in pool.imap(_make_one, jobs, chunksize=4):
                    infos.append(info)
                    bar.update()
        bar.close()
        summary = summarize(infos)
        write_text(os.path.join(tmp, "classes.csv"),
                   "stem,object_class\n" + "".join("%s,%s\n" % (i["id"], i["object_class"]) for i in infos))
        write_text(os.path.join(tmp, "README.txt"), README.format(version=GENERATOR_VERSION, seed=seed, count=count))
        meta = {"synthetic": True, "generator": "dataset_builder.synthetic", "version": GENERATOR_VERSION,
                "seed": seed, "count": count, "ir_units": "degC",
                "note": "SYNTHETIC FLIR-ONE-like indoor scenes (no real camera data)", "summary": summary}
        write_text(os.path.join(tmp, "pairs.json"), json.dumps(meta, indent=1))
    return summary
