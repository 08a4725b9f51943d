"""Regenerate the sample data shipped in napari_unet/samples/ (seeded: the files come out identical).

Usage, from the repository root::

    python sample_data/generate.py

The generator lives here, outside the package: an installed napari-unet only reads the
files (``napari_unet.core.samples``). ``tests/core/test_synthetic.py`` loads this file by
its path and checks that it still makes the shipped files.

Seeded synthetic look-alikes of the two tasks. The real training sets (ISBI 2012 EM,
DRIVE fundus) may not be redistributed with the plugin, yet a user opening napari needs
something to click "Predict" on. The images made here imitate the real ones closely
enough that a U-Net trained on the real data segments them well: intensity histograms,
membrane and vessel widths, cell sizes, contrast, colour, noise and blur were matched
against ISBI 2012 and DRIVE statistics.

Everything is numpy / scipy and fully determined by ``seed``: the same seed always gives
the same arrays (one ``numpy.random.Generator`` drawn in a fixed order, no global state).
Across CPUs or library versions, vectorised math functions may differ in the last bit,
which can move an odd pixel by one grey level; the structure never changes.

Label convention (the project's): ``0`` = background (cell interior / retina), ``1`` =
structure (membrane / vessel).
"""

from __future__ import annotations

import heapq
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

HERE = Path(__file__).resolve().parent
# The checkout's package data, not an installed copy's: the files to commit.
TARGET = HERE.parent / "napari_unet" / "samples"
try:
    from napari_unet.core.samples import SAMPLE_FILES
except ImportError:  # run from a checkout without installing the package
    sys.path.insert(0, str(HERE.parent))
    from napari_unet.core.samples import SAMPLE_FILES

__all__ = ["em_stack", "fundus_image", "write_samples", "SAMPLE_EM_SHAPE", "SAMPLE_FUNDUS_SHAPE"]
# EM sample size: 5 slices of 384 x 384 keep the tif under 1 MB while still showing both
# the many small axon profiles and a few large dendrites of an ISBI-like field of view.
SAMPLE_EM_SHAPE = (5, 384, 384)
SAMPLE_FUNDUS_SHAPE = (584, 565)  # DRIVE's own size


# ---------------------------------------------------------------------------- helpers


def _field(rng: np.random.Generator, shape: tuple[int, ...], scale: float, zscale: float = 0.0) -> np.ndarray:
    """Smooth Gaussian random field with unit standard deviation.

    Large correlation lengths are drawn on a coarse grid and zoomed up (bilinear, slice by
    slice): filtering full-resolution noise with a wide kernel would cost far more for the
    same look.

    Args:
        rng: random generator (consumed).
        shape: output shape, 2D (Y, X) or 3D (Z, Y, X); ``scale`` acts on the last two axes.
        scale: in-plane correlation length in pixels (Gaussian sigma).
        zscale: correlation length across slices (3D only), so neighbouring slices of a
            stack change smoothly.

    Returns:
        float32 array of ``shape``, mean ~0, std ~1.
    """
    factor = max(1.0, scale / 3.0)
    lead = shape[:-2]
    coarse_yx = tuple(int(np.ceil(s / factor)) + 3 for s in shape[-2:])
    noise = rng.standard_normal(lead + coarse_yx)
    sigma = (zscale,) * len(lead) + (scale / factor,) * 2
    modes = ("reflect",) * len(lead) + ("wrap", "wrap")
    noise = ndimage.gaussian_filter(noise, sigma, mode=modes)
    noise = noise.reshape((-1,) + coarse_yx)
    if factor > 1:
        noise = np.stack([ndimage.zoom(plane, factor, order=1, mode="nearest") for plane in noise])
    noise = noise[:, : shape[-2], : shape[-1]].reshape(shape)
    noise = noise - noise.mean()
    return (noise / max(float(noise.std()), 1e-9)).astype(np.float32)


def _smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------- EM


def _place_cells(rng: np.random.Generator, ny: int, nx: int, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """Dart-throw non-overlapping discs whose areas follow ISBI's cell-size distribution.

    ISBI 2012 cross-sections are mostly small axon profiles (median ~600 px at 4 nm/px)
    with a long tail of large dendrites (90th percentile ~4000 px, some > 14000 px). A
    log-normal area distribution reproduces that tail; placing the largest first lets
    the small ones fill the gaps, as in neuropil.

    Returns:
        centres (N, 2) float (y, x) and radii (N,) float, in pixels.
    """
    area = (ny + 2 * margin) * (nx + 2 * margin)
    largest = max(200.0, min(20000.0, ny * nx / 4.0))  # small crops still hold several cells
    radii = []
    covered = 0.0
    while covered < 0.95 * area or len(radii) < 4:
        cell_area = float(np.clip(np.exp(rng.normal(np.log(620.0), 1.35)), 80.0, largest))
        radii.append(np.sqrt(cell_area / np.pi))
        covered += cell_area
    radii = np.sort(np.asarray(radii))[::-1]
    centres: list[tuple[float, float]] = []
    kept: list[float] = []
    for r in radii:
        for _ in range(60):
            c = (rng.uniform(-margin, ny + margin), rng.uniform(-margin, nx + margin))
            if centres:
                arr = np.asarray(centres)
                gap = np.hypot(arr[:, 0] - c[0], arr[:, 1] - c[1]) - np.asarray(kept) - r
                # Slight overlap allowed: packing is then denser, like real neuropil.
                if gap.min() < -0.15 * r:
                    continue
            centres.append(c)
            kept.append(r)
            break
    return np.asarray(centres, dtype=np.float64), np.asarray(kept, dtype=np.float64)


def _power_partition(
    centres: np.ndarray, radii: np.ndarray, py: np.ndarray, px: np.ndarray, k: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Power (Laguerre) diagram of weighted seeds and each pixel's distance to its cell edge.

    Power distance ``|x - c|^2 - r^2`` lets big discs own big cells (a plain Voronoi
    diagram would give all cells similar sizes). Lifting each seed to 3D at height
    ``sqrt(R^2 - r^2)`` turns it into an ordinary nearest-neighbour query, so a KD-tree
    does the work. The distance to the radical line between the owner ``i`` and a
    neighbour ``j`` is ``(p_j - p_i) / (2 |c_i - c_j|)``; its minimum over the ``k``
    nearest lifted seeds is the sub-pixel distance to the cell boundary, which gives
    smooth, anti-aliased membranes.

    Args:
        centres: (N, 2) seed positions (y, x).
        radii: (N,) seed weights.
        py, px: (Y, X) query coordinates (possibly warped).
        k: neighbours examined for the boundary distance.

    Returns:
        owner (Y, X) int32 cell index and distance (Y, X) float32 to the nearest boundary.
    """
    big = radii.max() + 1.0
    lifted = np.column_stack([centres, np.sqrt(big**2 - radii**2)])
    tree = cKDTree(lifted)
    query = np.column_stack([py.ravel(), px.ravel(), np.zeros(py.size)])
    k = max(2, min(k, len(radii)))
    dist, index = tree.query(query, k=k)
    power = dist**2  # = |x - c|^2 - r^2 + big^2; the constant cancels in differences
    owner = index[:, 0]
    diff = centres[index[:, 1:]] - centres[owner][:, None, :]
    separation = np.maximum(np.hypot(diff[..., 0], diff[..., 1]), 1e-6)
    edge = ((power[:, 1:] - power[:, :1]) / (2.0 * separation)).min(axis=1)
    return owner.reshape(py.shape).astype(np.int32), edge.reshape(py.shape).astype(np.float32)


def _stamp_ellipse(
    shape: tuple[int, int], cy: float, cx: float, a: float, b: float, angle: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """Local frame of an ellipse: its bounding box in an image of ``shape`` and the
    coordinates (u along the long axis, v across) of the box's pixels. The box may be
    empty when the ellipse lies outside the image."""
    ny, nx = shape
    extent = int(np.ceil(a)) + 3
    y0, y1 = min(ny, max(0, int(cy) - extent)), min(ny, max(0, int(cy) + extent + 1))
    x0, x1 = min(nx, max(0, int(cx) - extent)), min(nx, max(0, int(cx) + extent + 1))
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    dy, dx = yy - cy, xx - cx
    cos, sin = np.cos(angle), np.sin(angle)
    return (slice(y0, y1), slice(x0, x1)), dx * cos + dy * sin, -dx * sin + dy * cos


def em_stack(seed: int = 0, shape: tuple[int, int, int] = (5, 512, 512)) -> tuple[np.ndarray, np.ndarray]:
    """Serial-section EM look-alike of ISBI 2012 (neuronal membranes), with labels.

    Cells are a power diagram of log-normally sized seeds seen through a smooth random
    warp (so membranes curve), with corners rounded off (so profiles look round and
    triple junctions thicken, as in neuropil). Seeds, sizes and warp drift a little from
    slice to slice, so the stack reads as a continuous volume. Membranes are dark bands of
    varying width, darkness and sharpness; interiors are mid-grey with a granular,
    bubbly texture, mitochondria (dark ellipses with cristae) and vesicle clusters, which
    are *not* labelled; then blur and correlated noise at ISBI's level.

    Args:
        seed: random seed; the same seed always gives the same stack.
        shape: (Z, Y, X) size of the stack.

    Returns:
        image: (Z, Y, X) uint8 EM-like stack (dark membranes, as in ISBI).
        labels: (Z, Y, X) uint8, 1 = membrane, 0 = cell interior (project convention).
    """
    nz, ny, nx = (int(s) for s in shape)
    if min(nz, ny, nx) < 1:
        raise ValueError(f"shape must be positive (Z, Y, X), got {shape}")
    rng = np.random.default_rng(seed)
    margin = 40  # seeds beyond the border, so edge cells are cut, not squashed
    centres, radii = _place_cells(rng, ny, nx, margin)
    n = len(radii)
    # Drift per slice: ISBI sections are 50 nm apart, profiles move a few pixels.
    velocity = rng.normal(0.0, 2.0, (n, 2))
    growth = rng.normal(0.0, 0.08, n)
    cell_offset = rng.normal(0.0, 14.0, n)  # some cytoplasm darker/lighter than others
    vol = (nz, ny, nx)
    # Smooth fields over (Z, Y, X), correlated across slices. Warps bend the straight
    # power-diagram edges into curves.
    warp_y = _field(rng, vol, 16.0, 1.0) * 6.0 + _field(rng, vol, 6.0, 0.7) * 1.2
    warp_x = _field(rng, vol, 16.0, 1.0) * 6.0 + _field(rng, vol, 6.0, 0.7) * 1.2
    # Membrane half-width: label widths ~3-8 px, ISBI's median ~5 px.
    half_width = np.clip(2.8 + 0.6 * _field(rng, vol, 12.0, 1.0), 1.7, 4.2)
    darkness = np.clip(82.0 + 18.0 * _field(rng, vol, 10.0, 1.0), 35.0, 120.0)
    # Some membranes are cut obliquely and look soft: the edge width varies.
    softness = np.clip(0.75 + 0.3 * _field(rng, vol, 20.0, 1.0), 0.45, 1.5)
    coarse = _field(rng, vol, 40.0, 2.0)
    # Dark clouds (thick, oblique or stained regions) in a few places, continuous in Z.
    clouds = _smoothstep(1.8, 2.8, _field(rng, vol, 22.0, 2.0))
    mito = _mitochondria(rng, radii)
    vesicle_cells = np.flatnonzero(rng.random(n) < 0.1)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)

    image = np.empty(vol, np.uint8)
    labels = np.empty(vol, np.uint8)
    for z in range(nz):
        zc = centres + velocity * z + rng.normal(0.0, 0.3, (n, 2))
        zr = radii * np.clip(1.0 + growth * z, 0.5, 1.5)
        owner, edge = _power_partition(zc, zr, yy + warp_y[z], xx + warp_x[z])
        # Round the corners: an opening of the interiors by a disc of radius ~3 px.
        core = ndimage.distance_transform_edt(edge >= half_width[z]) > 3.0
        depth = ndimage.distance_transform_edt(~core) - 3.0  # > 0: inside the membrane
        membrane = depth > 0.0
        labels[z] = membrane
        # Distance into the membrane measured from its rounded outline; the image band is
        # a soft step centred at the label edge, which gives ISBI's profile
        # (core ~75, one pixel inside the label edge ~95, one outside ~125).
        band = _sigmoid((depth - 0.1) / softness[z])
        base = 166.0 + cell_offset[owner] + 12.0 * coarse[z]
        texture = _em_texture(rng, (ny, nx))
        slice_img = base + texture - darkness[z] * band - 55.0 * clouds[z]
        interior_depth = ndimage.distance_transform_edt(~membrane)
        slice_img -= _render_organelles(rng, mito, zc, zr, owner, interior_depth, vesicle_cells, (ny, nx))
        slice_img = ndimage.gaussian_filter(slice_img, 0.6)
        # EM shot noise: strong and correlated over ~1-2 px (ISBI's high-pass std ~18).
        noise = ndimage.gaussian_filter(rng.standard_normal((ny, nx)), 0.9) * 48.0
        image[z] = _to_uint8(slice_img + noise)
    return image, labels


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # tanh form: no overflow warnings


def _em_texture(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Cytoplasm texture (Y, X): grainy noise plus small dark rings (vesicles, microtubule
    and ribosome profiles) that give ISBI interiors their bubbly look."""
    grain = ndimage.gaussian_filter(rng.standard_normal(shape), 1.4) * 24.0
    seeds = (rng.random(shape) < 1.0 / 45.0).astype(np.float32)
    r = np.hypot(*np.mgrid[-4:5, -4:5])
    ring = np.exp(-(((r - 2.2) / 0.8) ** 2))
    rings = ndimage.convolve(seeds, ring.astype(np.float32), mode="wrap")
    return grain - 40.0 * np.minimum(rings, 1.5)


# One mitochondrion: (cell, offset_y, offset_x, half-length a, half-width b, angle).
Mito = tuple[int, float, float, float, float, float]


def _mitochondria(rng: np.random.Generator, radii: np.ndarray) -> list[Mito]:
    """Per-cell mitochondria: (cell, offset_y, offset_x, a, b, angle); offsets are in units
    of the cell radius so that they move with their cell from slice to slice."""
    result = []
    for cell, r in enumerate(radii):
        count = rng.poisson(np.pi * r * r / 9000.0) if r > 22 else 0
        for _ in range(count):
            b = rng.uniform(9.0, min(20.0, 0.45 * r))
            a = b * rng.uniform(1.1, 2.0)
            off = rng.uniform(0.0, 0.5, 2) * rng.choice([-1.0, 1.0], 2)
            result.append((cell, off[0], off[1], a, b, rng.uniform(0, np.pi)))
    return result


def _render_organelles(
    rng: np.random.Generator,
    mito: list[Mito],
    centres: np.ndarray,
    radii: np.ndarray,
    owner: np.ndarray,
    interior_depth: np.ndarray,
    vesicle_cells: np.ndarray,
    shape: tuple[int, int],
) -> np.ndarray:
    """Darkening (Y, X) from the mitochondria and vesicle clusters of one slice.

    An organelle is drawn only where it stays clear of the membranes (distance to the
    nearest membrane larger than its half-length plus a gap): touching ones would make
    the membrane label ambiguous.
    """
    dark = np.zeros(shape, np.float32)
    ny, nx = shape
    for cell, oy, ox, a, b, angle in mito:
        cy = centres[cell, 0] + oy * radii[cell]
        cx = centres[cell, 1] + ox * radii[cell]
        iy, ix = int(round(cy)), int(round(cx))
        if not (0 <= iy < ny and 0 <= ix < nx):
            continue
        if owner[iy, ix] != cell or interior_depth[iy, ix] < a + 4.0:
            continue
        box, u, v = _stamp_ellipse(shape, cy, cx, a, b, angle)
        q = np.sqrt((u / a) ** 2 + (v / b) ** 2)
        inside = _smoothstep(1.05, 0.9, q)
        # Matrix darker than cytoplasm, a darker double membrane at the rim, cristae as
        # stripes across the long axis.
        rim = np.exp(-(((q - 0.93) / 0.09) ** 2))
        cristae = 0.5 + 0.5 * np.cos(2 * np.pi * u / rng.uniform(4.0, 6.0) + rng.uniform(0, 6.3))
        value = inside * (50.0 + 30.0 * cristae * (q < 0.85)) + 50.0 * rim
        dark[box] = np.maximum(dark[box], value)
    for cell in vesicle_cells:
        # A synaptic cluster: small dark rings near the cell's edge, redrawn each slice
        # (vesicles ~40 nm are thinner than a 50 nm section).
        angle = rng.uniform(0, 2 * np.pi)
        cy = centres[cell, 0] + 0.5 * radii[cell] * np.sin(angle)
        cx = centres[cell, 1] + 0.5 * radii[cell] * np.cos(angle)
        for _ in range(int(rng.integers(8, 25))):
            vy, vx = cy + rng.normal(0, 6.0), cx + rng.normal(0, 6.0)
            iy, ix = int(round(vy)), int(round(vx))
            if not (0 <= iy < ny and 0 <= ix < nx) or owner[iy, ix] != cell or interior_depth[iy, ix] < 6:
                continue
            r = rng.uniform(1.8, 2.8)
            box, u, v = _stamp_ellipse(shape, vy, vx, r + 1.5, r + 1.5, 0.0)
            value = 40.0 * np.exp(-(((np.hypot(u, v) - r) / 0.8) ** 2))
            dark[box] = np.maximum(dark[box], value)
    return dark


# ---------------------------------------------------------------------------- fundus


def _grow_vessels(
    rng: np.random.Generator,
    disc: np.ndarray,
    fovea: np.ndarray,
    centre: np.ndarray,
    radius: float,
    scale: float,
) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """Grow arterial and venous trees from the optic disc.

    Each branch is a random walk with smoothly varying curvature and a tapering width
    (thin vessels taper faster and meander more); it sheds side branches every 20-55 px
    (Murray's law ``w^3 = w1^3 + w2^3`` splits the width), sometimes ends in a symmetric
    fork, and stops when thinner than a pixel, at the edge of the field of view or at the
    foveal avascular zone. The temporal trunks are steered around the fovea, forming the
    arcades of a real retina. Branches grow widest first, and a coarse occupancy grid
    stops thin ones from entering crowded places and sends side branches towards empty
    ones, so the tree covers the retina evenly as in DRIVE.

    Returns:
        One (points (M, 2) y/x, widths (M,), kind) per branch; kind 0 = artery, 1 = vein.
    """
    to_fovea = fovea - disc
    base = np.arctan2(to_fovea[0], to_fovea[1])
    disc_fovea = float(np.hypot(*to_fovea))
    step = 1.5 * scale
    faz = 30.0 * scale  # foveal avascular zone radius
    cell = 12.0 * scale  # occupancy grid
    grid = np.zeros((int(2 * radius / cell) + 3,) * 2, np.int32)
    origin = centre - radius - cell

    def grid_index(point: np.ndarray) -> tuple[int, int]:
        i, j = ((point - origin) / cell).astype(int)
        return min(max(i, 0), grid.shape[0] - 1), min(max(j, 0), grid.shape[1] - 1)

    def crowding(point: np.ndarray, heading: float, ahead: float) -> int:
        probe = point + ahead * np.array([np.sin(heading), np.cos(heading)])
        i, j = grid_index(probe)
        return int(grid[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].sum())

    def around_fovea(point: np.ndarray, heading: float) -> float:
        """+1/-1: the sense of rotation around the fovea that agrees with ``heading``."""
        rel = point - fovea
        tangent = np.arctan2(rel[1], -rel[0])
        return 1.0 if np.cos(tangent - heading) >= 0 else -1.0

    heap: list = []
    counter = 0

    def push(point, heading, width, kind, steer):
        nonlocal counter
        item = (-width, counter, np.array(point, np.float64), float(heading), width, kind, steer)
        heapq.heappush(heap, item)  # widest first; the counter breaks ties
        counter += 1

    for kind, trunk in ((1, 9.0), (0, 7.2)):
        for side in (-1.0, 1.0):
            # Temporal arcade: leaves the disc steeply (~70 deg off the disc-fovea line)
            # and is steered around the fovea.
            heading = base + side * (1.15 + 0.2 * kind) + rng.normal(0, 0.1)
            start = disc + rng.normal(0, 3.0 * scale, 2)
            ahead = disc + 60 * scale * np.array([np.sin(heading), np.cos(heading)])
            push(start, heading, trunk * scale, kind, around_fovea(ahead, heading))
            # Nasal trunk: away from the fovea, thinner, free.
            heading = base + np.pi - side * (0.7 + 0.3 * kind) + rng.normal(0, 0.15)
            push(start, heading, 0.7 * trunk * scale, kind, 0.0)
        # Small papillary vessels, one of them into the papillo-macular bundle.
        push(disc, base + rng.normal(0, 0.2), 2.6 * scale, kind, 0.0)
        push(disc, rng.uniform(0, 2 * np.pi), 2.2 * scale, kind, 0.0)

    branches = []
    while heap and len(branches) < 3000:
        _, _, point, heading, width, kind, steer = heapq.heappop(heap)
        points, widths = [point.copy()], [width]
        curvature = 0.0
        steered = 0.0
        next_branch = rng.uniform(15.0, 40.0) * scale
        travelled = 0.0
        visited = {grid_index(point)}
        while True:
            # Wiggle: thick vessels run in smooth arcs, thin ones meander.
            wiggle = 1.0 / (1.0 + 0.25 * width / scale)
            curvature = 0.9 * curvature + rng.normal(0.0, 0.012 * wiggle)
            heading += curvature + rng.normal(0.0, 0.03 * wiggle)
            if steer:
                # Follow a circle around the fovea that widens slowly: arcades pass ~0.8
                # disc-fovea distances above/below it and spread towards the periphery.
                rel = point - fovea
                target = 0.8 * disc_fovea + 0.15 * steered
                tangent = np.arctan2(steer * rel[1], -steer * rel[0])
                inward = np.clip(1.5 * (float(np.hypot(*rel)) - target) / target, -0.6, 0.6)
                heading += 0.08 * np.angle(np.exp(1j * (tangent + steer * inward - heading)))
                steered += step
            to_pit = fovea - point
            near = float(np.hypot(*to_pit))
            if near < 3.0 * faz:
                # The macula is supplied by thin vessels only: bigger ones turn aside, and
                # all taper quickly as they approach the avascular zone.
                towards = np.arctan2(to_pit[0], to_pit[1])
                offset = np.angle(np.exp(1j * (heading - towards)))
                if abs(offset) < 1.2 and width > 1.5 * scale:
                    heading += 0.12 * (1.0 if offset >= 0 else -1.0)
                width *= 1.0 - 0.01 * step * (1.0 - near / (3.0 * faz))
            point = point + step * np.array([np.sin(heading), np.cos(heading)])
            travelled += step
            # Relative taper per pixel: trunks keep their calibre, thin branches fade fast.
            width *= 1.0 - step * (0.0004 + 0.0028 / max(width / scale, 0.5))
            points.append(point.copy())
            widths.append(width)
            if np.hypot(*(point - centre)) > radius - 1.0 or width < 0.8 * scale:
                break
            if np.hypot(*(point - fovea)) < faz * rng.uniform(0.8, 1.3):
                break
            index = grid_index(point)
            if index not in visited:
                visited.add(index)
                # Thin vessels do not crowd into places other vessels already supply.
                if width < 3.0 * scale and grid[index] >= 2 and np.hypot(*(point - disc)) > 60 * scale:
                    break
                grid[index] += 1
            if travelled >= next_branch:
                travelled = 0.0
                next_branch = rng.uniform(20.0, 55.0) * scale
                if width > 1.6 * scale and rng.random() < 0.08:
                    # Symmetric fork: the branch ends in two children; on an arcade, the
                    # child closer to the arcade's course keeps following it.
                    spread = rng.uniform(0.35, 0.6)
                    keep = rng.choice([-1.0, 1.0])
                    for s in (-1.0, 1.0):
                        push(point, heading + s * spread, width * 0.79, kind, steer if s == keep else 0.0)
                    break
                side_width = width * min(rng.beta(2.2, 2.5), 0.8)
                width = float(np.cbrt(width**3 - side_width**3))
                if side_width >= 1.35 * scale:
                    # Side branches leave at a wide angle, mostly towards the emptier side.
                    turn = rng.uniform(0.8, 1.5)
                    left = crowding(point, heading + turn, 40 * scale)
                    right = crowding(point, heading - turn, 40 * scale)
                    sign = 1.0 if left < right else -1.0
                    if left == right or rng.random() < 0.2:
                        sign = rng.choice([-1.0, 1.0])
                    push(point, heading + sign * turn, side_width, kind, 0.0)
                    heading -= 0.1 * sign  # the parent bends away a little
        if len(points) > 1:
            branches.append((np.asarray(points), np.asarray(widths), kind))
    return branches


def _render_vessels(
    branches: list[tuple[np.ndarray, np.ndarray, int]], shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Rasterise branches as tapered capsules.

    Returns:
        label (Y, X) bool: pixel centres within half the width of a centreline (at least
        0.5 px, so one-pixel vessels stay 8-connected lines, as in DRIVE's manual labels).
        absorb (Y, X) float32: relative green-channel darkening, a rounded cross-section
        whose depth grows with the width (wide veins ~35 %, one-pixel vessels ~8 %).
    """
    ny, nx = shape
    label = np.zeros(shape, bool)
    absorb = np.zeros(shape, np.float32)
    for points, widths, kind in branches:
        depth_scale = 1.12 if kind == 1 else 0.88  # veins are darker than arteries
        for i in range(len(points) - 1):
            p0, p1 = points[i], points[i + 1]
            r0, r1 = widths[i] / 2.0, widths[i + 1] / 2.0
            reach = max(r0, r1, 0.9) + 1.5
            y0 = max(0, int(np.floor(min(p0[0], p1[0]) - reach)))
            y1 = min(ny, int(np.ceil(max(p0[0], p1[0]) + reach)) + 1)
            x0 = max(0, int(np.floor(min(p0[1], p1[1]) - reach)))
            x1 = min(nx, int(np.ceil(max(p0[1], p1[1]) + reach)) + 1)
            if y0 >= y1 or x0 >= x1:
                continue
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            seg = p1 - p0
            length2 = float(seg @ seg) or 1e-9
            t = np.clip(((yy - p0[0]) * seg[0] + (xx - p0[1]) * seg[1]) / length2, 0.0, 1.0)
            d = np.hypot(yy - (p0[0] + t * seg[0]), xx - (p0[1] + t * seg[1]))
            r = r0 + t * (r1 - r0)
            label[y0:y1, x0:x1] |= d <= np.maximum(r, 0.5)
            # Optical cross-section: a little wider than the label for thin vessels (the
            # blur of the camera), depth from the measured DRIVE contrast per width.
            r_opt = np.maximum(r, 0.75)
            profile = np.sqrt(np.clip(1.0 - (d / r_opt) ** 2, 0.0, 1.0))
            w = 2.0 * r
            depth = depth_scale * (0.085 + 0.24 * (1.0 - np.exp(-np.maximum(w - 1.0, 0.0) / 3.5)))
            if kind == 0:
                # Arteries show a pale central light reflex when wide.
                reflex = np.clip(w - 4.0, 0, 1) * np.exp(-((d / (0.3 * r_opt)) ** 2))
                profile = profile * (1.0 - 0.25 * reflex)
            absorb[y0:y1, x0:x1] = np.maximum(absorb[y0:y1, x0:x1], depth * profile)
    return label, absorb


def fundus_image(
    seed: int = 0, shape: tuple[int, int] = (584, 565)
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Colour fundus photograph look-alike of DRIVE, with vessel labels and FOV mask.

    A circular field of view (black outside) holds an orange-red retina whose red channel
    falls off towards the rim, a bright yellowish optic disc, a darker macula and fovea,
    and arterial and venous trees growing from the disc (widths ~9 px down to 1 px,
    curving, branching, the temporal arcades bending around the macula). Vessels darken
    mostly the green channel, as in real fundus images; then blur and noise.

    Args:
        seed: random seed; the same seed always gives the same image.
        shape: (Y, X) image size; geometry scales with min(Y, X) (DRIVE is 584 x 565).

    Returns:
        image: (Y, X, 3) uint8 RGB.
        labels: (Y, X) uint8, 1 = vessel inside the FOV, 0 elsewhere.
        fov: (Y, X) bool field-of-view mask.
    """
    ny, nx = (int(s) for s in shape)
    if min(ny, nx) < 16:
        raise ValueError(f"shape must be at least 16 x 16 (Y, X), got {shape}")
    rng = np.random.default_rng(seed)
    scale = min(ny, nx) / 565.0
    centre = np.array([ny / 2.0 + 0.01 * ny, nx / 2.0 - 0.004 * nx])
    radius = 0.476 * min(ny, nx)
    yy, xx = np.mgrid[0:ny, 0:nx].astype(np.float32)
    rr = np.hypot(yy - centre[0], xx - centre[1]) / radius
    fov = rr < 1.0

    # Left or right eye: the disc sits ~1/3 of the width to one side, a bit above centre;
    # the fovea ~2.5 disc diameters temporal to it, near the image centre.
    side = rng.choice([-1.0, 1.0])
    disc = centre + np.array(
        [-0.075 * ny + rng.normal(0, 0.02 * ny), side * (0.33 * nx + rng.normal(0, 0.01 * nx))]
    )
    fovea = centre + np.array([rng.normal(0, 0.015 * ny), -side * 0.01 * nx])
    disc_r = 38.0 * scale * rng.uniform(0.92, 1.08)

    # Background: DRIVE's red falls from ~220 in the centre to ~175 near the rim, green
    # (~120) and blue (~75) stay flat; all darken in the last few percent of the radius.
    radial = np.stack(
        [
            222.0 * (1.0 - 0.24 * _smoothstep(0.45, 1.0, rr)),
            120.0 * (1.0 - 0.04 * _smoothstep(0.5, 1.0, rr)),
            74.0 * (1.0 + 0.05 * _smoothstep(0.3, 0.9, rr)),
        ],
        axis=-1,
    )
    vignette = 1.0 - 0.15 * _smoothstep(0.94, 1.0, rr)
    illumination = 1.0 + 0.03 * _field(rng, (ny, nx), 90.0 * scale)
    background = radial * (vignette * illumination)[..., None]
    # Choroidal texture: faint fine mottling (DRIVE's background is smooth at pixel scale).
    mottle = _field(rng, (ny, nx), 2.5 * scale)
    background *= (1.0 + np.array([0.008, 0.01, 0.01]) * mottle[..., None])
    # Macula: a darker brownish region with a darker foveal pit.
    dfov = np.hypot(yy - fovea[0], xx - fovea[1])
    macula = (
        1.0
        - 0.12 * np.exp(-((dfov / (55.0 * scale)) ** 2))
        - 0.06 * np.exp(-((dfov / (14.0 * scale)) ** 2))
    )
    background *= macula[..., None]
    # Peripapillary glow and the disc itself: bright yellow, blue stays lower.
    ddisc = np.hypot((yy - disc[0]) / 1.08, xx - disc[1])
    background *= (1.0 + 0.12 * np.exp(-((ddisc / (1.7 * disc_r)) ** 2)))[..., None]
    disc_alpha = 0.92 * _smoothstep(1.0, 0.8, ddisc / disc_r)[..., None]
    disc_colour = np.array([255.0, 228.0, 125.0]) + np.array([10.0, 25.0, 30.0]) * np.exp(
        -((ddisc / (0.45 * disc_r)) ** 2)
    )[..., None]
    background = background * (1.0 - disc_alpha) + disc_colour * disc_alpha

    branches = _grow_vessels(rng, disc, fovea, centre, radius, scale)
    label, absorb = _render_vessels(branches, (ny, nx))
    # Green absorbs most (haemoglobin); red barely, blue in between (DRIVE: red ~0.35x,
    # blue ~0.6x the green relative contrast).
    image = background * (1.0 - absorb[..., None] * np.array([0.38, 1.0, 0.62]))
    image = ndimage.gaussian_filter(image, (0.75, 0.75, 0))
    # Camera noise after JPEG: small and nearly white (DRIVE robust high-pass std ~2).
    noise = ndimage.gaussian_filter(rng.standard_normal((ny, nx, 3)), (0.5, 0.5, 0)) * 4.0
    image = image + noise
    # Outside the FOV: near-black with a little sensor noise (DRIVE: ~7 grey levels).
    outside = 5.0 + 1.5 * rng.standard_normal((ny, nx, 3))
    soft = _smoothstep(1.0, 0.995, rr)[..., None]
    image = image * soft + outside * (1.0 - soft)
    labels = (label & fov).astype(np.uint8)
    return _to_uint8(image), labels, fov


# ---------------------------------------------------------------------------- files


def write_samples(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Write the plugin's sample data set into ``folder``.

    Files (labels in the project convention 0/1, FOV 0/255):

    * ``em_membranes_image.tif``  (5, 384, 384) uint8 stack
    * ``em_membranes_labels.tif`` (5, 384, 384) uint8, 1 = membrane
    * ``fundus_vessels_image.png`` (584, 565, 3) uint8 RGB
    * ``fundus_vessels_labels.png`` (584, 565) uint8, 1 = vessel
    * ``fundus_vessels_fov.png`` (584, 565) uint8, 255 = inside the field of view

    Args:
        folder: output folder (created if missing).
        seed: random seed passed to both generators.

    Returns:
        Mapping of the keys of ``napari_unet.core.samples.SAMPLE_FILES`` to the written paths.
    """
    import tifffile  # only needed here: keeps ``em_stack``/``fundus_image`` dependency-light
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {key: folder / name for key, name in SAMPLE_FILES.items()}
    em, em_labels = em_stack(seed, SAMPLE_EM_SHAPE)
    # zlib: lossless, keeps the labels tiny; minisblack so readers see Z grey slices.
    tifffile.imwrite(paths["em_image"], em, photometric="minisblack", compression="zlib")
    tifffile.imwrite(paths["em_labels"], em_labels, photometric="minisblack", compression="zlib")
    rgb, vessels, fov = fundus_image(seed, SAMPLE_FUNDUS_SHAPE)
    # uint8 (Y, X, 3) is saved as RGB, uint8 (Y, X) as 8-bit grey; PNG is lossless.
    Image.fromarray(rgb).save(paths["fundus_image"], optimize=True)
    Image.fromarray(vessels).save(paths["fundus_labels"], optimize=True)
    Image.fromarray((fov * 255).astype(np.uint8)).save(paths["fundus_fov"], optimize=True)
    return paths


if __name__ == "__main__":
    for name, path in write_samples(TARGET).items():
        print(f"{name:14s} {path.name:28s} {path.stat().st_size / 1024:7.1f} KiB")
