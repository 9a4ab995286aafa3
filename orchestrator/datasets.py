"""Episodic image datasets as Parquet, through pyarrow: import, inspect, and sample episodes.

This is the one module that talks to pyarrow.

Layout of a metasweep dataset (one Parquet file, one row per image, rows grouped by split then
class; see README "Dataset format"):

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

A dataset is read once per process into one contiguous uint8 array (``pixels``) that all
samplers share; episodes are index gathers from it. Rotation augmentation (new classes rotated by
90°, 180°, 270°, as in the MAML paper) is applied when a split is loaded for sampling, in memory;
the file holds only the original images.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache, partial
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from PIL import Image, UnidentifiedImageError

from algorithms.tasks import Episode
from orchestrator.errors import UserError

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
METADATA_KEY = b"metasweep"
SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
OMNIGLOT_BACKGROUND_CLASSES = 964
OMNIGLOT_PIXELS = "white background (255), black ink (0)"


# --------------------------------------------------------------------------------------------
# Import
# --------------------------------------------------------------------------------------------


@dataclass
class ClassImages:
    """All images of one class, decoded: ``images: (n, H, W, C)`` uint8."""

    name: str
    images: np.ndarray
    group: str = ""
    """Where the class came from: ``background`` / ``evaluation`` for Omniglot, else empty."""


def _to_array(image: Image.Image, size: int | None, mode: str) -> np.ndarray:
    image = image.convert(mode)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.LANCZOS)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if array.ndim == 2 else array


def _decode(data: bytes, where: str, size: int | None, mode: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as image:
            return _to_array(image, size, mode)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UserError(f"{where} is not a readable image ({exc}); remove it or fix the source") from None


def _stack_class(name: str, arrays: list[np.ndarray], where: str) -> np.ndarray:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(
            f"images of different sizes in {where} (class {name!r}: {sorted(shapes)}); "
            "pass --image-size N to resize every image to N x N"
        )
    return np.stack(arrays)


_OMNIGLOT_CHAR = re.compile(r"(?:^|/)(images_(background|evaluation)[^/]*)/([^/]+)/(character\d+)/([^/]+)$")


def read_omniglot_archive(path: Path, size: int | None) -> Iterator[ClassImages]:
    """Classes of an official Omniglot zip or unzipped folder, in sorted order.

    Layout: ``images_<set>[_suffix]/<Alphabet>/characterNN/<id>_<drawer>.png``.

    Raises:
        UserError: unreadable or truncated archive, a file that is not an image, or no
            Omniglot characters found.
    """
    entries: dict[tuple[str, str], list[tuple[str, Callable[[], bytes]]]] = {}
    if path.is_dir():
        for file in sorted(path.rglob("*")):
            rel = file.relative_to(path.parent).as_posix()
            match = _OMNIGLOT_CHAR.search(rel)
            if match and file.is_file():
                key = (match.group(2), f"{match.group(3)}/{match.group(4)}")
                entries.setdefault(key, []).append((rel, file.read_bytes))
    else:
        try:
            archive = zipfile.ZipFile(path)
            bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise UserError(f"{path} is not a readable zip archive ({exc})") from None
        if bad is not None:
            raise UserError(f"{path} is corrupt: member {bad!r} fails its CRC check")
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            match = _OMNIGLOT_CHAR.search(info.filename)
            if match and not info.is_dir():
                key = (match.group(2), f"{match.group(3)}/{match.group(4)}")
                entries.setdefault(key, []).append((info.filename, partial(archive.read, info.filename)))
    if not entries:
        raise UserError(
            f"no Omniglot characters in {path}; expected images_<set>/<Alphabet>/characterNN/*.png"
        )
    for (group, name), files in sorted(entries.items(), key=lambda kv: kv[0][1]):
        arrays = [_decode(read(), f"{path}:{rel}", size, "L") for rel, read in sorted(files)]
        yield ClassImages(name, _stack_class(name, arrays, str(path)), group)


def read_omniglot_npz(path: Path, size: int | None) -> Iterator[ClassImages]:
    """Classes of ``images_background.npz`` / ``images_evaluation.npz`` (bool, True = white).

    Character ``i`` is the official id ``i + 1`` (background) or ``i + 965`` (evaluation).

    Raises:
        UserError: unreadable file or unexpected arrays.
    """
    group = "evaluation" if "evaluation" in path.name else "background"
    offset = OMNIGLOT_BACKGROUND_CLASSES + 1 if group == "evaluation" else 1
    try:
        with np.load(path) as archive:
            images = archive["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path} is not a readable Omniglot npz (needs an 'images' array): {exc}") from None
    if images.ndim != 4:
        raise UserError(f"{path}: 'images' must be (characters, drawings, H, W), got shape {images.shape}")
    for i, drawings in enumerate(images):
        pixels = drawings.astype(np.uint8) * 255
        arrays = [_to_array(Image.fromarray(p, mode="L"), size, "L") for p in pixels]
        yield ClassImages(f"character{i + offset:04d}", np.stack(arrays), group)


def read_image_folder(root: Path, size: int | None, mode: str) -> Iterator[ClassImages]:
    """Classes of ``root/<class name>/*.png|jpg|...``, sorted by class name then file name.

    Raises:
        UserError: no class subfolders, a class without images, a file that is not an image,
            or mismatched sizes without ``size``.
    """
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; expected root/<class name>/<images>")
    classes = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise UserError(f"{root} has no class subfolders; expected root/<class name>/<images>")
    shapes: set[tuple[int, ...]] = set()
    for folder in classes:
        files = sorted(f for f in folder.iterdir() if f.is_file() and not f.name.startswith("."))
        if not files:
            raise UserError(f"class folder {folder} holds no images")
        arrays = [_decode(f.read_bytes(), str(f), size, mode) for f in files]
        stacked = _stack_class(folder.name, arrays, str(folder))
        shapes.add(stacked.shape[1:])
        if len(shapes) > 1:
            raise UserError(
                f"images of different sizes across classes in {root} ({sorted(shapes)}); "
                "pass --image-size N to resize every image to N x N"
            )
        yield ClassImages(folder.name, stacked)


def omniglot_classes(sources: Sequence[Path], size: int | None) -> Iterator[ClassImages]:
    """Classes from any mix of Omniglot npz files, zips and folders; duplicates are dropped.

    Raises:
        UserError: a missing source, or the same character with different pixels.
    """
    seen: dict[str, str] = {}
    for source in sources:
        if not source.exists():
            raise UserError(f"Omniglot source {source} does not exist")
        reader = read_omniglot_npz if source.suffix == ".npz" else read_omniglot_archive
        for cls in reader(source, size):
            digest = hashlib.sha256(cls.images.tobytes()).hexdigest()
            if cls.name in seen:
                if seen[cls.name] != digest:
                    raise UserError(f"character {cls.name!r} appears twice with different images ({source})")
                continue
            seen[cls.name] = digest
            yield cls


def assign_splits_vinyals(
    classes: Sequence[ClassImages], seed: int, train_classes: int, val_classes: int
) -> list[str]:
    """The MAML protocol: pool every class, shuffle with ``seed``, the first ``train_classes``
    for meta-training (the last ``val_classes`` of them for meta-validation), the rest meta-test.

    Raises:
        UserError: not enough classes for the requested counts.
    """
    n = len(classes)
    if not 0 <= val_classes < train_classes < n:
        raise UserError(
            f"vinyals protocol needs val_classes < train_classes < classes, got val_classes="
            f"{val_classes}, train_classes={train_classes} and {n} classes; lower --train-classes"
        )
    order = np.random.default_rng(seed).permutation(n)
    splits = [""] * n
    for rank, index in enumerate(order):
        if rank < train_classes - val_classes:
            splits[index] = "train"
        elif rank < train_classes:
            splits[index] = "val"
        else:
            splits[index] = "test"
    return splits


def assign_splits_lake(classes: Sequence[ClassImages], seed: int, val_classes: int) -> list[str]:
    """Lake et al.: background classes for meta-training (a seeded slice of ``val_classes`` of
    them for meta-validation), evaluation classes for meta-test.

    Raises:
        UserError: no background or no evaluation classes, or too few for the validation slice.
    """
    background = [i for i, c in enumerate(classes) if c.group == "background"]
    evaluation = [i for i, c in enumerate(classes) if c.group == "evaluation"]
    if not background or not evaluation:
        raise UserError(
            f"lake protocol needs both background and evaluation characters, got {len(background)} "
            f"and {len(evaluation)}; add images_evaluation.npz/.zip or use --protocol vinyals"
        )
    if val_classes >= len(background):
        raise UserError(f"--val-classes {val_classes} leaves no background class for meta-training")
    splits = ["test"] * len(classes)
    val = set(np.random.default_rng(seed).permutation(background)[:val_classes].tolist())
    for i in background:
        splits[i] = "val" if i in val else "train"
    return splits


def assign_splits_ratios(classes: Sequence[ClassImages], seed: int, ratios: Sequence[float]) -> list[str]:
    """Shuffle classes with ``seed`` and cut them by ``(train, val, test)`` ratios.

    Raises:
        UserError: ratios that are negative, do not sum to 1, or leave meta-training empty.
    """
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1) > 1e-6:
        raise UserError(f"--split-ratios needs three non-negative numbers summing to 1, got {list(ratios)}")
    n = len(classes)
    n_train = round(ratios[0] * n)
    n_val = round(ratios[1] * n)
    if n_train < 1:
        raise UserError(f"--split-ratios {list(ratios)} leaves no meta-training class out of {n}")
    order = np.random.default_rng(seed).permutation(n)
    splits = [""] * n
    for rank, index in enumerate(order):
        splits[index] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    return splits


def assign_splits_lists(classes: Sequence[ClassImages], lists: dict[str, set[str]]) -> list[str]:
    """Explicit class lists per split; every class must be in exactly one list.

    Raises:
        UserError: a class in no list or in two, or a listed class that does not exist.
    """
    names = {c.name for c in classes}
    for split, members in lists.items():
        missing = sorted(members - names)
        if missing:
            raise UserError(f"{split} list names classes that do not exist: {', '.join(missing[:5])}")
    splits = []
    for c in classes:
        found = [s for s in SPLITS if c.name in lists.get(s, set())]
        if len(found) != 1:
            raise UserError(f"class {c.name!r} must be in exactly one split list, found in {found or 'none'}")
        splits.append(found[0])
    return splits


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
    fs, path = _filesystem(out)
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


def _filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and path for a local path or a URI (``file://``, ``s3://``, ``gs://``).

    S3-compatible stores: set ``AWS_ENDPOINT_URL`` (and ``AWS_ACCESS_KEY_ID`` /
    ``AWS_SECRET_ACCESS_KEY``), or put ``?endpoint_override=host:port&scheme=http`` on the URI.
    """
    if "://" not in uri:
        return pafs.LocalFileSystem(), absolute(uri)
    if uri.startswith("s3://") and "endpoint_override" not in uri and os.environ.get("AWS_ENDPOINT_URL"):
        endpoint = os.environ["AWS_ENDPOINT_URL"]
        scheme, _, host = endpoint.partition("://")
        sep = "&" if "?" in uri else "?"
        uri = f"{uri}{sep}endpoint_override={host or scheme}&scheme={scheme if host else 'https'}"
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, OSError, ValueError) as exc:
        raise UserError(f"cannot open {uri.split('?')[0]}: {exc}") from None


def absolute(location: str) -> str:
    """A local path made absolute (``~`` expanded), or a URI (``s3://bucket/x``) as it is."""
    if "://" in location:
        return location.rstrip("/")
    return str(Path(location).expanduser().absolute())


def path_exists(uri: str) -> bool:
    """Whether a local path or an object-storage URI names an existing file or folder."""
    fs, path = _filesystem(uri)
    try:
        return fs.get_file_info(path).type != pafs.FileType.NotFound
    except OSError as exc:
        raise UserError(f"cannot read {uri.split('?')[0]}: {exc}") from None


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
    fs, path = _filesystem(uri)
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
    metadata = json.loads(raw)
    if metadata.get("format_version") != FORMAT_VERSION:
        raise UserError(
            f"{uri} has dataset format {metadata.get('format_version')}, this version reads {FORMAT_VERSION}"
        )
    return metadata, schema, info.size


_LOADED: dict[str, EpisodicDataset] = {}


def share_dataset(dataset: EpisodicDataset) -> None:
    """Make ``dataset`` the one :func:`load_dataset` returns for its URI in this process.

    Ray workers receive the dataset from the object store (zero-copy on the node) and register
    it here, so no trial re-reads the file.
    """
    _LOADED[dataset.uri] = dataset


def load_dataset(uri: str) -> EpisodicDataset:
    """Read a dataset once per process (cached by URI), pixels into one contiguous array.

    Raises:
        UserError: missing, unreadable, unauthorised or non-metasweep dataset.
    """
    if uri not in _LOADED:
        _LOADED[uri] = _read_dataset(uri)
    return _LOADED[uri]


def _read_dataset(uri: str) -> EpisodicDataset:
    metadata, _, _ = read_metadata(uri)
    fs, path = _filesystem(uri)
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
    return EpisodicDataset(uri, metadata, pixels, tuple(names), tuple(splits), starts)


# --------------------------------------------------------------------------------------------
# Episode sampling
# --------------------------------------------------------------------------------------------


class EpisodeSampler:
    """Draws N-way K-shot episodes from one split of a dataset.

    Each episode picks ``ways`` distinct classes and, per class, ``shots + queries`` distinct
    images (support and query never share an image); labels are re-assigned ``0..ways-1`` per
    episode in the order the classes were drawn. Support rows are grouped by class
    (``ways*shots``), then the query rows (``ways*queries``).

    Pixels are turned into floats in ``[0, 1]``; with ``invert`` (Omniglot: black ink on white),
    ink becomes 1 and background 0, as in the MAML reference code.

    Determinism: the episodes depend only on the generator passed to :meth:`sample` (a numpy
    generator seeded from it), never on global state, so the same seed gives the same episodes
    on any machine. Thread safety: the sampler is read-only after construction; share it freely.

    Args:
        dataset: the loaded dataset.
        split: ``train``, ``val`` or ``test``.
        ways: classes per episode.
        shots: support images per class.
        queries: query images per class.
        rotations: add the 90°, 180° and 270° rotations of every class as new classes.

    Raises:
        UserError: the split has fewer classes than ``ways`` or a class has fewer than
            ``shots + queries`` images.
    """

    task_kind = "classification"

    def __init__(
        self,
        dataset: EpisodicDataset,
        split: str,
        ways: int,
        shots: int,
        queries: int,
        rotations: bool = False,
    ):
        classes = dataset.classes_in(split)
        factor = 4 if rotations else 1
        if len(classes) * factor < ways:
            raise UserError(
                f"ways={ways} but split {split!r} of {dataset.uri} has only {len(classes) * factor} classes"
                f"{' (with rotations)' if rotations else ''}; lower ways or use a dataset with more classes"
            )
        counts = dataset.images_per_class()[classes]
        need = shots + queries
        if len(classes) and counts.min() < need:
            worst = classes[int(counts.argmin())]
            raise UserError(
                f"shots + queries = {need} but class {dataset.class_names[worst]!r} of split {split!r} "
                f"has only {counts.min()} images; lower shots or queries"
            )
        self.ways, self.shots, self.queries = ways, shots, queries
        self.image_shape = dataset.image_shape
        self.invert = bool(dataset.metadata.get("invert", False))
        self._images, self._start, self._count = _split_view(dataset.uri, split, rotations)

    @property
    def num_classes(self) -> int:
        """Classes available to episodes (rotations included)."""
        return len(self._count)

    def sample(self, tasks: int, generator: torch.Generator, queries: int | None = None) -> Episode:
        """Draw ``tasks`` episodes: ``support_x: (tasks, ways*shots, C, H, W)`` float32 etc."""
        q = self.queries if queries is None else queries
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        indices = self.sample_indices(tasks, q, rng)  # (tasks, ways, shots+q)
        pixels = torch.from_numpy(self._images[indices])  # (tasks, ways, k, H, W, C)
        x = pixels.permute(0, 1, 2, 5, 3, 4).float().div_(255.0)
        if self.invert:
            x = 1.0 - x
        labels = torch.arange(self.ways).view(1, self.ways, 1)
        support_x = x[:, :, : self.shots].flatten(1, 2)
        query_x = x[:, :, self.shots :].flatten(1, 2)
        support_y = labels.expand(tasks, self.ways, self.shots).flatten(1)
        query_y = labels.expand(tasks, self.ways, q).flatten(1)
        return Episode(support_x, support_y, query_x, query_y)

    def sample_indices(self, tasks: int, queries: int, rng: np.random.Generator) -> np.ndarray:
        """Row indices ``(tasks, ways, shots + queries)`` into this split's images."""
        k = self.shots + queries
        classes = rng.random((tasks, self.num_classes)).argpartition(self.ways - 1, axis=1)[:, : self.ways]
        counts = self._count[classes]  # (tasks, ways)
        width = int(counts.max())
        keys = rng.random((tasks, self.ways, width))
        keys[np.arange(width) >= counts[..., None]] = np.inf  # never pick past a class's end
        picks = (
            keys.argpartition(k - 1, axis=2)[:, :, :k] if k < width else np.argsort(keys, axis=2)[:, :, :k]
        )
        return self._start[classes][..., None] + picks


@lru_cache(maxsize=8)
def _split_view(uri: str, split: str, rotations: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images of one split (contiguous, rotations appended as new classes), starts and counts;
    built once per process and shared by every sampler of that split."""
    dataset = load_dataset(uri)
    classes = dataset.classes_in(split)
    if len(classes) == 0:
        return dataset.pixels[:0], np.zeros(0, np.int64), np.zeros(0, np.int64)
    first, last = dataset.class_start[classes[0]], dataset.class_start[classes[-1] + 1]
    images = dataset.pixels[first:last]  # rows are grouped by split: a view, no copy
    counts = dataset.images_per_class()[classes]
    if rotations:
        images = np.concatenate([images] + [np.rot90(images, k, axes=(1, 2)) for k in (1, 2, 3)])
        counts = np.tile(counts, 4)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return np.ascontiguousarray(images), starts, counts.astype(np.int64)


def iter_progress(items: Iterable[ClassImages], total: int | None, description: str) -> Iterator[ClassImages]:
    """Yield ``items`` while drawing a progress bar on stderr."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn(description), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as progress:  # fmt: skip
        task = progress.add_task(description, total=total)
        for item in items:
            yield item
            progress.advance(task)


def import_omniglot(
    sources: Sequence[Path],
    out: str,
    *,
    protocol: str = "vinyals",
    seed: int = 0,
    image_size: int | None = 28,
    train_classes: int = 1200,
    val_classes: int = 100,
    progress: bool = True,
) -> dict[str, Any]:
    """Import Omniglot (npz files, official zips or folders) as one dataset.

    Args:
        sources: any mix of ``images_background.npz``, ``images_evaluation.npz``, official zips
            or their unzipped folders; characters found twice are kept once.
        out: destination path or URI.
        protocol: ``vinyals`` (pool, shuffle, ``train_classes`` for meta-training of which
            ``val_classes`` validate, the rest test) or ``lake`` (background for meta-training
            and validation, evaluation for test).
        seed: seed of the class shuffle.
        image_size: resize to ``image_size`` squared (28 in the papers); ``None`` keeps 105.
        train_classes: vinyals only: classes for meta-training and validation together.
        val_classes: classes of the validation slice.
        progress: draw a progress bar.

    Returns:
        The metadata written.

    Raises:
        UserError: unknown protocol, bad sources, or impossible split sizes.
    """
    if protocol not in ("vinyals", "lake"):
        raise UserError(f"unknown protocol {protocol!r}; valid protocols: vinyals, lake")
    stream = omniglot_classes(sources, image_size)
    classes = list(iter_progress(stream, None, "reading Omniglot") if progress else stream)
    if protocol == "vinyals":
        splits = assign_splits_vinyals(classes, seed, train_classes, val_classes)
    else:
        splits = assign_splits_lake(classes, seed, val_classes)
    return write_dataset(
        classes, splits, out,
        {
            "name": "omniglot",
            "source": [p.name for p in sources],
            "protocol": protocol,
            "seed": seed,
            "train_classes": train_classes if protocol == "vinyals" else None,
            "val_classes": val_classes,
            "resized_to": image_size,
            "pixel_convention": OMNIGLOT_PIXELS,
            "invert": True,
        },
    )  # fmt: skip


def import_image_folder(
    root: Path,
    out: str,
    *,
    image_size: int | None = None,
    mode: str = "L",
    seed: int = 0,
    ratios: Sequence[float] | None = (0.64, 0.16, 0.2),
    lists: dict[str, set[str]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Import ``root/<class name>/<images>`` as one dataset.

    Args:
        root: the folder of class subfolders.
        out: destination path or URI.
        image_size: resize to ``image_size`` squared; ``None`` requires equal sizes.
        mode: ``L`` (grayscale) or ``RGB``.
        seed: seed of the class shuffle for ``ratios``.
        ratios: ``(train, val, test)`` fractions of the classes, used when ``lists`` is None.
        lists: explicit class names per split.
        progress: draw a progress bar.

    Returns:
        The metadata written.

    Raises:
        UserError: bad folder, images or split specification.
    """
    if mode not in ("L", "RGB"):
        raise UserError(f"unknown image mode {mode!r}; use L (grayscale) or RGB")
    stream = read_image_folder(root, image_size, mode)
    classes = list(iter_progress(stream, None, f"reading {root.name}") if progress else stream)
    splits = (
        assign_splits_lists(classes, lists) if lists else assign_splits_ratios(classes, seed, ratios or ())
    )
    return write_dataset(
        classes, splits, out,
        {
            "name": root.name,
            "source": [root.name],
            "protocol": "lists" if lists else f"ratios {list(ratios or ())}",
            "seed": seed,
            "resized_to": image_size,
            "pixel_convention": "as in the source images",
            "invert": False,
        },
    )  # fmt: skip


def preview_grid(dataset: EpisodicDataset, out: Path, classes: int = 8, per_class: int = 8) -> None:
    """Save a PNG grid: one row per class (spread over the splits), ``per_class`` images each."""
    h, w, c = dataset.image_shape
    ids = np.linspace(0, len(dataset.class_names) - 1, num=min(classes, len(dataset.class_names))).astype(int)
    canvas = np.full((len(ids) * (h + 2), per_class * (w + 2), c), 128, dtype=np.uint8)
    for row, cid in enumerate(ids):
        start, stop = dataset.class_start[cid], dataset.class_start[cid + 1]
        for col, image in enumerate(dataset.pixels[start : min(stop, start + per_class)]):
            canvas[row * (h + 2) : row * (h + 2) + h, col * (w + 2) : col * (w + 2) + w] = image
    Image.fromarray(canvas[:, :, 0] if c == 1 else canvas).save(out)
