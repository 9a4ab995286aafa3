"""Champion/challenger registration, pull and adapt on a real MLflow store (SQLite) and real Ray."""

from __future__ import annotations

import warnings
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from tests.refusals import assert_quiet, assert_refused

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SWEEP = """
name: {name}
algorithm: protonet
model: {{name: conv4, filters: 16}}
data: {{dataset: small.parquet, ways: 5, shots: 1, queries: 5}}
train: {{iterations: 40, meta_batch_size: 2, eval_every: 20, meta_lr: {meta_lr}}}
eval: {{val_tasks: 20, test_tasks: 40, batch_size: 20}}
search:
  space:
    train.meta_lr: {{type: categorical, values: [{meta_lr}]}}
  num_samples: 1
  max_concurrent: 1
  scheduler: fifo
tracking: {{experiment: reg, registered_model: omni}}
"""


def uri() -> str:
    return f"sqlite:///{Path('mlflow.db').absolute()}"


@pytest.mark.data
def test_champion_pull_and_adapt(omniglot, run_cli, migrated_store, tmp_path: Path) -> None:
    archive = str(omniglot / "images_background_small1.zip")
    made = run_cli("data", "import", archive, "--out", "small.parquet", "--train-classes", "100",
                   "--val-classes", "16", "--no-progress")  # fmt: skip
    assert made.returncode == 0, made.stderr

    # A first sweep becomes champion; a worse one (learning rate ~0) is registered as challenger.
    migrated_store()
    for name, meta_lr in (("good", 0.003), ("worse", 1e-9)):
        Path(f"{name}.yaml").write_text(SWEEP.format(name=name, meta_lr=meta_lr))
        result = run_cli("sweep", f"{name}.yaml", "--set", f"tracking.uri={uri()}", timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    client = MlflowClient(uri(), registry_uri=uri())
    champion = client.get_model_version_by_alias("omni", "champion")
    challenger = client.get_model_version_by_alias("omni", "challenger")
    assert (str(champion.version), str(challenger.version)) == ("1", "2")
    assert "does not beat champion v1" in result.stderr
    assert float(champion.tags["metasweep.test_value"]) > float(challenger.tags["metasweep.test_value"])
    assert champion.tags["metasweep.protocol"] == challenger.tags["metasweep.protocol"]

    pulled = run_cli("models", "pull", "omni@champion", "--out", "model", "--tracking-uri", uri())
    assert pulled.returncode == 0, pulled.stderr
    assert not list(Path("model").rglob("*.pkl")), "models load without pickled objects"
    for output in (result.stderr, pulled.stderr):
        assert_quiet(output)
    listed = run_cli("models", "list", "omni", "--tracking-uri", uri())
    assert "champion" in listed.stdout and "challenger" in listed.stdout

    # Support and query images from the test split, as a user would have them on disk.
    from metasweep.orchestrator.data.format import load_dataset

    ds = load_dataset(str(Path("small.parquet").absolute()))
    classes = ds.classes_in("test")[:5]
    for c in classes:
        folder = Path("support") / f"class{c}"
        folder.mkdir(parents=True)
        start = ds.class_start[c]
        from PIL import Image

        Image.fromarray(ds.pixels[start, :, :, 0]).save(folder / "0.png")
        Path("query").mkdir(exist_ok=True)
        Image.fromarray(ds.pixels[start + 1, :, :, 0]).save(Path("query") / f"class{c}_1.png")
    adapted = run_cli("adapt", "model", "--support", "support", "--query", "query", "--out", "p.csv")
    assert adapted.returncode == 0, adapted.stderr
    assert_quiet(adapted.stderr)
    cli_predictions = [line.split("\t")[1] for line in adapted.stdout.strip().splitlines()]

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = mlflow.pyfunc.load_model("model")
    assert not [w for w in caught if "type hint" in str(w.message).lower()], [str(w.message) for w in caught]
    sx = np.stack([ds.pixels[ds.class_start[c], :, :, 0] for c in classes])
    qx = np.stack([ds.pixels[ds.class_start[c] + 1, :, :, 0] for c in classes])
    in_process = model.predict({"support_x": sx, "support_y": np.arange(5), "query_x": qx})
    assert [f"class{classes[i]}" for i in in_process] == cli_predictions
    # The same support set labelled with the characters' names, or with arbitrary integer ids:
    # predictions come back in that label space and agree with the 0..4 answers.
    names = np.array([ds.class_names[c] for c in classes])
    by_name = model.predict({"support_x": sx, "support_y": names, "query_x": qx})
    assert by_name.dtype.kind == "U" and by_name.tolist() == names[in_process].tolist()
    ids = np.array([7, 42, 3, 19, 5])
    by_id = model.predict({"support_x": sx, "support_y": ids, "query_x": qx})
    assert by_id.dtype == ids.dtype and by_id.tolist() == ids[in_process].tolist()
    assert Path("p.csv").read_text().startswith("image,prediction\n")

    # The same support set at the original resolution (105x105 PNGs are resized by the model).
    big = np.stack([np.kron(x, np.ones((4, 4), dtype=np.uint8)) for x in sx])
    assert big.shape[1:] == (112, 112)
    assert model.predict({"support_x": big, "support_y": np.arange(5), "query_x": big}).shape == (5,)

    too_many = run_cli("adapt", "model", "--support", "support", "--query", "nothing")
    assert_refused(too_many, "does not exist")
    missing = run_cli("models", "pull", "omni@nope", "--out", "x", "--tracking-uri", uri())
    assert_refused(missing, "alias nope not found")
    assert not Path("x").exists()
