"""``metasweep data`` and image training end to end, through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.refusals import assert_refused

pytestmark = pytest.mark.cli


def test_import_info_preview(make_folder, run_cli, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", classes=10, per_class=4)
    result = run_cli("data", "import", str(root), "--out", "d.parquet", "--split-ratios", "0.6,0.2,0.2")
    assert result.returncode == 0, result.stderr
    assert "wrote d.parquet" in result.stderr
    # One progress bar, drawn once where stderr is not a terminal, counting every class.
    bar = [line for line in result.stderr.splitlines() if "reading classes" in line]
    assert len(bar) == 1 and "10/10" in bar[0], result.stderr
    info = run_cli("data", "info", "d.parquet", "--preview", "grid.png")
    assert info.returncode == 0, info.stderr
    for expected in ("train 6, val 2, test 2", "[12, 12, 1]", "images per class", "size on disk"):
        assert expected in info.stdout
    from PIL import Image

    grid = np.asarray(Image.open("grid.png"))
    assert grid.shape[0] > 12 and grid.shape[1] > 12


@pytest.mark.parametrize(
    ("make", "args", "expected"),
    [
        ("none", ["data", "import", "absent.npz", "--out", "o.parquet"], "does not exist"),
        ("empty", ["data", "import", "empty", "--out", "o.parquet"], "has no class subfolders"),
        (
            "folder",
            ["data", "import", "p", "--out", "o.parquet", "--kind", "omniglot", "--protocol", "x"],
            "valid protocols: vinyals, lake",
        ),
        (
            "folder",
            ["data", "import", "p", "--out", "o.parquet", "--split-ratios", "1,2"],
            "three non-negative",
        ),
        ("folder", ["data", "import", "p", "--out", "o.parquet", "--mode", "CMYK"], "unknown image mode"),
        ("none", ["data", "info", "absent.parquet"], "does not exist"),
        ("badimg", ["data", "import", "p", "--out", "o.parquet"], "is not a readable image"),
    ],
)
def test_bad_data_input_exits_2_and_leaves_nothing(
    make_folder, cli, make: str, args: list[str], expected: str
) -> None:
    if make == "empty":
        Path("empty").mkdir()
    if make in ("folder", "badimg"):
        make_folder(Path("p"), classes=5, per_class=3)
    if make == "badimg":
        Path("p/class_01/broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    result = cli(*args)
    assert_refused(result, expected)
    assert not list(Path().glob("*.parquet")) and not list(Path().glob(".*tmp*"))


def test_impossible_episode_is_refused_before_training(
    make_folder, root, cli, run_cli, tmp_path: Path
) -> None:
    make_folder(Path("p"), classes=10, per_class=4, size=16)  # Conv-4 takes 16x16 and up
    assert run_cli("data", "import", "p", "--out", "d.parquet").returncode == 0
    config = str(root / "examples" / "omniglot_protonet_5w1s.yaml")
    result = cli(
        "train",
        config,
        "--set",
        "data.dataset=d.parquet",
        "--set",
        "data.ways=20",
        "--set",
        "data.rotations=false",
    )
    assert_refused(result, "ways=20 but split 'train'", "has only 6 classes")
    result = cli(
        "train", config, "--set", "data.dataset=d.parquet", "--set", "data.ways=2", "--set", "data.shots=3"
    )
    assert_refused(result, "has only 4 images; lower shots or queries")
    assert not Path("runs").exists()


@pytest.mark.data
@pytest.mark.slow
def test_protonet_on_real_omniglot_beats_chance(omniglot, root, run_cli) -> None:
    """ProtoNet on the real small Omniglot archives, a short budget: far above 20% chance."""
    archives = [
        str(omniglot / "images_background_small1.zip"),
        str(omniglot / "images_background_small2.zip"),
    ]
    imported = run_cli(
        "data",
        "import",
        *archives,
        "--out",
        "small.parquet",
        "--train-classes",
        "200",
        "--val-classes",
        "30",
        "--no-progress",
    )
    assert imported.returncode == 0, imported.stderr
    result = run_cli(
        "train", str(root / "examples" / "omniglot_protonet_5w1s.yaml"),
        "--set", "data.dataset=small.parquet", "--set", "train.iterations=150",
        "--set", "train.meta_batch_size=2", "--set", "train.eval_every=150", "--set", "model.filters=32",
        "--set", "eval.val_tasks=50", "--set", "eval.test_tasks=200", "--no-progress",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    metrics = json.loads(result.stdout.strip().splitlines()[-1])
    assert metrics["test/accuracy"] - metrics["test/accuracy_ci95"] > 0.6, metrics


def test_training_split_is_configurable(make_folder, root, cli, run_cli, tmp_path: Path) -> None:
    make_folder(Path("p"), classes=10, per_class=4, size=16)  # Conv-4 takes 16x16 and up
    assert (
        run_cli("data", "import", "p", "--out", "d.parquet", "--split-ratios", "0.3,0.3,0.4").returncode == 0
    )
    config = str(root / "examples" / "omniglot_protonet_5w1s.yaml")
    common = ["--set", "data.dataset=d.parquet", "--set", "data.rotations=false", "--set", "data.shots=1",
              "--set", "data.queries=1"]  # fmt: skip
    refused = cli("train", config, *common, "--set", "data.ways=4")
    assert_refused(refused, "split 'train'", "only 3 classes")
    from_test = cli("train", config, *common, "--set", "data.ways=4", "--set", "data.split=test")
    assert_refused(from_test, "split 'val'")
    bad = cli("train", config, *common, "--set", "data.split=holdout")
    assert_refused(bad, "data.split")
