"""Decoding image files of any mode into upright 8-bit RGB, and finding the ones that cannot be.

Real image folders (scraped datasets, phone photos, scans) mix palette, CMYK, 16-bit, alpha and
EXIF-rotated images with truncated downloads and files that are not images at all.
:func:`load_image` turns every readable file into the same thing, and :func:`scan_images`
finds the unreadable ones once, before training, so an epoch never stops on a bad file.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from moderncnn.io.errors import DataError

# File suffixes treated as images (those of torchvision's ImageFolder, plus .tiff and .gif).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp", ".gif"}
)
# PIL's own decompression-bomb threshold (pixels), our default.
DEFAULT_MAX_IMAGE_PIXELS: int | None = Image.MAX_IMAGE_PIXELS
# Longer side / shorter side. A 1 x 20000 PNG is 140 bytes and 20,000 pixels, but resizing its
# shorter side to 256 makes 5 million pixels (GBs in the resize's float buffers); panoramas
# are 2:1 to 12:1, so 100:1 turns nothing genuine away.
DEFAULT_MAX_ASPECT_RATIO: float | None = 100.0
_WHITE = (255, 255, 255, 255)


class BadImageError(DataError):
    """An image file that cannot be decoded: empty, truncated, not an image, too large."""


def _allow_pixels(limit: int | None) -> None:
    """Lets PIL open images up to ``limit`` pixels; we check ``limit`` ourselves.

    PIL's limit is a process-wide global (``Image.MAX_IMAGE_PIXELS``) that PIL also checks while
    decoding some formats; it is raised to ``limit`` when lower, never lowered.
    """
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and (limit is None or limit > current):
        Image.MAX_IMAGE_PIXELS = limit


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit ("I;16*"), 32-bit ("I") or float ("F") grayscale -> "L", scaled, not clipped."""
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (image.mode == "I" and values.max(initial=0) > 255):
        values = values / 257  # 0..65535 -> 0..255 exactly (65535 = 255 * 257)
    elif image.mode == "F" and values.max(initial=0) <= 1:
        values = values * 255  # float images in [0, 1]
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto white (not black, not dropped)."""
    if image.mode == "RGB":
        return image
    if image.mode.startswith("I") or image.mode == "F":
        return _high_bit_depth_to_8bit(image).convert("RGB")
    has_alpha = image.mode in {"RGBA", "LA", "PA", "RGBa", "La"} or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, ...


def load_image(
    path: str | Path,
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> Image.Image:
    """Fully decodes ``path`` into an upright (EXIF-oriented) RGB image.

    Refused before decoding: more than ``max_image_pixels`` pixels (a decompression bomb), or
    a longer side more than ``max_aspect_ratio`` times the shorter (a resize bomb: resizing the
    shorter side of a 1 x 20000 image to 256 makes 5 million pixels). None: no limit.

    Raises:
        BadImageError: naming the file and why it cannot be used.
    """
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise BadImageError(f"{path}: empty file (0 bytes)")
        _allow_pixels(max_image_pixels)
        with Image.open(path) as image:
            pixels = image.width * image.height
            if max_image_pixels is not None and pixels > max_image_pixels:
                raise BadImageError(
                    f"{path}: {image.width}x{image.height} = {pixels} pixels is above "
                    f"max_image_pixels={max_image_pixels} (decompression-bomb guard); "
                    "raise max_image_pixels if the image is genuine"
                )
            _check_aspect_ratio(path, image.width, image.height, max_aspect_ratio)
            image.load()  # decode everything now: truncated files fail here, not later
            return to_rgb(ImageOps.exif_transpose(image))
    except BadImageError:
        raise
    except Image.DecompressionBombError as err:
        # PIL refuses, in Image.open, images above twice its limit (>= ours) before we look.
        raise BadImageError(
            f"{path}: {err} (above max_image_pixels={max_image_pixels}, the decompression-bomb "
            "guard); raise max_image_pixels if the image is genuine"
        ) from err
    except (FileNotFoundError, PermissionError, IsADirectoryError) as err:
        raise BadImageError(f"{path}: cannot read the file ({err.strerror})") from err
    except Image.UnidentifiedImageError as err:
        raise BadImageError(f"{path}: not an image file PIL can read") from err
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(f"{path}: truncated or corrupt image ({err})") from err
    except (MemoryError, RecursionError) as err:
        raise BadImageError(f"{path}: corrupt image (decoding it ran out of memory)") from err
    except Exception as err:  # PIL's decoders raise many types on crafted bytes
        reason = f"{type(err).__name__}: {err}" if str(err) else type(err).__name__
        raise BadImageError(f"{path}: truncated or corrupt image ({reason})") from err


def _check_aspect_ratio(path: Path, width: int, height: int, limit: float | None) -> None:
    if min(width, height) < 1:
        raise BadImageError(f"{path}: {width}x{height} image has no pixels")
    if limit is None:
        return
    ratio = max(width, height) / min(width, height)
    if ratio > limit:
        raise BadImageError(
            f"{path}: {width}x{height} has an aspect ratio of {ratio:.0f}:1, above "
            f"max_aspect_ratio={limit:g} (resize-bomb guard: resizing its shorter side would "
            "make a huge image); crop it, or raise max_aspect_ratio if the image is genuine"
        )


def _check(path: Path, max_image_pixels: int | None, max_aspect_ratio: float | None) -> str | None:
    try:
        load_image(path, max_image_pixels, max_aspect_ratio)
    except BadImageError as err:
        return str(err).removeprefix(f"{path}: ")
    return None


def scan_images(
    paths: Sequence[Path],
    max_image_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
    workers: int = 1,
    max_aspect_ratio: float | None = DEFAULT_MAX_ASPECT_RATIO,
) -> dict[Path, str]:
    """Decodes every file and returns the unusable ones: ``{path: reason}``.

    Decoding runs in ``workers`` threads (PIL releases the GIL while decoding).
    """
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        reasons = pool.map(lambda p: _check(p, max_image_pixels, max_aspect_ratio), paths)
        return {path: reason for path, reason in zip(paths, reasons, strict=True) if reason}
