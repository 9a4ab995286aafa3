"""``metasweep data``: import and inspect episodic image datasets."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from metasweep.orchestrator.cli.app import Command, app
from metasweep.orchestrator.cli.console import say, track
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.outputs import check_output

if TYPE_CHECKING:
    from metasweep.orchestrator.data.images import ClassImages

data_app = typer.Typer(help="Import and inspect episodic image datasets (Parquet).", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _is_omniglot(path: Path) -> bool:
    return path.suffix == ".npz" or "images_background" in path.name or "images_evaluation" in path.name


def _read_list(path: Path | None) -> set[str]:
    if path is None:
        return set()
    if not path.is_file():
        raise UserError(f"class list {path} does not exist")
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


@data_app.command("import", cls=Command)
def data_import(
    sources: Annotated[
        list[Path],
        typer.Argument(
            metavar="SOURCE",
            help="Omniglot .npz files, official zips or folders; or one folder with a subfolder "
            "of images per class.",
        ),
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", metavar="PATH", help="Where to write: a .parquet path or s3:// URI.")
    ],
    kind: Annotated[
        str,
        typer.Option(
            "--kind",
            metavar="KIND",
            help="omniglot, folder, or auto: omniglot when every source is a .npz or is named "
            "images_background or images_evaluation.",
        ),
    ] = "auto",
    protocol: Annotated[
        str, typer.Option(metavar="NAME", help="Omniglot split protocol: vinyals or lake.")
    ] = "vinyals",
    seed: Annotated[int, typer.Option(metavar="N", help="Seed of the class shuffle.")] = 0,
    image_size: Annotated[
        int,
        typer.Option(
            metavar="N",
            help="Resize images to N x N, or 0 to keep their size (default: 28 for Omniglot, 0 for "
            "image folders).",
            show_default=False,
        ),
    ] = -1,  # -1: the kind's default
    train_classes: Annotated[
        int,
        typer.Option(
            metavar="N", help="Omniglot, vinyals: classes for meta-training, meta-validation included."
        ),
    ] = 1200,
    val_classes: Annotated[
        int, typer.Option(metavar="N", help="Omniglot: classes set aside for meta-validation.")
    ] = 100,
    mode: Annotated[str, typer.Option(metavar="MODE", help="Image folders: L (grayscale) or RGB.")] = "L",
    split_ratios: Annotated[
        str | None,
        typer.Option(
            metavar="TRAIN,VAL,TEST",
            help="Image folders: the fractions of the classes for meta-training, "
            "meta-validation and meta-test (default: 0.64,0.16,0.2; a folder of train/, val/ and "
            "test/ folders is split by them instead).",
            show_default=False,
        ),
    ] = None,
    train_list: Annotated[
        Path | None,
        typer.Option(
            metavar="FILE",
            help="Image folders: meta-training class names, one per line; with --val-list and "
            "--test-list, instead of --split-ratios.",
        ),
    ] = None,
    val_list: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Image folders: meta-validation class names.")
    ] = None,
    test_list: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Image folders: meta-test class names.")
    ] = None,
    progress: Annotated[bool, typer.Option(help="Show a progress bar on stderr.")] = True,
) -> None:
    """Import Omniglot or a folder of images as one Parquet dataset.

    An image folder holds a subfolder of images per class; its classes are split by
    --split-ratios or by class lists. A folder of train/, val/ and test/ folders of classes (the
    miniImageNet layout) is split by those folders. The import is deterministic (same inputs and seed give a
    byte-identical file) and atomic (written under a temporary name, renamed at the end).
    """
    from metasweep.orchestrator.data import importers

    check_output(out, "--out")
    for source in sources:
        if not source.exists():
            raise UserError(f"{source} does not exist")

    def reading(classes: Iterable[ClassImages], total: int | None) -> Iterable[ClassImages]:
        return track(classes, "reading classes", total=total, enabled=progress)

    if kind == "auto":
        kind = "omniglot" if all(_is_omniglot(p) for p in sources) else "folder"
    if kind not in ("omniglot", "folder"):
        raise UserError(f"unknown --kind {kind!r}; use omniglot, folder or auto")
    size = (28 if kind == "omniglot" else None) if image_size < 0 else (image_size or None)
    if kind == "omniglot":
        meta = importers.import_omniglot(
            sources, out, protocol=protocol, seed=seed, image_size=size,
            train_classes=train_classes, val_classes=val_classes, progress=reading,
        )  # fmt: skip
    else:
        if len(sources) != 1:
            raise UserError(f"an image folder import takes one root folder, got {len(sources)} sources")
        lists = {"train": _read_list(train_list), "val": _read_list(val_list), "test": _read_list(test_list)}
        if split_ratios is not None and importers.has_split_folders(sources[0]):
            raise UserError(
                f"{sources[0]} holds train/, val/ and test/ folders, which give the splits; "
                "drop --split-ratios"
            )
        try:
            ratios = [float(r) for r in (split_ratios or "0.64,0.16,0.2").split(",")]
        except ValueError:
            raise UserError(
                f"--split-ratios must be three numbers like 0.64,0.16,0.2, got {split_ratios!r}"
            ) from None
        meta = importers.import_image_folder(
            sources[0], out, image_size=size, mode=mode, seed=seed, ratios=ratios,
            lists=lists if any(lists.values()) else None, progress=reading,
        )  # fmt: skip
    say(f"wrote {out}: {meta['classes']} classes, {meta['images']} images of shape {meta['image_shape']}")


@data_app.command("info", cls=Command)
def data_info(
    path: Annotated[
        str,
        typer.Argument(metavar="DATASET", help="A dataset 'metasweep data import' wrote: path or URI."),
    ],
    preview: Annotated[
        Path | None, typer.Option(metavar="FILE", help="Also save a PNG grid of a few classes here.")
    ] = None,
) -> None:
    """Show a dataset's splits, image shape and size.

    Prints its schema, where it came from, the classes per split, the images per class, the
    image shape and the size on disk.
    """
    from metasweep.orchestrator.data import format

    if preview is not None:
        check_output(preview, "--preview")
    meta, schema, size = format.read_metadata(path)
    table = Table(title=path, show_header=False)
    table.add_row("schema", ", ".join(f"{f.name}: {f.type}" for f in schema))
    for key in ("name", "protocol", "seed", "image_shape", "resized_to", "pixel_convention", "source"):
        table.add_row(key, str(meta.get(key)))
    table.add_row("classes per split", ", ".join(f"{s} {meta['classes'][s]}" for s in format.SPLITS))
    per = meta["images_per_class"]
    table.add_row(
        "images per class", f"{per['min']}" if per["min"] == per["max"] else f"{per['min']}-{per['max']}"
    )
    table.add_row("images", str(meta["images"]))
    table.add_row("size on disk", f"{size / 2**20:.1f} MiB")
    Console().print(table)
    if preview is not None:
        format.preview(format.load_dataset(path), preview)
        say(f"preview saved to {preview}")
