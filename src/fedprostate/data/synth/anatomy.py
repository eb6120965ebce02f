"""A patient's pelvis as an analytic phantom in world millimetres (ITK LPS: +x left, +y posterior,
+z superior), sampled on any voxel grid.

Anatomy: prostate (peripheral zone, transition zone, anterior fibromuscular stroma) tilted along its
own axis, rectum (wall + air or gel lumen), obturator internus muscles, bladder, fat elsewhere.
Tissues carry three physical properties: relative T2-weighted signal (fat = 1), b=0 DWI signal with
fat suppression (PZ ~ 0.8) and ADC in 1e-6 mm2/s at b = 1000. Findings (cancers and their benign
mimics) are soft ellipsoids painted on top. Ranges follow the prostate MRI literature (PI-RADS v2.1
descriptions; ADC of csPCa ~600-1000, benign PZ ~1400-2000, TZ/BPH ~1000-1400).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

# (relative T2, b=0 DWI signal, ADC 1e-6 mm2/s) of non-prostate tissue.
FAT = (1.0, 0.08, 300.0)  # fat-suppressed on DWI: its ADC is noise
MUSCLE = (0.32, 0.35, 1450.0)
RECTAL_WALL = (0.40, 0.50, 1200.0)
AIR = (0.03, 0.01, 0.0)
GEL = (0.95, 1.00, 2500.0)
URINE = (1.50, 1.30, 2900.0)
AS_TISSUE = (0.25, 0.35, 1000.0)

# csPCa mean ADC by ISUP (restriction grows with grade); SD of lesion means ~160 (literature).
CSPCA_ADC = {2: 950.0, 3: 870.0, 4: 800.0, 5: 730.0}
ISUP_PROBS = {2: 0.45, 3: 0.25, 4: 0.15, 5: 0.15}
# Morphology by kind, from the PI-RADS v2.1 lexicon (Turkbey et al., Eur Urol 2019): csPCa is
# homogeneous, moderately hypointense with non-circumscribed ("ill-defined", lenticular or
# irregular) margins; BPH nodules are circumscribed, often encapsulated by a thin T2-dark rim, with
# heterogeneous ("organised chaos") signal; prostatitis is band-like or wedge-shaped with
# indistinct margins and mild, diffuse restriction. Fixed before any model was measured.
MORPHOLOGY = {  # kind: (het, lobulation, rim_mm)
    "cspca": (0.04, 0.20, 0.0),
    "isup1": (0.06, 0.10, 0.0),
    "bph_nodule": (0.16, 0.0, 1.0),
    "prostatitis": (0.10, 0.12, 0.0),
    "benign_biopsy": (0.10, 0.08, 0.0),
}
RIM_T2 = 0.22  # relative T2 of a BPH nodule's fibrous pseudo-capsule (dark)


@dataclass
class Lesion:
    """A focal finding (biopsied or not) in world mm with its tissue properties.

    Morphology follows the PI-RADS v2.1 lexicon (``MORPHOLOGY``): ``het`` is the amplitude of
    internal signal heterogeneity (csPCa: homogeneous; BPH: "organised chaos"), ``lobulation`` the
    irregularity of the margin (relative to the radius), ``rim_mm`` the thickness of a T2-dark
    capsule (encapsulated BPH nodules), ``edge_mm`` the sharpness of the boundary.
    """

    kind: str  # cspca | isup1 | bph_nodule | prostatitis | benign_biopsy
    isup: int
    zone: str  # PZ | TZ | AS
    center: np.ndarray  # world mm
    radii: np.ndarray  # semi-axes in the gland frame, mm
    edge_mm: float  # margin sharpness: BPH nodules are circumscribed, prostatitis diffuse
    props: tuple[float, float, float]  # (T2, S0, ADC)
    biopsied: bool = True
    het: float = 0.08
    lobulation: float = 0.0
    rim_mm: float = 0.0

    @property
    def radius_mm(self) -> float:
        return float(np.mean(self.radii))


@dataclass
class Phantom:
    """One patient's anatomy; ``sample`` evaluates tissue properties at world points."""

    center: np.ndarray  # gland centre, world mm
    tilt: np.ndarray  # 3x3 rotation: gland frame -> world
    gland_radii: np.ndarray
    tz_center: np.ndarray  # gland frame
    tz_radii: np.ndarray
    pz_props: tuple[float, float, float]
    tz_props: tuple[float, float, float]
    rectum_center: np.ndarray  # world (x, y); runs along z
    rectum_radii: np.ndarray
    rectum_lumen: tuple[float, float, float]
    muscle_dx: float
    bladder_center: np.ndarray
    bladder_radii: np.ndarray
    textures: list[np.ndarray]  # smooth unit-SD random fields over the gland box
    lesions: list[Lesion] = field(default_factory=list)

    def gland_frame(self, X, Y, Z):
        """World coordinates -> gland frame (u: left, v: posterior, w: superior along the gland axis)."""
        dx, dy, dz = X - self.center[0], Y - self.center[1], Z - self.center[2]
        R = self.tilt
        u = R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz
        v = R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz
        w = R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz
        return u, v, w

    def zone_at(self, point: np.ndarray) -> str:
        """Zone label at one world point ("out" outside the gland)."""
        u, v, w = self.gland_frame(*[np.array([c], dtype=np.float64) for c in point])
        m = _gland_parts(self, u, v, w, width=0.01)
        if m["gland"][0] < 0.5:
            return "out"
        return max(("PZ", "TZ", "AS"), key=lambda z: m[z][0])


def soft(dist_mm, width):
    """Soft membership from a signed distance (negative inside): partial volume at the boundary."""
    return 0.5 * (1.0 - np.tanh(dist_mm / (2.0 * width)))


def _ellipsoid_dist(u, v, w, radii):
    r = np.sqrt((u / radii[0]) ** 2 + (v / radii[1]) ** 2 + (w / radii[2]) ** 2)
    return (r - 1.0) * float(np.mean(radii))


def _gland_parts(ph: Phantom, u, v, w, width):
    a, b, c = ph.gland_radii
    # Pear shape (narrow apex) and a posterior surface flattened by the rectum.
    a_eff = a * np.clip(1.0 + 0.15 * w / c, 0.7, 1.2)
    b_eff = np.where(v > 0, 0.85 * b, b)
    r = np.sqrt((u / a_eff) ** 2 + (v / b_eff) ** 2 + (w / c) ** 2)
    gland = soft((r - 1.0) * b, width)
    tz = soft(_ellipsoid_dist(u, v - ph.tz_center[1], w - ph.tz_center[2], ph.tz_radii), width)
    as_band = soft(v + 0.72 * b, 1.2 * width) * (1.0 - tz)  # anterior fibromuscular stroma
    tz = tz * gland
    as_band = as_band * gland
    pz = np.clip(gland - tz - as_band, 0.0, 1.0)
    return {"gland": gland, "TZ": tz, "AS": as_band, "PZ": pz}


def _paint(values: list[np.ndarray], m, props, keys):
    for arr, k in zip(values, keys, strict=True):
        arr += m * (props[k] - arr)


def _box(grid, center, radius_mm, within=None):
    """Index-space bounding box (numpy z, y, x slices) of a ball, clipped to the grid or ``within``."""
    idx = grid.direction.T @ (np.asarray(center) - grid.origin) / grid.spacing
    half = radius_mm / grid.spacing
    lo = np.floor(idx - half).astype(int)
    hi = np.ceil(idx + half).astype(int) + 1
    if within is None:
        within = tuple(slice(0, n) for n in grid.size[::-1])
    out = []
    for axis in range(3):  # numpy axis order is (z, y, x) = index axes (2, 1, 0)
        bound = within[axis]
        a, b = lo[2 - axis], hi[2 - axis]
        out.append(
            slice(min(max(a, bound.start), bound.stop), max(min(b, bound.stop), bound.start))
        )
    return tuple(out)


def _rel(outer, inner):
    return tuple(
        slice(i.start - o.start, i.stop - o.start) for o, i in zip(outer, inner, strict=True)
    )


def sample_phantom(ph: Phantom, grid, props: tuple[int, ...], width: float, shift=(0.0, 0.0, 0.0)):
    """Evaluate tissue properties (indices into (T2, S0, ADC)) on a voxel grid.

    ``shift`` moves the anatomy (EPI distortion). Returns (property arrays, gland membership,
    lesion memberships as (slices, array) pairs, coordinates X, Y, Z). The gland and its lesions
    are only evaluated inside their bounding boxes: the gland fills a few % of the field of view."""
    X, Y, Z = grid.world(shift)
    shape = tuple(grid.size[::-1])
    X, Y, Z = (np.broadcast_to(c, shape) for c in (X, Y, Z))
    values = [np.full(shape, FAT[k], dtype=np.float32) for k in props]
    # Obturator internus muscles, both sides of the gland, running cranio-caudally.
    for side in (-1.0, 1.0):
        dx = (X - (ph.center[0] + side * ph.muscle_dx)) / 9.0
        dy = (Y - (ph.center[1] + 4.0)) / 22.0
        _paint(values, soft((np.sqrt(dx**2 + dy**2) - 1.0) * 9.0, width), MUSCLE, props)
    # Rectum: wall ring and lumen (air or ultrasound gel).
    rx = (X - ph.rectum_center[0]) / ph.rectum_radii[0]
    ry = (Y - ph.rectum_center[1]) / ph.rectum_radii[1]
    rr = np.sqrt(rx**2 + ry**2) * float(np.mean(ph.rectum_radii))
    _paint(values, soft(rr - float(np.mean(ph.rectum_radii)), width), RECTAL_WALL, props)
    _paint(values, soft(rr - float(np.mean(ph.rectum_radii)) + 3.5, width), ph.rectum_lumen, props)
    bx, by, bz = X - ph.bladder_center[0], Y - ph.bladder_center[1], Z - ph.bladder_center[2]
    _paint(values, soft(_ellipsoid_dist(bx, by, bz, ph.bladder_radii), width), URINE, props)

    gbox = _box(
        grid, ph.center + np.asarray(shift), float(max(ph.gland_radii)) * 1.25 + 4.0 * width + 2.0
    )
    sub = [v[gbox] for v in values]
    u, v, w = ph.gland_frame(X[gbox], Y[gbox], Z[gbox])
    parts = _gland_parts(ph, u, v, w, width)
    tex = [_texture(t, u, v, w) for t in ph.textures]
    # Zones with texture: PZ fairly homogeneous, TZ "organised chaos" of BPH.
    for zone, base, amp_t2, amp_adc, t in (
        ("PZ", ph.pz_props, 0.06, 0.07, tex[0]),
        ("TZ", ph.tz_props, 0.16, 0.10, tex[1]),
    ):
        zp = (base[0] * (1 + amp_t2 * t), base[1], base[2] * (1 + amp_adc * t))
        _paint(sub, parts[zone], zp, props)
    _paint(sub, parts["AS"], AS_TISSUE, props)
    lesion_masks = []
    for les in ph.lesions:
        edge = max(width, les.edge_mm)
        reach = float(max(les.radii)) + 4 * edge + 2.0
        lbox = _box(grid, les.center + np.asarray(shift), reach, gbox)
        r = _rel(gbox, lbox)
        lu, lv, lw = ph.gland_frame(*[np.float32(c) for c in les.center])
        d = _ellipsoid_dist(u[r] - lu, v[r] - lv, w[r] - lw, les.radii)
        if les.lobulation:  # irregular margin: the boundary moves with a smooth random field
            d = d - les.lobulation * les.radius_mm * tex[0][r]
        m = soft(d, edge) * parts["gland"][r]
        het = 1.0 + les.het * tex[1][r]  # within-lesion heterogeneity
        _paint(
            [s[r] for s in sub], m, (les.props[0] * het, les.props[1], les.props[2] * het), props
        )
        if les.rim_mm and 0 in props:  # fibrous pseudo-capsule: a dark T2 shell at the margin
            shell = soft(np.abs(d) - les.rim_mm / 2.0, max(width, 0.3)) * parts["gland"][r]
            t2 = sub[props.index(0)][r]
            t2 += shell * (RIM_T2 - t2)
        lesion_masks.append((lbox, m))
    gland = np.zeros(shape, dtype=np.float32)
    gland[gbox] = parts["gland"]
    return values, gland, lesion_masks, (X, Y, Z)


def _texture(grid: np.ndarray, u, v, w, half_box=45.0):
    """Trilinear lookup of a smooth random field defined over the gland-centred box."""
    n = grid.shape[0]
    scale = (n - 1) / (2.0 * half_box)
    coords = [np.broadcast_to((c + half_box) * scale, np.broadcast_shapes(u.shape, v.shape, w.shape))
              for c in (u, v, w)]  # fmt: skip
    out = ndimage.map_coordinates(grid, [c.ravel() for c in coords], order=1, mode="nearest")
    return out.reshape(coords[0].shape).astype(np.float32)


def _rotation(ax: float, ay: float, az: float) -> np.ndarray:
    cx, sx, cy, sy, cz, sz = np.cos(ax), np.sin(ax), np.cos(ay), np.sin(ay), np.cos(az), np.sin(az)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def make_phantom(rng: np.random.Generator, age: float, region: str) -> Phantom:
    """Random normal anatomy for one patient (no findings yet)."""
    center = np.array([rng.normal(0, 5), rng.normal(0, 5), rng.normal(0, 15)])
    tilt_deg = rng.normal(15.0, 8.0)  # apex points antero-inferiorly
    tilt = _rotation(
        np.deg2rad(tilt_deg), np.deg2rad(rng.normal(0, 3)), np.deg2rad(rng.normal(0, 4))
    )
    bph = float(np.clip(rng.normal(1.0 + (age - 60) * 0.015, 0.12), 0.9, 1.6))
    size = 0.92 if region == "ASIA" else 1.0  # smaller average gland volume in Asian cohorts
    base = np.array([rng.normal(25, 2.5), rng.normal(18, 2.0), rng.normal(22, 2.5)]) * size
    gland = np.clip(base, [15, 10, 12], None) * (1 + 0.5 * (bph - 1))
    tz_radii = np.minimum(base * np.array([0.5, 0.45, 0.5]) * bph, gland * [0.8, 0.62, 0.75])
    tz_center = np.array([0.0, -0.22 * gland[1], 0.15 * gland[2]])
    pz_props = (float(np.clip(rng.normal(0.85, 0.07), 0.6, 1.05)), 0.80,
                float(np.clip(rng.normal(1650, 180), 1300, 2100)))  # fmt: skip
    tz_props = (float(np.clip(rng.normal(0.50, 0.05), 0.35, 0.65)), 0.65,
                float(np.clip(rng.normal(1200, 110), 950, 1450)))  # fmt: skip
    post = tilt @ np.array([0.0, gland[1] * 0.85, 0.0]) + center
    rect_r = np.array([rng.uniform(13, 18), rng.uniform(9, 13)])
    rectum_center = np.array([post[0], post[1] + rect_r[1] + rng.uniform(1.0, 3.0)])
    lumen = GEL if rng.random() < 0.25 else AIR
    bladder_radii = np.array([rng.uniform(28, 40), rng.uniform(22, 32), rng.uniform(18, 30)])
    top = tilt @ np.array([0.0, -0.2 * gland[1], gland[2]]) + center
    bladder_center = top + np.array([0.0, -5.0, bladder_radii[2] * rng.uniform(0.7, 0.95)])
    textures = []
    for n, sigma in ((14, 1.0), (30, 1.2)):  # ~6.5 mm and ~3 mm correlation lengths
        t = ndimage.gaussian_filter(rng.standard_normal((n, n, n)), sigma, mode="wrap")
        textures.append((t / t.std()).astype(np.float32))
    return Phantom(
        center=center, tilt=tilt, gland_radii=gland, tz_center=tz_center, tz_radii=tz_radii,
        pz_props=pz_props, tz_props=tz_props, rectum_center=rectum_center, rectum_radii=rect_r,
        rectum_lumen=lumen, muscle_dx=gland[0] + rng.uniform(12, 18),
        bladder_center=bladder_center, bladder_radii=bladder_radii, textures=textures,
    )  # fmt: skip


def gland_volume_ml(ph: Phantom) -> float:
    """Ellipsoid volume of the gland (the clinical pi/6 * LR * AP * CC, posterior flattening)."""
    a, b, c = ph.gland_radii
    return float(4.0 / 3.0 * np.pi * a * b * c * 0.925 / 1000.0)


def _diameter(rng, median, lo, hi):
    return float(np.clip(median * np.exp(rng.normal(0, 0.35)), lo, hi))


def draw_lesion(rng, ph: Phantom, kind: str, isup: int, zone: str, biopsied=True) -> Lesion:
    """Size, shape, position in ``zone`` and tissue properties of one finding."""
    if kind == "cspca":
        diam = _diameter(rng, 10.0 + 1.5 * (isup - 2), 4.0, 25.0)
        t2 = rng.normal(0.42 - 0.03 * (isup - 2), 0.06)
        props, edge = (t2, 0.65, rng.normal(CSPCA_ADC[isup], 160.0)), 0.8
    elif kind == "isup1":
        diam = _diameter(rng, 7.0, 4.0, 15.0)
        props, edge = (rng.normal(0.55, 0.08), 0.70, rng.normal(1100.0, 170.0)), 0.8
    elif kind == "bph_nodule":
        diam = _diameter(rng, 10.0, 5.0, 22.0)
        if rng.random() < 0.5:  # stromal nodule: dark on T2, more restricted
            props = (rng.normal(0.38, 0.07), 0.55, rng.normal(1050.0, 130.0))
        else:  # glandular nodule: bright on T2
            props = (rng.normal(0.85, 0.1), 0.85, rng.normal(1350.0, 130.0))
        edge = 0.4
    elif kind == "prostatitis":
        diam = _diameter(rng, 13.0, 6.0, 25.0)
        props, edge = (rng.normal(0.55, 0.08), 0.75, rng.normal(1150.0, 120.0)), 2.0
    elif kind == "benign_biopsy":
        diam = _diameter(rng, 9.0, 4.0, 18.0)
        props, edge = (rng.normal(0.62, 0.1), 0.75, rng.normal(1300.0, 200.0)), 1.2
    else:
        raise ValueError(f"unknown finding kind {kind!r}")
    props = (float(max(props[0], 0.1)), float(props[1]), float(np.clip(props[2], 400.0, 2200.0)))
    radii = diam / 2.0 * rng.uniform(0.8, 1.2, size=3)
    if kind == "prostatitis":  # band-like: long left-right and cranio-caudally, thin front-back
        radii = radii * np.array([1.5, 0.5, 1.2])
    elif kind == "cspca" and zone == "TZ":  # lenticular ("erased charcoal")
        radii = radii * np.array([1.3, 0.7, 1.0])
    center = _place(rng, ph, zone, radii)
    het, lobulation, rim = MORPHOLOGY[kind]
    return Lesion(kind, isup, zone, center, radii, edge, props, biopsied, het, lobulation, rim)


def _place(rng, ph: Phantom, zone: str, radii) -> np.ndarray:
    a, b, c = ph.gland_radii
    for _ in range(400):
        local = rng.uniform(-1, 1, size=3) * [a, b, c] * 0.95
        world = ph.tilt @ local + ph.center
        if ph.zone_at(world) != zone:
            continue
        if all(
            np.linalg.norm(world - o.center) > (radii.mean() + o.radius_mm) * 0.8
            for o in ph.lesions
        ):
            return world
    # Crowded gland: accept overlap rather than fail (as real multifocal disease does).
    for _ in range(400):
        world = ph.tilt @ (rng.uniform(-1, 1, size=3) * [a, b, c] * 0.9) + ph.center
        if ph.zone_at(world) == zone:
            return world
    return ph.center.copy()
