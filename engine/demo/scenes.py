"""Procedural class-conditional scenes: the demo model's dataset, regenerated from a seed.

One saturated shape (circle, square, triangle, ring in red, green, blue or yellow: 16 classes)
over a desaturated two-colour linear gradient, 32x32 RGB. The generative process is known, so
every image carries exact shape and colour labels and the data never has to be stored: the
same ``(class_ids, seed)`` always renders the same pixels. Large smooth background regions are
deliberate; they are where content-aware relaxation of speculative decoding should pay off.

Shapes are drawn as a coverage mask at 4x resolution with PIL and Lanczos-downsampled, so edges
are anti-aliased; the gradient is smooth already and is computed at the final resolution.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

from ..errors import SettingsError

IMAGE_SIZE = 32
SUPERSAMPLE = 4
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "ring")
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow")
# Saturated object colours (RGB 0-255); a small per-image jitter is added around them.
COLOUR_RGB = np.array([[225, 35, 35], [35, 185, 55], [40, 70, 230], [240, 215, 30]], dtype=np.float32)
COLOUR_JITTER = 18.0
RADIUS_RANGE = (0.18, 0.32)  # object radius as a fraction of the image side
RING_HOLE = 0.55  # inner radius of a ring relative to its outer radius
TRIANGLE_SCALE = 1.15  # circumradius of a triangle relative to the drawn radius
BACKGROUND_SATURATION = 0.3  # how much of a random colour survives the mix towards its grey
CLASS_NAMES: tuple[str, ...] = tuple(f"{c} {s}" for c in COLOURS for s in SHAPES)
NUM_CLASSES = len(CLASS_NAMES)


def class_id(colour: str, shape: str) -> int:
    """Class index of ``colour`` x ``shape``; classes are ordered colour-major like CLASS_NAMES."""
    return COLOURS.index(colour) * len(SHAPES) + SHAPES.index(shape)


def shape_of(class_ids: np.ndarray | int) -> np.ndarray | int:
    """Shape index (into SHAPES) of class ids."""
    return class_ids % len(SHAPES)


def colour_of(class_ids: np.ndarray | int) -> np.ndarray | int:
    """Colour index (into COLOURS) of class ids."""
    return class_ids // len(SHAPES)


def parse_prompt(prompt: str) -> int:
    """``"red ring"`` (any case and spacing, an optional leading "a"/"an") -> class id."""
    words = prompt.lower().split()
    if words[:1] in (["a"], ["an"]):
        words = words[1:]
    name = " ".join(words)
    if name not in CLASS_NAMES:
        raise SettingsError(f"unknown demo prompt {prompt!r}; valid prompts: {', '.join(CLASS_NAMES)}")
    return CLASS_NAMES.index(name)


def _shape_mask(shape: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Coverage in [0, 1] of one shape, ``[IMAGE_SIZE, IMAGE_SIZE]``, anti-aliased by supersampling."""
    s = SUPERSAMPLE
    big = Image.new("L", (IMAGE_SIZE * s, IMAGE_SIZE * s), 0)
    draw = ImageDraw.Draw(big)
    x, y, rr = cx * s, cy * s, r * s
    name = SHAPES[shape]
    if name == "circle":
        draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=255)
    elif name == "square":
        half = rr * 0.85  # same area scale as the circle, roughly
        draw.rectangle((x - half, y - half, x + half, y + half), fill=255)
    elif name == "triangle":
        # Upright equilateral triangle, enlarged to an area like the others', its bounding box
        # centred on (x, y) so it stays inside the image like a circle of radius r would.
        big_r = rr * TRIANGLE_SCALE
        top = y - 0.75 * big_r + big_r
        angles = np.pi / 2 + np.array([0.0, 2.0, 4.0]) * np.pi / 3
        pts = [(x + big_r * np.cos(a), top - big_r * np.sin(a)) for a in angles]
        draw.polygon(pts, fill=255)
    else:  # ring
        draw.ellipse((x - rr, y - rr, x + rr, y + rr), fill=255)
        hole = rr * RING_HOLE
        draw.ellipse((x - hole, y - hole, x + hole, y + hole), fill=0)
    small = big.resize((IMAGE_SIZE, IMAGE_SIZE), Image.LANCZOS)
    return np.clip(np.asarray(small, dtype=np.float32) / 255.0, 0.0, 1.0)


def _background(rng: np.random.Generator) -> np.ndarray:
    """A desaturated two-colour linear gradient in a random direction, float RGB ``[H, W, 3]``."""
    ends = rng.uniform(40.0, 215.0, size=(2, 3)).astype(np.float32)
    grey = ends.mean(axis=1, keepdims=True)
    ends = grey + BACKGROUND_SATURATION * (ends - grey)
    angle = rng.uniform(0.0, 2 * np.pi)
    coords = (np.arange(IMAGE_SIZE, dtype=np.float32) + 0.5) / IMAGE_SIZE - 0.5
    proj = np.cos(angle) * coords[None, :] + np.sin(angle) * coords[:, None]  # [H, W]
    t = np.clip(proj / np.sqrt(0.5) + 0.5, 0.0, 1.0)[..., None]
    return ends[0] * (1 - t) + ends[1] * t


def render_batch(class_ids: np.ndarray | list[int], seed: int) -> np.ndarray:
    """Render one scene per class id -> ``uint8 [B, 32, 32, 3]``; deterministic in (class_ids, seed)."""
    ids = np.asarray(class_ids, dtype=np.int64)
    if ids.size and (ids.min() < 0 or ids.max() >= NUM_CLASSES):
        raise SettingsError(f"demo class ids must be in 0..{NUM_CLASSES - 1}")
    rng = np.random.default_rng(seed)
    out = np.empty((len(ids), IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    for i, cid in enumerate(ids):
        bg = _background(rng)
        r = rng.uniform(*RADIUS_RANGE) * IMAGE_SIZE
        cx, cy = rng.uniform(r, IMAGE_SIZE - r, size=2)
        colour = COLOUR_RGB[colour_of(int(cid))] + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3)
        alpha = _shape_mask(int(shape_of(int(cid))), float(cx), float(cy), float(r))[..., None]
        img = bg * (1 - alpha) + colour.astype(np.float32) * alpha
        out[i] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def sample_scenes(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` scenes with uniformly drawn classes -> ``(images uint8 [n,32,32,3], class_ids int64 [n])``."""
    rng = np.random.default_rng([seed, 1])
    ids = rng.integers(0, NUM_CLASSES, size=n)
    return render_batch(ids, seed), ids


__all__ = [
    "CLASS_NAMES",
    "COLOURS",
    "SHAPES",
    "NUM_CLASSES",
    "IMAGE_SIZE",
    "class_id",
    "shape_of",
    "colour_of",
    "parse_prompt",
    "render_batch",
    "sample_scenes",
]
