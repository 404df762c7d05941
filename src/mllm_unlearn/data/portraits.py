"""Procedurally drawn portraits: a small face drawn in every tile of a mosaic.

Each person is a combination of five colours (background, hair, skin, eyes, shirt).
The face is repeated in every tile so that every image patch of a ViT sees the whole
identity (with identity spread across patches, tiny models learn text but not images).
"""
from __future__ import annotations

import io
from typing import Sequence

import numpy as np
from PIL import Image

PALETTE = np.array(
    [
        (230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48), (145, 30, 180),
        (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
        (128, 0, 0), (128, 128, 0), (0, 0, 128), (255, 255, 255), (40, 40, 40), (170, 255, 195),
    ],
    dtype=np.float32,
)
FEATURES = ("background", "hair", "skin", "eyes", "shirt")
TILE = 8

# Which feature colours each pixel of an 8x8 tile: a head with hair, two eyes, a shirt.
_TILE_LAYOUT = np.array(
    [
        [0, 0, 1, 1, 1, 1, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0],
        [0, 1, 2, 2, 2, 2, 1, 0],
        [0, 2, 3, 2, 2, 3, 2, 0],
        [0, 0, 2, 2, 2, 2, 0, 0],
        [0, 4, 4, 2, 2, 4, 4, 0],
        [4, 4, 4, 4, 4, 4, 4, 4],
        [4, 4, 4, 4, 4, 4, 4, 4],
    ]
)


def draw_identities(count: int, rng: np.random.Generator, min_distance: int = 2,
                    existing: Sequence[tuple[int, ...]] = ()) -> list[tuple[int, ...]]:
    """``count`` colour combinations, each pair differing in at least ``min_distance`` features
    (also from every ``existing`` one, which are not returned)."""
    chosen: list[tuple[int, ...]] = list(existing)
    attempts = 0
    while len(chosen) < count + len(existing):
        attempts += 1
        if attempts > 200_000:
            raise RuntimeError(f"cannot draw {count} portraits {min_distance} features apart")
        combo = tuple(int(c) for c in rng.choice(len(PALETTE), size=len(FEATURES), replace=False))
        if all(sum(a != b for a, b in zip(combo, other)) >= min_distance for other in chosen):
            chosen.append(combo)
    return chosen[len(existing):]


def render_portrait(identity: tuple[int, ...], size: int = 32) -> np.ndarray:
    tile = PALETTE[np.array(identity)[_TILE_LAYOUT]]
    reps = size // TILE
    return np.tile(tile, (reps, reps, 1))


def transform_portrait(pixels: np.ndarray, rng: np.random.Generator, kind: int) -> np.ndarray:
    """Test-split variants: noise, lighting change and mirroring (identity preserved)."""
    out = pixels.copy()
    if kind % 3 == 1:
        out = out * rng.uniform(0.8, 0.9) + rng.uniform(-10, 10, size=3)
    if kind % 3 == 2:
        out = out[:, ::-1]
    out = out + rng.normal(0, 12, size=out.shape)
    return out


def to_png(pixels: np.ndarray) -> bytes:
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def from_png(data: bytes) -> Image.Image:
    return Image.open(io.BytesIO(data)).convert("RGB")
