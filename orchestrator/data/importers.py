"""Importers: Omniglot (npz, official zips or folders) and folders of class subfolders, with the
split protocols of the literature, written as one dataset (:mod:`~metasweep.orchestrator.data.format`).
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from metasweep.orchestrator.data.format import SPLITS, write_dataset
from metasweep.orchestrator.data.images import (
    IMAGE_SUFFIXES,
    ClassImages,
    check_image_file,
    decode,
    stack_class,
    to_array,
)
from metasweep.orchestrator.errors import UserError

OMNIGLOT_BACKGROUND_CLASSES = 964
OMNIGLOT_PIXELS = "white background (255), black ink (0)"
# What an archive may hold, checked from its directory before anything is decompressed.
MAX_MEMBER_BYTES = 2**30  # one member (Omniglot's largest, an npz array, is 213 MB)
MAX_ARCHIVE_BYTES = 4 * 2**30  # all members together
MAX_RATIO = 200  # uncompressed / compressed size of a member (Omniglot's npz: 71)
Progress = Callable[[Iterable[ClassImages], int | None], Iterable[ClassImages]]
"""Wraps the stream of classes being read and how many it holds (None: not known before reading),
e.g. in a progress bar; the identity by default."""


def _quietly(classes: Iterable[ClassImages], total: int | None = None) -> Iterable[ClassImages]:
    return classes


def class_folders(root: Path) -> list[Path]:
    """The class subfolders of ``root``, sorted (hidden ones left out)."""
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def omniglot_count(sources: Sequence[Path]) -> int | None:
    """The characters ``sources`` hold, counted without decoding an image: an npz's array header,
    a zip's directory, a folder's listing (a character found twice counts twice); None where a
    source cannot be read that way (reading it says why)."""
    total = 0
    try:
        for source in sources:
            if source.suffix == ".npz":
                with zipfile.ZipFile(source) as archive, archive.open("images.npy") as member:
                    major, _ = np.lib.format.read_magic(member)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if major == 1
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, _ = read_header(member)
                total += shape[0]
            elif source.is_dir():
                names = (
                    f.relative_to(source.parent).as_posix() + "/x.png" for f in source.rglob("character*")
                )
                total += len({m.group(2, 3, 4) for n in names if (m := _OMNIGLOT_CHAR.search(n))})
            else:
                with zipfile.ZipFile(source) as archive:
                    found = (_OMNIGLOT_CHAR.search(n) for n in archive.namelist())
                    total += len({m.group(2, 3, 4) for m in found if m})
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError, IndexError):
        return None
    return total


_OMNIGLOT_CHAR = re.compile(r"(?:^|/)(images_(background|evaluation)[^/]*)/([^/]+)/(character\d+)/([^/]+)$")


def open_zip(path: Path) -> zipfile.ZipFile:
    """A zip archive whose directory passed the checks, before any member is decompressed.

    Raises:
        UserError: not a zip, duplicate member names, or a member or total size or compression
            ratio over the limits (a zip bomb).
    """
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
        raise UserError(f"{path} is not a readable zip archive ({exc})") from None
    infos = archive.infolist()
    names = [info.filename for info in infos]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})[:3]
        archive.close()
        raise UserError(
            f"{path} holds members of the same name twice ({', '.join(twice)}); it is not a sound archive"
        )
    total = 0
    for info in infos:
        total += info.file_size
        ratio = info.file_size / max(info.compress_size, 1)
        if (
            info.file_size > MAX_MEMBER_BYTES
            or total > MAX_ARCHIVE_BYTES
            or (info.file_size > 2**20 and ratio > MAX_RATIO)
        ):
            archive.close()
            raise UserError(
                f"{path} would inflate past the limits ({info.filename!r}: {info.file_size:,} bytes, "
                f"{ratio:.0f}x compressed; limits {MAX_MEMBER_BYTES:,} bytes a member, "
                f"{MAX_ARCHIVE_BYTES:,} in all, {MAX_RATIO}x); refusing to read it"
            )
    return archive


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
            if match and file.suffix.lower() in IMAGE_SUFFIXES and file.is_file():
                check_image_file(file)
                key = (match.group(2), f"{match.group(3)}/{match.group(4)}")
                entries.setdefault(key, []).append((rel, file.read_bytes))
    else:
        archive = open_zip(path)
        try:
            bad = archive.testzip()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise UserError(f"{path} is not a readable zip archive ({exc})") from None
        if bad is not None:
            raise UserError(f"{path} is corrupt: member {bad!r} fails its CRC check")
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            match = _OMNIGLOT_CHAR.search(info.filename)
            if match and not info.is_dir() and Path(info.filename).suffix.lower() in IMAGE_SUFFIXES:
                key = (match.group(2), f"{match.group(3)}/{match.group(4)}")
                entries.setdefault(key, []).append((info.filename, partial(archive.read, info.filename)))
    if not entries:
        raise UserError(
            f"no Omniglot characters in {path}; expected images_<set>/<Alphabet>/characterNN/*.png"
        )
    for (group, name), files in sorted(entries.items(), key=lambda kv: kv[0][1]):
        arrays = [decode(read(), f"{path}:{rel}", size, "L") for rel, read in sorted(files)]
        yield ClassImages(name, stack_class(name, arrays, str(path)), group)


def read_omniglot_npz(path: Path, size: int | None) -> Iterator[ClassImages]:
    """Classes of ``images_background.npz`` / ``images_evaluation.npz`` (bool, True = white).

    Character ``i`` is the official id ``i + 1`` (background) or ``i + 965`` (evaluation).

    Raises:
        UserError: unreadable file or unexpected arrays.
    """
    group = "evaluation" if "evaluation" in path.name else "background"
    offset = OMNIGLOT_BACKGROUND_CLASSES + 1 if group == "evaluation" else 1
    if zipfile.is_zipfile(path):  # an npz is a zip: its sizes are checked before numpy inflates it
        open_zip(path).close()
    try:
        with np.load(path, allow_pickle=False) as archive:
            images = archive["images"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError) as exc:
        raise UserError(f"{path} is not a readable Omniglot npz (needs an 'images' array): {exc}") from None
    if images.ndim != 4 or 0 in images.shape:
        raise UserError(
            f"{path}: 'images' must be (characters, drawings, H, W) with none of them 0, "
            f"got shape {images.shape}"
        )
    if images.dtype != np.bool_:
        raise UserError(
            f"{path}: 'images' holds {images.dtype} values, but Omniglot's npz holds booleans (True = "
            "white); an image array of another kind would import as corrupted pixels"
        )
    for i, drawings in enumerate(images):
        pixels = drawings.astype(np.uint8) * 255
        arrays = [to_array(Image.fromarray(p, mode="L"), size, "L") for p in pixels]
        yield ClassImages(f"character{i + offset:04d}", np.stack(arrays), group)


def read_image_folder(root: Path, size: int | None, mode: str) -> Iterator[ClassImages]:
    """Classes of ``root/<class name>/*.png|jpg|...``, sorted by class name then file name.

    Raises:
        UserError: no class subfolders, a class without images, a file that is not an image,
            or mismatched sizes without ``size``.
    """
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; expected root/<class name>/<images>")
    classes = class_folders(root)
    if not classes:
        raise UserError(f"{root} has no class subfolders; expected root/<class name>/<images>")
    shapes: set[tuple[int, ...]] = set()
    for folder in classes:
        files = sorted(
            f
            for f in folder.iterdir()
            if f.suffix.lower() in IMAGE_SUFFIXES and f.is_file() and not f.name.startswith(".")
        )
        if not files:
            raise UserError(
                f"class folder {folder} holds no images ({' '.join(IMAGE_SUFFIXES)}); other files are ignored"
            )
        for f in files:
            check_image_file(f)
        arrays = [decode(f.read_bytes(), str(f), size, mode) for f in files]
        stacked = stack_class(folder.name, arrays, str(folder))
        shapes.add(stacked.shape[1:])
        if len(shapes) > 1:
            raise UserError(
                f"images of different sizes across classes in {root} ({sorted(shapes)}); "
                "pass --image-size N to resize every image to N x N"
            )
        yield ClassImages(folder.name, stacked)


def _class_count(root: Path) -> int | None:
    return len(class_folders(root)) if root.is_dir() else None


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


def import_omniglot(
    sources: Sequence[Path],
    out: str,
    *,
    protocol: str = "vinyals",
    seed: int = 0,
    image_size: int | None = 28,
    train_classes: int = 1200,
    val_classes: int = 100,
    progress: Progress = _quietly,
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
        progress: wraps the stream of classes as they are read (a progress bar).

    Returns:
        The metadata written.

    Raises:
        UserError: unknown protocol, bad sources, or impossible split sizes.
    """
    if protocol not in ("vinyals", "lake"):
        raise UserError(f"unknown protocol {protocol!r}; valid protocols: vinyals, lake")
    stream = omniglot_classes(sources, image_size)
    classes = list(progress(stream, omniglot_count(sources)))
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


def has_split_folders(root: Path) -> bool:
    """Whether ``root`` is in the miniImageNet layout, ``root/train|val|test/<class>/<images>``:
    a folder per split (:data:`~metasweep.orchestrator.data.format.SPLITS`) and nothing else but
    files and hidden folders."""
    if not root.is_dir():
        return False
    folders = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    return folders == set(SPLITS)


def import_image_folder(
    root: Path,
    out: str,
    *,
    image_size: int | None = None,
    mode: str = "L",
    seed: int = 0,
    ratios: Sequence[float] | None = (0.64, 0.16, 0.2),
    lists: dict[str, set[str]] | None = None,
    progress: Progress = _quietly,
) -> dict[str, Any]:
    """Import ``root/<class name>/<images>`` as one dataset, or ``root/train|val|test/<class
    name>/<images>`` (the miniImageNet layout, :func:`has_split_folders`), whose folders are the
    splits.

    Args:
        root: the folder of class subfolders, or of the three split folders.
        out: destination path or URI.
        image_size: resize to ``image_size`` squared; ``None`` requires equal sizes.
        mode: ``L`` (grayscale) or ``RGB``.
        seed: seed of the class shuffle for ``ratios``.
        ratios: ``(train, val, test)`` fractions of the classes, used when ``lists`` is None and
            the folder has no split folders.
        lists: explicit class names per split.
        progress: wraps the stream of classes as they are read (a progress bar).

    Returns:
        The metadata written.

    Raises:
        UserError: bad folder, images or split specification; lists for a folder whose layout
            gives the splits; a class name in two split folders.
    """
    if mode not in ("L", "RGB"):
        raise UserError(f"unknown image mode {mode!r}; use L (grayscale) or RGB")
    by_folder = has_split_folders(root)
    if by_folder and lists:
        raise UserError(
            f"{root} holds train/, val/ and test/ folders, which give the splits; drop the class lists"
        )
    if by_folder:
        splits: list[str] = []

        def each_split() -> Iterator[ClassImages]:
            for split in SPLITS:
                for found in read_image_folder(root / split, image_size, mode):
                    splits.append(split)
                    yield found

        # One progress bar over the three folders.
        classes = list(progress(each_split(), sum(len(class_folders(root / split)) for split in SPLITS)))
        seen: dict[str, str] = {}
        for found, split in zip(classes, splits, strict=True):
            if found.name in seen:
                raise UserError(f"class {found.name!r} is in both {seen[found.name]}/ and {split}/ of {root}")
            seen[found.name] = split
    else:
        classes = list(progress(read_image_folder(root, image_size, mode), _class_count(root)))
        splits = (
            assign_splits_lists(classes, lists)
            if lists
            else assign_splits_ratios(classes, seed, ratios or ())
        )
    protocol = "folders train/val/test" if by_folder else "lists" if lists else f"ratios {list(ratios or ())}"
    return write_dataset(
        classes, splits, out,
        {
            "name": root.name,
            "source": [root.name],
            "protocol": protocol,
            "seed": seed,
            "resized_to": image_size,
            "pixel_convention": "as in the source images",
            "invert": False,
        },
    )  # fmt: skip
