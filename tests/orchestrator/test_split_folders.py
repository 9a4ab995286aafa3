"""``metasweep data import`` of an image folder in the miniImageNet layout (``train/``, ``val/``,
``test/`` folders of class folders): the folders are the splits, the import is deterministic, and
settings that would split it otherwise, or a class in two splits, are refused leaving no file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from metasweep.orchestrator.data.format import load_dataset
from tests.refusals import assert_refused

SIZES = {"train": 6, "val": 3, "test": 4}


def layout(make_folder, root: Path = Path("mini")) -> Path:
    """``root/<split>/<split>_<i>/<j>.png``: RGB 20x20 images, class names unique across splits."""
    for split, classes in SIZES.items():
        made = make_folder(Path(f"made-{split}"), classes=classes, per_class=3, size=20, mode="RGB")
        for folder in sorted(made.iterdir()):
            target = root / split / folder.name.replace("class", split)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(folder, target)
    return root


def test_the_split_folders_are_the_splits_and_the_import_is_deterministic(make_folder, cli) -> None:
    root = layout(make_folder)
    first = cli(
        "data",
        "import",
        str(root),
        "--out",
        "a.parquet",
        "--mode",
        "RGB",
        "--image-size",
        "16",
        "--no-progress",
    )
    assert first.returncode == 0, first.stderr
    dataset = load_dataset(str(Path("a.parquet").absolute()))
    for split, classes in SIZES.items():
        names = sorted(dataset.class_names[c] for c in dataset.classes_in(split))
        assert names == [f"{split}_{i:02d}" for i in range(classes)]
    assert dataset.metadata["protocol"] == "folders train/val/test"
    assert tuple(dataset.metadata["image_shape"]) == (16, 16, 3)
    again = cli(
        "data",
        "import",
        str(root),
        "--out",
        "b.parquet",
        "--mode",
        "RGB",
        "--image-size",
        "16",
        "--no-progress",
    )
    assert again.returncode == 0, again.stderr
    assert Path("a.parquet").read_bytes() == Path("b.parquet").read_bytes()


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["--split-ratios", "0.5,0.25,0.25"], "which give the splits; drop --split-ratios"),
        (["--train-list", "names.txt"], "which give the splits; drop the class lists"),
        ([], "class 'twice' is in both train/ and test/"),
    ],
)
def test_what_would_split_the_layout_otherwise_is_refused(
    make_folder, cli, extra: list[str], expected: str
) -> None:
    root = layout(make_folder)
    Path("names.txt").write_text("train_00\n")
    if not extra:  # the same class name in two splits
        shutil.copytree(root / "train" / "train_00", root / "train" / "twice")
        shutil.copytree(root / "test" / "test_00", root / "test" / "twice")
    result = cli("data", "import", str(root), "--out", "d.parquet", "--mode", "RGB", "--no-progress", *extra)
    assert_refused(result, expected)
    assert not list(Path().glob("d.parquet*")), "a refused import leaves no file"
