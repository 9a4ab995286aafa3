"""Images through PIL: decoding what importers read, preparing what the served model and
``metasweep adapt`` are given, and preview grids.

Imports PIL, numpy and torch only: the served model uses it.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from metasweep.orchestrator.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_IMAGE_BYTES = 64 * 2**20  # an image file larger than this is refused unread
MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485  # PIL's decompression-bomb limit


@contextmanager
def _pil_errors(where: str) -> Iterator[None]:
    """PIL's failures as one UserError naming ``where``; an image over PIL's pixel limit (a
    decompression bomb, which PIL only warns about below twice the limit) is refused too."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UserError(
            f"{where} is larger than {MAX_IMAGE_PIXELS:,} pixels, PIL's decompression-bomb limit; "
            "resize it first"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise UserError(f"{where} is not a readable image ({exc}); remove it or fix the source") from None


def check_image_file(path: Path) -> None:
    """Refuse, before reading it, an image file too large to be one.

    Raises:
        UserError: a file over ``MAX_IMAGE_BYTES``.
    """
    size = path.stat().st_size
    if size > MAX_IMAGE_BYTES:
        raise UserError(
            f"{path} is {size / 2**20:.0f} MiB, more than the {MAX_IMAGE_BYTES // 2**20} MiB an image "
            "file may be; remove it from the folder"
        )


@dataclass
class ClassImages:
    """All images of one class, decoded: ``images: (n, H, W, C)`` uint8."""

    name: str
    images: np.ndarray
    group: str = ""
    """Where the class came from: ``background`` / ``evaluation`` for Omniglot, else empty."""


def to_array(image: Image.Image, size: int | None, mode: str) -> np.ndarray:
    """``image`` in PIL ``mode`` (``L`` or ``RGB``), resized to ``size`` squared (LANCZOS) unless
    ``None``, as uint8 ``(H, W, C)``."""
    image = image.convert(mode)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def decode(data: bytes, where: str, size: int | None, mode: str) -> np.ndarray:
    """An encoded image file's bytes as :func:`to_array` gives it.

    Raises:
        UserError: the bytes are not an image PIL reads (``where`` names it in the message).
    """
    if len(data) > MAX_IMAGE_BYTES:
        raise UserError(f"{where} is {len(data) / 2**20:.0f} MiB, too large to be an image file")
    with _pil_errors(where), Image.open(io.BytesIO(data)) as image:
        return to_array(image, size, mode)


def stack_class(name: str, arrays: list[np.ndarray], where: str) -> np.ndarray:
    """One class's images as ``(n, H, W, C)``.

    Raises:
        UserError: images of different sizes.
    """
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(
            f"images of different sizes in {where} (class {name!r}: {sorted(shapes)}); "
            "pass --image-size N to resize every image to N x N"
        )
    return np.stack(arrays)


def save_grid(classes: list[np.ndarray], out: Path) -> None:
    """Save a PNG grid, one row per class: ``classes[i]`` holds that row's ``(n, H, W, C)`` uint8
    images, all of one shape."""
    h, w, c = classes[0].shape[1:]
    per_class = max(len(images) for images in classes)
    canvas = np.full((len(classes) * (h + 2), per_class * (w + 2), c), 128, dtype=np.uint8)
    for row, images in enumerate(classes):
        for col, image in enumerate(images):
            canvas[row * (h + 2) : row * (h + 2) + h, col * (w + 2) : col * (w + 2) + w] = image
    Image.fromarray(canvas[:, :, 0] if c == 1 else canvas).save(out)


def model_images(
    images: np.ndarray, input_shape: tuple[int, ...], invert: bool, name: str = "images"
) -> torch.Tensor:
    """uint8 ``(n, H, W[, C])`` images in the dataset's convention, as the model sees them:
    ``(n, C, h, w)`` floats in ``[0, 1]``, resized, converted and inverted as the dataset was.

    Args:
        images: one array of equally sized images; any size, they are resized.
        input_shape: the model's ``(C, h, w)``.
        invert: whether the dataset's pixels are inverted before use.
        name: the input's name in error messages.

    Raises:
        ValueError: images of different sizes in one array, a wrong rank or dtype, or a channel
            count the model cannot take.
    """
    c, h, w = input_shape
    images = np.asarray(images)
    if images.dtype == object:
        # A JSON request arrives as nested lists; ragged ones are images of different sizes.
        try:
            images = np.array(images.tolist())
        except ValueError:
            images = images.astype(object)
        if images.dtype == object:
            raise ValueError(
                f"{name} holds images of different sizes; resize them to one size and stack them into "
                "one uint8 array (n, H, W) or (n, H, W, C)"
            )
    if images.dtype.kind not in "iu" or (images.size and (images.min() < 0 or images.max() > 255)):
        raise ValueError(
            f"{name} must hold 8-bit pixels (uint8, 0..255) as PIL gives them, got {images.dtype}"
            + (" values" if images.dtype.kind in "iu" else "")
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name} must be (n, H, W) or (n, H, W, C) images, got shape {images.shape}")
    if images.shape[-1] != c:
        if c == 1:
            images = np.stack([np.asarray(Image.fromarray(i.astype(np.uint8)).convert("L")) for i in images])[
                ..., None
            ]
        else:
            raise ValueError(f"the model takes {c}-channel images, got {images.shape[-1]} channels")
    if images.shape[1:3] != (h, w):
        mode = "L" if c == 1 else "RGB"
        images = np.stack(
            [
                np.asarray(
                    Image.fromarray(i.squeeze(-1) if c == 1 else i, mode=mode).resize(
                        (w, h), Image.Resampling.LANCZOS
                    )
                ).reshape(h, w, c)
                for i in images.astype(np.uint8)
            ]
        )
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return 1.0 - x if invert else x


@dataclass(frozen=True)
class ImageFiles:
    """Images read from files: ``images[i]`` came from ``paths[i]``, in folder ``labels[i]``."""

    images: list[np.ndarray]
    labels: list[str]
    paths: list[str]


def read_image_files(path: Path, input_shape: tuple[int, ...]) -> ImageFiles:
    """An image file, or every image under a folder (sorted), as uint8 arrays of one size in the
    model's channel mode; each labelled by the folder it is in (its class, for a support set).

    Args:
        path: one image, or a folder (class subfolders for a support set).
        input_shape: the model's ``(C, h, w)``; images of different sizes are resized to it.

    Raises:
        UserError: nothing at ``path``, no images, or a file PIL cannot read.
    """
    if not path.exists():
        raise UserError(f"{path} does not exist")
    files = (
        [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    )
    if not files:
        raise UserError(f"no images in {path}")
    c, h, w = input_shape
    mode = "L" if c == 1 else "RGB"
    opened = []
    for f in files:
        check_image_file(f)
        with _pil_errors(str(f)), Image.open(f) as image:
            opened.append(image.copy())
    if len({image.size for image in opened}) > 1:
        opened = [image.resize((w, h)) for image in opened]
    return ImageFiles(
        [np.asarray(image.convert(mode)) for image in opened],
        [f.parent.name for f in files],
        [str(f) for f in files],
    )
