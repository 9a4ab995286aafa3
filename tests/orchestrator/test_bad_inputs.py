"""Bad input caught at the boundary (issue 10): for each class of input that validated but could
not run, one instance per command through the real entry point. Every one ends with exit code 2,
one readable message and no traceback, before any work is done and with nothing left behind: no
run folder, no half dataset, no MLflow store. The entry point runs in this process (``cli``): a
fresh interpreter per case would spend most of the module's time importing PyTorch."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.refusals import assert_refused

ROOT = Path(__file__).resolve().parents[2]
SINE = str(ROOT / "examples" / "sinusoid_maml.yaml")
IMAGES = str(ROOT / "examples" / "omniglot_protonet_5w1s.yaml")
SWEEP = str(ROOT / "examples" / "sweep_sinusoid_maml.yaml")


def setup_images(make_folder: Callable[..., Path]) -> None:
    """``p/`` (class folders of 12x12 images), ``d.parquet`` (imported), ``file.txt``, ``folder/``."""
    from metasweep.orchestrator.data.importers import import_image_folder

    import_image_folder(make_folder(Path("p"), classes=10, per_class=4), "d.parquet")
    Path("file.txt").write_text("a file")
    Path("folder").mkdir()


def inconsistent_parquet() -> None:
    """A metasweep dataset whose metadata says 28x28 images while its rows hold 12x12 ones."""
    table = pq.read_table("d.parquet")
    meta = json.loads(table.schema.metadata[b"metasweep"])
    meta["image_shape"] = [28, 28, 1]
    schema = table.schema.with_metadata({b"metasweep": json.dumps(meta).encode()})
    pq.write_table(table.cast(schema), "inconsistent.parquet")


def foreign_checkpoint() -> None:
    Path("foreign").mkdir()
    torch.save({"state_dict": {"w": torch.zeros(2)}, "epoch": 3}, "foreign/checkpoint.pt")


def square_breaker() -> None:
    """An image dataset of 16x40 images: non-square, so Conv-4's head (sized for 16x16) does not fit."""
    from PIL import Image

    for c in range(10):
        folder = Path("wide") / f"c{c}"
        folder.mkdir(parents=True)
        for j in range(4):
            Image.fromarray(np.full((16, 40), 10 * c + j, dtype=np.uint8)).save(folder / f"{j}.png")


CASES: dict[str, tuple[list[str], str]] = {
    # -- output locations: checked before any work
    "import to a missing folder": (
        ["data", "import", "p", "--out", "nope/o.parquet"],
        "does not exist; create it",
    ),
    "import over a folder": (["data", "import", "p", "--out", "folder"], "is a folder; give a file name"),
    "preview in a missing folder": (
        ["data", "info", "d.parquet", "--preview", "nope/g.png"],
        "does not exist",
    ),
    "pull over a file": (["models", "pull", "m@champion", "--out", "file.txt"], "is a file; give a folder"),
    "pull into a file's child": (["models", "pull", "m", "--out", "file.txt/m"], "is a file, not a folder"),
    "adapt CSV in a missing folder": (
        ["adapt", "model", "--support", "p", "--query", "p/class_00", "--out", "nope/p.csv"],
        "does not exist",
    ),
    "output_dir in a missing folder": (["train", SINE, "--set", "output_dir=nope/run"], "does not exist"),
    "output_dir is a file": (["train", SINE, "--set", "output_dir=file.txt"], "is a file"),
    # -- values that validate but cannot run
    "infinite learning rate": (["train", SINE, "--set", "train.inner_lr=inf"], "finite number"),
    "NaN meta learning rate": (["train", SINE, "--set", "train.meta_lr=nan"], "finite number"),
    "infinite search bound": (
        ["sweep", SWEEP, "--set", "search.space={train.inner_lr: {type: uniform, low: 0.001, high: .inf}}"],
        "finite number",
    ),
    "negative seed": (["train", SINE, "--set", "seed=-1"], "seed"),
    "seed past 2**63-1": (["train", SINE, "--set", "eval.seed=9223372036854775808"], "eval.seed"),
    "initial point outside the run schema": (
        ["sweep", SWEEP, "--set", "search.initial_points=[{train.inner_lr: 0.01, train.inner_steps: -1}]"],
        "search.initial_points[0]",
    ),
    "conv4 on non-square images": (
        [
            "train",
            IMAGES,
            "--set",
            "data.dataset=wide.parquet",
            "--set",
            "algorithm=maml",
            "--set",
            "data.rotations=false",
            "--set",
            "data.ways=2",
            "--set",
            "data.shots=1",
        ],
        "cannot take inputs of shape (1, 16, 40)",
    ),
    "conv4 on images too small for its poolings": (
        ["train", IMAGES, "--set", "data.dataset=d.parquet", "--set", "data.rotations=false"],
        "cannot take inputs of shape (1, 12, 12)",
    ),
    # -- inputs from other tools
    "a checkpoint that is not metasweep's": (["evaluate", "foreign"], "is not a metasweep checkpoint"),
    "Parquet metadata that contradicts the rows": (
        ["train", IMAGES, "--set", "data.dataset=inconsistent.parquet", "--set", "data.rotations=false"],
        "its metadata says 28x28x1",
    ),
    "tracking URI without a scheme": (
        ["models", "list", "--tracking-uri", "localhost:5000"],
        "did you mean http://localhost:5000",
    ),
    "tracking URI that is a folder": (["models", "list", "--tracking-uri", "./mlruns"], "use sqlite:///"),
    "port out of range": (["ui", "--port", "70000"], "less than or equal to 65535"),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_bad_input_ends_at_the_boundary_with_exit_2_and_leaves_nothing(case: str, make_folder, cli) -> None:
    args, expected = CASES[case]
    from metasweep.orchestrator.data.importers import import_image_folder

    setup_images(make_folder)
    if any("wide.parquet" in a for a in args):
        square_breaker()
        import_image_folder(Path("wide"), "wide.parquet")
    if any("inconsistent" in a for a in args):
        inconsistent_parquet()
    if args[:2] == ["evaluate", "foreign"]:
        foreign_checkpoint()
    before = sorted(str(p) for p in Path().rglob("*"))

    result = cli(*args)
    assert_refused(result, expected)
    assert sorted(str(p) for p in Path().rglob("*")) == before  # no run, dataset, store or temp file


def test_the_ui_refuses_a_port_that_is_taken(cli) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("ui", "--port", str(port))
    assert_refused(result, f"port {port} on 127.0.0.1 is taken")


def test_the_loader_checks_hold_for_a_dataset_with_consistent_metadata(make_folder) -> None:
    """The inconsistency check does not refuse sound files (it compares, it does not guess)."""
    from metasweep.orchestrator.data.format import load_dataset

    setup_images(make_folder)
    dataset = load_dataset("d.parquet")
    assert dataset.pixels.shape == (40, 12, 12, 1) and pa.__version__


@pytest.mark.parametrize(
    "args",
    [
        ["models", "list"],
        ["models", "pull", "m@champion", "--out", "m"],
        ["adapt", "m@champion", "--support", "p", "--query", "p/class_00"],
        ["ui", "--port", "PORT"],
    ],
    ids=["models list", "models pull", "adapt", "ui"],
)
def test_a_read_only_command_in_the_wrong_folder_creates_no_store(
    args: list[str], make_folder, free_port, cli
) -> None:
    """Run from a folder without ./mlflow.db, they used to create an empty one and show nothing."""
    make_folder(Path("p"), classes=2, per_class=1)
    result = cli(*[str(free_port()) if a == "PORT" else a for a in args])
    assert_refused(result, "no MLflow store at", "--tracking-uri")
    assert not Path("mlflow.db").exists()
