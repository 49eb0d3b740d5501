"""Find what a video of the world shows, without the model: objects by colour, their shape, the
background, and the camera motion, all from pixels.

Objects are the only saturated pixels in the world (chroma >= 160 against <= 52 for every
background), so segmentation is a chroma threshold, then connected components per frame, each
named by the palette hue most of its pixels are nearest to (one colour = one object per scene).
Shape is read from angular harmonics of the mask (|sum r^2 e^{ik theta}| / sum r^2): a square
rings at k = 4, a triangle at 3, a star at 5, a circle at none; the phase of that harmonic is the
orientation, which is how spins are seen. The camera is a global pan/zoom fit on the background
(``estimate_camera``), so object tracks can be read in world coordinates.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from kinema.data.world.render import render_background
from kinema.data.world.scene import Scene, WorldObject, camera_anchor
from kinema.data.world.vocab import BACKGROUNDS, COLOURS, SIZES, TEXTURED_BACKGROUNDS

CHROMA_MIN = 100.0  # 0-255: object pixels; backgrounds stay <= 52, objects start at 160
MIN_AREA = 0.0006  # x u^2: smaller blobs are noise (a shrunken small object is ~0.004)
MIN_AREA_PX = 8  # and never fewer pixels than this, whatever the size
HALO_CHROMA, HALO_PX = 30.0, 4  # background pixels: chroma within this of the frame's median, this far from objects
EXTRA_BLOB = 0.25  # a second blob of one colour counts when it has this share of the first
# Harmonic strength of each shape at its own order (measured on clean renders); a mask whose
# strongest ratio stays under CIRCLE_RATIO is a circle.
HARMONICS = {"triangle": (3, 0.54), "square": (4, 0.28), "star": (5, 0.55)}
CIRCLE_RATIO = 0.4
LK_ITERATIONS = 2  # Gauss-Newton steps per pyramid level of the camera fit
CAMERA_PAN_MIN = 0.03  # u/s
CAMERA_ZOOM_MIN = 0.05  # d ln(scale)/dt


def _hue(rgb: np.ndarray) -> np.ndarray:
    """HSV hue in degrees, (...,)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = np.maximum(np.maximum(r, g), b), np.minimum(np.minimum(r, g), b)
    c = np.maximum(mx - mn, 1e-6)
    h = np.where(mx == r, (g - b) / c, np.where(mx == g, 2.0 + (b - r) / c, 4.0 + (r - g) / c))
    return np.mod(h * 60.0, 360.0)


PALETTE = tuple(COLOURS)
PALETTE_HUE = _hue(np.array([COLOURS[c] for c in PALETTE], dtype=np.float64))  # (8,)


_HUE_TABLE = np.abs(np.mod(np.arange(360)[:, None] + 0.5 - PALETTE_HUE + 180.0, 360.0) - 180.0).argmin(-1)


def nearest_colour(hue_deg: np.ndarray) -> np.ndarray:
    """Index into PALETTE of the nearest palette hue (circular distance), via a 1-degree table."""
    return _HUE_TABLE[np.asarray(hue_deg).astype(np.int64) % 360]


@dataclass(frozen=True)
class ObjectTrack:
    """One colour's object through the video, in screen pixels (NaN where absent)."""

    colour: str
    present: np.ndarray  # (F,) bool
    centres: np.ndarray  # (F, 2)
    area: np.ndarray  # (F,) px
    reach: np.ndarray  # (F,) px from centre down to the mask's lowest pixel
    angle: np.ndarray | None  # (F,) rad (unwrapped), None for a circle
    shape: str  # majority vote over frames
    extra_blobs: np.ndarray  # (F,) other sizeable blobs of the same colour


@dataclass(frozen=True)
class Detection:
    """Everything read from one video."""

    tracks: dict[str, ObjectTrack]  # colour -> track, for colours present in >= half the frames
    stray: np.ndarray  # (F,) sizeable blobs of colours seen in fewer than half the frames
    background: str
    camera: str
    pan: np.ndarray  # (F,) world px
    scale: np.ndarray  # (F,)


def detect(video: np.ndarray, fps: float) -> Detection:
    """Objects, background and camera of a uint8 (F, H, W, 3) video."""
    if video.ndim != 4 or video.shape[-1] != 3 or video.dtype != np.uint8:
        raise ValueError(f"video must be uint8 (F, H, W, 3), got {video.dtype} {video.shape}")
    f, h, w, _ = video.shape
    unit = float(min(h, w))
    r, g, b = video[..., 0], video[..., 1], video[..., 2]
    chroma = np.maximum(np.maximum(r, g), b) - np.minimum(np.minimum(r, g), b)  # (F, H, W) uint8
    objects = chroma >= CHROMA_MIN
    rgb = video.astype(np.float32)
    tracks, stray = _tracks(rgb, objects, unit)
    # Blurred object edges are less saturated than the core but still not background: mask
    # generously, since a leftover bright edge would drag the camera fit along with the object.
    halo = chroma >= min(CHROMA_MIN, float(np.median(chroma[0])) + HALO_CHROMA)
    near_objects = ndimage.maximum_filter(halo, size=(1, 2 * HALO_PX + 1, 2 * HALO_PX + 1))
    background = classify_background(rgb, near_objects)
    pan, scale = np.zeros(f), np.ones(f)
    camera = "static"
    if background in TEXTURED_BACKGROUNDS and f > 1:
        pan, scale = estimate_camera(rgb, near_objects)
        camera = _camera_label(pan, scale, unit, (f - 1) / fps)
    return Detection(tracks, stray, background, camera, pan, scale)


# --- objects ---


def _in_frame(n: int) -> np.ndarray:
    """A 3D structuring element that connects pixels within a frame only."""
    s = np.zeros((3, n, n), dtype=bool)
    s[1] = True
    return s


def _tracks(rgb: np.ndarray, objects: np.ndarray, unit: float) -> tuple[dict[str, ObjectTrack], np.ndarray]:
    """Per-colour object tracks, and per frame the count of stray blobs (colours too rare to track)."""
    f, h, w = objects.shape
    stray = np.zeros(f, dtype=np.int64)
    comp, ncomp = ndimage.label(objects, structure=_in_frame(3))  # (F, H, W)
    if ncomp == 0:
        return {}, stray
    idx = np.nonzero(comp)
    comp_id = comp[idx]
    pix_colour = nearest_colour(_hue(rgb[idx]))
    frame = idx[0]
    ys, xs = idx[1] + 0.5, idx[2] + 0.5
    # Two touching objects make one component whose pixels split between two hues, each part with
    # its own centre; a hue-shifted single object splits too, but with its parts centred alike or
    # inside one another. Split the first kind, give the second its majority colour.
    n = len(PALETTE)
    group = comp_id * n + pix_colour
    ng = (ncomp + 1) * n
    votes = np.bincount(group, minlength=ng).astype(np.float64)
    gx = np.bincount(group, xs, ng) / np.maximum(votes, 1)
    gy = np.bincount(group, ys, ng) / np.maximum(votes, 1)
    per_comp = votes.reshape(ncomp + 1, n)
    majority = per_comp.argmax(1)
    main = np.arange(ncomp + 1) * n + majority  # (C,) group id of each component's majority
    main_of = np.repeat(main, n)  # (G,)
    gap = np.hypot(gx - gx[main_of], gy - gy[main_of])
    r_own, r_main = np.sqrt(votes / np.pi), np.sqrt(votes[main_of] / np.pi)
    min_area = max(MIN_AREA * unit * unit, MIN_AREA_PX)
    # a touching object is centred outside the main blob; an edge sliver of shifted hue (blur over
    # a coloured background) is centred inside it
    own = (votes >= min_area) & (gap >= r_main + 0.5 * r_own) & (votes >= 0.1 * votes[main_of])
    blob = np.where(own[group], group, main_of[group])  # blob id per object pixel

    nb = ng
    area = np.bincount(blob, minlength=nb).astype(np.float64)
    used = np.nonzero(area >= min_area)[0]
    safe = np.maximum(area, 1)
    cx = np.bincount(blob, xs, nb) / safe
    cy = np.bincount(blob, ys, nb) / safe
    blob_frame = np.zeros(nb, dtype=np.int64)
    blob_frame[blob] = frame
    dx, dy = xs - cx[blob], ys - cy[blob]
    z = dx + 1j * dy
    r2 = np.abs(z) ** 2
    phase = np.exp(1j * np.angle(z))
    norm = np.maximum(np.bincount(blob, r2, nb), 1e-9)
    harmonic = {}
    for shape, (k, _) in HARMONICS.items():
        wk = r2 * phase**k
        harmonic[shape] = (np.bincount(blob, wk.real, nb) + 1j * np.bincount(blob, wk.imag, nb)) / norm
    lowest = np.full(nb, -np.inf)
    np.maximum.at(lowest, blob, dy)

    tracks = {}
    for ci, colour in enumerate(PALETTE):
        mine = used[used % n == ci]
        if len(mine) == 0:
            continue
        present = np.zeros(f, dtype=bool)
        centres = np.full((f, 2), np.nan)
        areas, reach, extra = np.zeros(f), np.full(f, np.nan), np.zeros(f, dtype=np.int64)
        best = np.full(f, -1)
        for b in mine[np.argsort(-area[mine])]:  # largest first: the first per frame is the object
            k = blob_frame[b]
            if best[k] < 0:
                best[k] = b
                present[k] = True
                centres[k] = cx[b], cy[b]
                areas[k], reach[k] = area[b], lowest[b]
            elif area[b] >= EXTRA_BLOB * area[best[k]]:
                extra[k] += 1
        if present.sum() * 2 < f:
            stray += present + extra
            continue
        frames_in = best[present]
        shape, angle = _shape_and_angle(harmonic, frames_in, best, present, areas, unit)
        tracks[colour] = ObjectTrack(colour, present, centres, areas, reach, angle, shape, extra)
    return tracks, stray


def classify_shape(harmonics: dict[str, complex]) -> str:
    """Shape name from a mask's normalised angular harmonics (see module docstring)."""
    ratios = {s: abs(harmonics[s]) / HARMONICS[s][1] for s in HARMONICS}
    best = max(ratios, key=ratios.get)
    return best if ratios[best] >= CIRCLE_RATIO else "circle"


def _shape_and_angle(harmonic, frames_in, best, present, areas, unit):
    """Majority shape over frames with a sizeable mask, and its orientation track (unwrapped)."""
    big = areas[present] >= 0.004 * unit * unit
    votes: dict[str, int] = {}
    for b in (frames_in[big] if big.any() else frames_in):
        s = classify_shape({k: harmonic[k][b] for k in HARMONICS})
        votes[s] = votes.get(s, 0) + 1
    shape = max(sorted(votes), key=votes.get)
    if shape == "circle":
        return shape, None
    k = HARMONICS[shape][0]
    f = len(present)
    raw = np.full(f, np.nan)
    raw[present] = np.angle(harmonic[shape][best[present]])  # k * orientation, wrapped
    filled = _fill_gaps(raw)
    return shape, np.unwrap(filled) / k


def _fill_gaps(x: np.ndarray) -> np.ndarray:
    """Replace NaNs by the nearest earlier value (or the first value)."""
    out = x.copy()
    ok = np.isfinite(out)
    if not ok.any():
        return np.zeros_like(out)
    first = np.argmax(ok)
    out[:first] = out[first]
    for i in range(first + 1, len(out)):
        if not np.isfinite(out[i]):
            out[i] = out[i - 1]
    return out


def size_class(area_px: float, unit: float) -> str:
    """The nearest size class (log distance) for an equal-area radius measured from a mask area."""
    radius = np.sqrt(max(area_px, 0.0) / np.pi) / unit
    return min(SIZES, key=lambda s: abs(np.log(max(radius, 1e-6) / SIZES[s])))


# --- background ---


def _background_features(rgb: np.ndarray, masked: np.ndarray) -> np.ndarray:
    """Mean colour of the top and bottom bands and the texture of the bottom band, over background
    pixels of the first frames (objects masked out); (7,). Colour alone tells night from black;
    texture tells the checkered floor from grey. Stars are not used: a VAE blurs them away."""
    frames = rgb[: min(3, len(rgb))]
    valid = ~masked[: len(frames)]
    f, h, w, _ = frames.shape
    top, bottom = slice(0, max(1, int(0.3 * h))), slice(int(0.8 * h), h)
    feats = []
    for band in (top, bottom):
        v = valid[:, band]
        pix = frames[:, band][v] if v.any() else frames[:, band].reshape(-1, 3)
        feats.extend(pix.mean(0) / 255.0)
    lum = frames @ np.float32([1 / 3, 1 / 3, 1 / 3])
    diff = np.abs(np.diff(lum[:, bottom], axis=2))
    ok = valid[:, bottom, 1:] & valid[:, bottom, :-1]
    feats.append((diff[ok].mean() if ok.any() else 0.0) / 40.0)  # the checkered floor
    return np.asarray(feats, dtype=np.float64)


@functools.lru_cache(maxsize=16)
def _prototypes(width: int, height: int) -> tuple[tuple[str, np.ndarray], ...]:
    """Background features of clean renders (a few texture seeds each) at this size."""
    out = []
    dummy = (WorldObject("circle", "red", "small", 1.0, "still", -100.0, -100.0),)
    for name in BACKGROUNDS:
        for seed in range(3):
            scene = Scene(width, height, 1, 8, name, dummy, seed=seed)
            img = render_background(scene, np.zeros(1), np.ones(1)) * 255.0
            out.append((name, _background_features(img, np.zeros(img.shape[:3], dtype=bool))))
    return tuple(out)


def classify_background(rgb: np.ndarray, masked: np.ndarray) -> str:
    """The background whose clean renders' features are nearest."""
    feats = _background_features(rgb, masked)
    _, h, w, _ = rgb.shape
    return min(_prototypes(w, h), key=lambda p: float(((p[1] - feats) ** 2).sum()))[0]


# --- camera ---


def estimate_camera(rgb: np.ndarray, masked: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame camera ``(pan_px, scale)`` relative to frame 0 from the background alone.

    Between consecutive frames the background moves by ``x' = A + sigma (x - A) + (a, 0)`` (A the
    zoom anchor): a global two-parameter Lucas-Kanade fit, coarse to fine from ~16 px to ~64 px,
    over unmasked pixels, for all frame pairs at once.
    """
    f, h, w, _ = rgb.shape
    lum = (rgb @ np.float32([1 / 3, 1 / 3, 1 / 3])).astype(np.float32)
    valid = ~masked
    ax, ay = camera_anchor(w, h)
    shift, sigma = np.zeros(f - 1), np.ones(f - 1)
    finest = max(1, round(min(h, w) / 64))
    factors = [finest * 2**i for i in range(3) if min(h, w) // (finest * 2**i) >= 24]
    for k in reversed(factors):
        small, ok = _block_mean(lum, valid, k), _block_all(valid, k)
        src, dst, ok = small[:-1], small[1:], ok[:-1] & ok[1:]
        gy, gx = np.gradient(dst, axis=(1, 2))
        for _ in range(LK_ITERATIONS):
            d_shift, d_sigma = _lk_step(src, dst, gx, gy, ok, shift / k, sigma, ax / k, ay / k)
            shift, sigma = shift + d_shift * k, sigma + d_sigma
    scale = np.concatenate([[1.0], np.cumprod(sigma)])
    pan = np.zeros(f)
    for t in range(1, f):  # x' = A + s'(X - p' - A) and a = s'(p - p')
        pan[t] = pan[t - 1] - shift[t - 1] / scale[t]
    return pan, scale


def _block_mean(x: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """(F, H, W) -> (F, H // k, W // k) block means of the valid pixels only, lightly blurred so
    point stars spread (a normalised convolution: masked objects never bleed into the result)."""
    f, h, w = x.shape

    def blocks(a):
        return a[:, : h // k * k, : w // k * k].reshape(f, h // k, k, w // k, k).mean((2, 4))

    weight = valid.astype(np.float32)
    num = ndimage.gaussian_filter(blocks(x * weight), sigma=(0, 1.0, 1.0))
    den = ndimage.gaussian_filter(blocks(weight), sigma=(0, 1.0, 1.0))
    return num / np.maximum(den, 1e-3)


def _block_all(m: np.ndarray, k: int) -> np.ndarray:
    f, h, w = m.shape
    return m[:, : h // k * k, : w // k * k].reshape(f, h // k, k, w // k, k).all((2, 4))


def _warp(img: np.ndarray, sx: np.ndarray, sy: np.ndarray) -> np.ndarray:
    """Bilinear sample of (P, h, w) at separable coordinates sx (P, 1, w), sy (P, h, 1), clamped:
    interpolate along x, then along y."""
    p, h, w = img.shape
    sx, sy = np.clip(sx, 0, w - 1.001), np.clip(sy, 0, h - 1.001)
    x0, y0 = sx.astype(np.int64), sy.astype(np.int64)
    fx, fy = (sx - x0).astype(img.dtype), (sy - y0).astype(img.dtype)
    x0, y0 = np.broadcast_to(x0, (p, h, w)), np.broadcast_to(y0, (p, h, w))
    cols = np.take_along_axis(img, x0, 2) * (1 - fx) + np.take_along_axis(img, x0 + 1, 2) * fx
    return np.take_along_axis(cols, y0, 1) * (1 - fy) + np.take_along_axis(cols, y0 + 1, 1) * fy


def _lk_step(src, dst, gx, gy, ok, shift, sigma, ax, ay):
    """One Gauss-Newton step for every frame pair at once; returns (d_shift, d_sigma) per pair.
    The Jacobian uses the gradient of the target frame (equal to the warped source at the fit)."""
    p, h, w = src.shape
    xx = (np.arange(w) + 0.5)[None, None, :]
    yy = (np.arange(h) + 0.5)[None, :, None]
    s, a = sigma[:, None, None], shift[:, None, None]
    sx = ax + (xx - ax - a) / s - 0.5  # where each pixel of frame t+1 comes from in frame t
    sy = ay + (yy - ay) / s - 0.5
    inside = (sx >= 0) & (sx <= w - 1) & (sy >= 0) & (sy <= h - 1) & ok
    resid = np.where(inside, _warp(src, sx, sy) - dst, 0.0)
    j_shift = -gx / s * inside  # d warped / d shift
    j_sigma = -(gx * (xx - ax - a) + gy * (yy - ay)) / s**2 * inside  # d warped / d sigma
    a11 = (j_shift**2).sum((1, 2)) + 1e-3
    a22 = (j_sigma**2).sum((1, 2)) + 1e-3
    a12 = (j_shift * j_sigma).sum((1, 2))
    b1, b2 = -(j_shift * resid).sum((1, 2)), -(j_sigma * resid).sum((1, 2))
    det = a11 * a22 - a12**2
    d_shift = (a22 * b1 - a12 * b2) / det
    d_sigma = (a11 * b2 - a12 * b1) / det
    return np.clip(d_shift, -3.0, 3.0), np.clip(d_sigma, -0.05, 0.05)


def _camera_label(pan: np.ndarray, scale: np.ndarray, unit: float, duration: float) -> str:
    zoom_rate = np.log(scale[-1]) / max(duration, 1e-6)
    pan_rate = pan[-1] / unit / max(duration, 1e-6)
    zoom_score, pan_score = abs(zoom_rate) / CAMERA_ZOOM_MIN, abs(pan_rate) / CAMERA_PAN_MIN
    if max(zoom_score, pan_score) < 1.0:
        return "static"
    if zoom_score >= pan_score:
        return "zoom_in" if zoom_rate > 0 else "zoom_out"
    return "pan_right" if pan_rate > 0 else "pan_left"
