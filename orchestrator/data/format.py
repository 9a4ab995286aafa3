"""The metasweep dataset format: one Parquet file of images, through pyarrow.

Layout (one row per image, rows grouped by split then class; docs/datasets.md):

=============  ===========================  ===============================================
column         type                         meaning
=============  ===========================  ===============================================
``class_id``   int32                        dense class index over the whole dataset
``class_name`` string                       e.g. ``Greek/character07`` or a folder name
``split``      string                       ``train``, ``val`` or ``test``
``image``      fixed_size_binary(H*W*C)     uint8 pixels, row-major ``(H, W, C)``
=============  ===========================  ===============================================

Dataset-level facts live in the Parquet schema metadata under the key ``metasweep`` (JSON):
format version, source, protocol, seed, image shape, pixel convention, and counts per split.

:func:`load_dataset` reads a file into one contiguous uint8 array (``pixels``) each time it is
called; the caller keeps the :class:`EpisodicDataset` and hands it to the samplers (nothing here
caches by location, so a file rewritten in place is read anew).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from metasweep.orchestrator.data.images import ClassImages, save_grid
from metasweep.orchestrator.data.storage import filesystem
from metasweep.orchestrator.errors import UserError

FORMAT_VERSION = 1
METADATA_KEY = b"metasweep"
SPLITS = ("train", "val", "test")


def write_dataset(
    classes: Sequence[ClassImages],
    splits: Sequence[str],
    out: str,
    metadata: dict[str, Any],
) -> dict[str, Any]:
    """Write classes as a metasweep Parquet dataset, atomically.

    Rows are ordered by split (train, val, test) then by the classes' order, so the same inputs
    give byte-identical files. The file is written beside ``out`` under a temporary name and
    renamed at the end; on any failure nothing is left at ``out``.

    Args:
        classes: decoded classes, all with the same image shape.
        splits: the split of each class.
        out: destination path or URI (``s3://…`` is uploaded in one PUT, after the local write).
        metadata: dataset-level facts (source, protocol, seed, pixel convention, ...).

    Returns:
        The full metadata written (with counts and image shape).

    Raises:
        UserError: no classes, mismatched image shapes, or an unwritable destination.
    """
    if not classes:
        raise UserError("nothing to import: no classes found")
    shape = classes[0].images.shape[1:]
    for c in classes:
        if c.images.shape[1:] != shape:
            raise UserError(
                f"class {c.name!r} has images of shape {c.images.shape[1:]}, others {shape}; "
                "pass --image-size N to resize every image"
            )
    order = [i for split in SPLITS for i in range(len(classes)) if splits[i] == split]
    counts = {s: sum(1 for x in splits if x == s) for s in SPLITS}
    images_per_class = [int(c.images.shape[0]) for c in classes]
    full_metadata = {
        **metadata,
        "format_version": FORMAT_VERSION,
        "image_shape": list(shape),
        "classes": counts,
        "images": int(sum(images_per_class)),
        "images_per_class": {"min": min(images_per_class), "max": max(images_per_class)},
    }
    width = int(np.prod(shape))
    class_ids, names, split_col, pixels = [], [], [], []
    for new_id, index in enumerate(order):
        c = classes[index]
        n = c.images.shape[0]
        class_ids.append(np.full(n, new_id, dtype=np.int32))
        names += [c.name] * n
        split_col += [splits[index]] * n
        pixels.append(np.ascontiguousarray(c.images).reshape(n, width))
    flat = np.concatenate(pixels)
    table = pa.table(
        {
            "class_id": pa.array(np.concatenate(class_ids)),
            "class_name": pa.array(names, pa.string()),
            "split": pa.array(split_col, pa.string()),
            "image": pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(width), len(flat), [None, pa.py_buffer(flat.tobytes())]
            ),
        }
    ).replace_schema_metadata({METADATA_KEY: json.dumps(full_metadata, sort_keys=True).encode()})
    _write_atomic(table, out)
    return full_metadata


def _write_atomic(table: pa.Table, out: str) -> None:
    fs, path = filesystem(out)
    if isinstance(fs, pafs.LocalFileSystem):
        target = Path(path)
        if target.is_dir():
            raise UserError(
                f"--out {out} is a folder; give a file name such as {out.rstrip('/')}/dataset.parquet"
            )
        if not target.parent.is_dir():
            raise UserError(f"--out {out}: folder {target.parent} does not exist")
        tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
        try:
            pq.write_table(table, tmp, compression="zstd", row_group_size=1 << 14, store_schema=True)
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)
        return
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", row_group_size=1 << 14)
    try:
        # One PUT: object stores make the object visible only once it is complete.
        with fs.open_output_stream(path) as stream:
            stream.write(sink.getvalue())
    except OSError as exc:
        raise UserError(f"cannot write {out}: {exc}") from None


# --------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EpisodicDataset:
    """A metasweep dataset in memory: pixels of every image plus where each class lies.

    Attributes:
        uri: where it was read from.
        metadata: the dataset-level metadata (see module docstring).
        pixels: ``(images, H, W, C)`` uint8, one contiguous array shared by every sampler.
        class_names: name of each class id.
        class_split: split of each class id.
        class_start: first row of each class id in ``pixels``; ``class_start[-1]`` = rows.
    """

    uri: str
    metadata: dict[str, Any]
    pixels: np.ndarray
    class_names: tuple[str, ...]
    class_split: tuple[str, ...]
    class_start: np.ndarray = field(repr=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(H, W, C)`` of every image."""
        h, w, c = self.metadata["image_shape"]
        return h, w, c

    def classes_in(self, split: str) -> np.ndarray:
        """Class ids of ``split``."""
        return np.array([i for i, s in enumerate(self.class_split) if s == split], dtype=np.int64)

    def images_per_class(self) -> np.ndarray:
        """Number of images of each class id."""
        return np.diff(self.class_start)


def read_metadata(uri: str) -> tuple[dict[str, Any], pa.Schema, int]:
    """The metasweep metadata, Arrow schema and file size of a dataset, without reading pixels.

    Raises:
        UserError: missing, unreadable or non-metasweep file.
    """
    fs, path = filesystem(uri)
    try:
        info = fs.get_file_info(path)
        if info.type != pafs.FileType.File:
            raise UserError(
                f"dataset {uri} does not exist (or is not a file); create it with 'metasweep data import'"
            )
        schema = pq.read_schema(path, filesystem=fs)
    except UserError:
        raise
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read dataset {uri}: {exc}") from None
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None or not {"class_id", "class_name", "split", "image"} <= set(schema.names):
        raise UserError(
            f"{uri} is a Parquet file but not a metasweep dataset (no '{METADATA_KEY.decode()}' metadata); "
            "create one with 'metasweep data import'"
        )
    try:
        metadata = json.loads(raw)
    except ValueError:
        metadata = None
    if not isinstance(metadata, dict):
        raise UserError(
            f"{uri}: its metasweep metadata is not a JSON object; re-create it with 'metasweep data import'"
        )
    if metadata.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{uri} has dataset format {metadata.get('format_version')}, this version reads {FORMAT_VERSION}"
        )
    shape = metadata.get("image_shape")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in shape)
    ):
        raise UserError(f"{uri}: metadata image_shape {shape!r} is not [height, width, channels]")
    return metadata, schema, info.size


def load_dataset(uri: str) -> EpisodicDataset:
    """Read a dataset, pixels into one contiguous array (memory-mapped for local files).

    Raises:
        UserError: missing, unreadable, unauthorised or non-metasweep dataset.
    """
    metadata, _, _ = read_metadata(uri)
    fs, path = filesystem(uri)
    try:
        table = pq.read_table(
            path,
            filesystem=fs,
            columns=["class_id", "class_name", "split", "image"],
            memory_map=isinstance(fs, pafs.LocalFileSystem),
        )
    except (OSError, pa.ArrowException) as exc:
        raise UserError(f"cannot read dataset {uri}: {exc}") from None
    h, w, c = metadata["image_shape"]
    image = table.column("image").combine_chunks()
    if (
        not pa.types.is_fixed_size_binary(image.type)
        or image.type.byte_width != h * w * c
        or image.null_count
    ):
        raise UserError(
            f"{uri}: its images are {image.type}, but its metadata says {h}x{w}x{c} pixels each "
            f"(fixed_size_binary[{h * w * c}]); re-create it with 'metasweep data import'"
        )
    if metadata.get("images", len(image)) != len(image):
        raise UserError(
            f"{uri}: its metadata counts {metadata.get('images')} images but the file holds {len(image)}; "
            "re-create it with 'metasweep data import'"
        )
    pixels = np.frombuffer(
        image.buffers()[1], dtype=np.uint8, count=len(image) * h * w * c, offset=image.offset * h * w * c
    ).reshape(len(image), h, w, c)
    class_id = table.column("class_id").to_numpy()
    if len(class_id) and (np.any(np.diff(class_id) < 0) or class_id[0] != 0):
        raise UserError(f"{uri}: rows are not grouped by class; re-create it with 'metasweep data import'")
    boundaries = np.flatnonzero(np.diff(class_id)) + 1
    starts = np.concatenate([[0], boundaries, [len(class_id)]]).astype(np.int64)
    first_rows = starts[:-1]
    names = table.column("class_name").take(pa.array(first_rows)).to_pylist()
    splits = table.column("split").take(pa.array(first_rows)).to_pylist()
    unknown = sorted({str(split) for split in splits} - set(SPLITS))
    if unknown:
        raise UserError(f"{uri}: classes in unknown splits {unknown}; splits are {', '.join(SPLITS)}")
    return EpisodicDataset(uri, metadata, pixels, tuple(names), tuple(splits), starts)


# --------------------------------------------------------------------------------------------
# Episode sampling
# --------------------------------------------------------------------------------------------


def preview(dataset: EpisodicDataset, out: Path, classes: int = 8, per_class: int = 8) -> None:
    """Save a PNG grid: one row per class (spread over the splits), ``per_class`` images each."""
    ids = np.linspace(0, len(dataset.class_names) - 1, num=min(classes, len(dataset.class_names))).astype(int)
    rows = []
    for cid in ids:
        start, stop = dataset.class_start[cid], dataset.class_start[cid + 1]
        rows.append(dataset.pixels[start : min(stop, start + per_class)])
    save_grid(rows, out)
