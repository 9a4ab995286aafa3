"""Integer and string labels through a registered pyfunc model: log, register and load through a
real MLflow store (SQLite), then ``predict`` as the README shows."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from typing import Any

import mlflow
import numpy as np
import pytest

from metasweep.orchestrator.learner import build_learner
from metasweep.orchestrator.tracking.registry import Candidate, register
from metasweep.orchestrator.tracking.runs import SweepTracker

pytestmark = [pytest.mark.integration]

NAMES = np.array(["Gimel", "Alef", "He", "Bet", "Dalet"])
IDS = np.array([7, 42, 3, 19, 5])


@pytest.fixture(scope="module")
def registered(
    five_images, served_spec, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    """A ProtoNet logged with a string-labelled input example, a 5-way MAML logged with an
    integer-labelled one and a sinusoid regressor, as ``models:/`` URIs of their champions."""
    folder = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    support, order = five_images()
    models = {}
    with pytest.MonkeyPatch.context() as env:
        # Registration points MLflow's process-wide URIs, and the variables it exports for
        # subprocesses, at this store; the tests after this module must not inherit them.
        env.setenv("MLFLOW_TRACKING_URI", uri)
        env.setenv("MLFLOW_REGISTRY_URI", uri)
        with contextlib.chdir(folder):  # MLflow puts default artifact folders in the working directory
            tracker = SweepTracker(uri, "labels", "labels")
            tracker.open(resume=False)
            for algorithm, labels in (("protonet", NAMES), ("maml", IDS)):
                spec = served_spec(algorithm)
                weights = build_learner(spec.learner, spec.problem).state_dict()
                example = {"support_x": support, "support_y": labels, "query_x": support[order]}
                registration = register(
                    tracker, name=f"labels-{algorithm}", spec=spec, weights=weights, input_example=example,
                    candidate=Candidate("test/accuracy", 0.5, "max", "synthetic", "p"),
                )  # fmt: skip
                assert registration.alias == "champion"
                models[algorithm] = f"models:/labels-{algorithm}@champion"
            spec = served_spec("sinusoid")
            x = np.linspace(-5, 5, 8, dtype=np.float32).reshape(-1, 1)
            register(
                tracker, name="labels-sinusoid", spec=spec,
                weights=build_learner(spec.learner, spec.problem).state_dict(),
                input_example={"support_x": x[:5], "support_y": np.sin(x[:5]), "query_x": x[5:]},
                candidate=Candidate("test/mse", 0.5, "min", "sinusoid", "p"),
            )  # fmt: skip
            models["sinusoid"] = "models:/labels-sinusoid@champion"
        yield models
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


def test_string_and_integer_labels_come_back_as_given(five_images, registered: dict[str, str]) -> None:
    model = mlflow.pyfunc.load_model(registered["protonet"])
    support, order = five_images()
    # One shot per class and queries identical to support images: ProtoNet's answer is known
    # without training (each query sits on its own prototype).
    names = model.predict({"support_x": support, "support_y": NAMES, "query_x": support[order]})
    assert names.dtype.kind == "U" and names.tolist() == NAMES[order].tolist()
    ids = model.predict({"support_x": support, "support_y": IDS, "query_x": support[order]})
    assert ids.dtype == np.int64 and ids.tolist() == IDS[order].tolist()
    small = model.predict({"support_x": support, "support_y": IDS.astype(np.int32), "query_x": support})
    assert small.dtype == np.int32 and small.tolist() == IDS.tolist()
    # Queries at another resolution are resized by the model, like the support set.
    big = np.kron(support[order], np.ones((2, 2), dtype=np.uint8))
    assert model.predict({"support_x": support, "support_y": NAMES, "query_x": big}).shape == (5,)

    schema = model.metadata.get_input_schema()
    by_name = dict(zip(schema.input_names(), schema.inputs, strict=True))
    assert by_name["support_y"].type == np.dtype(object) and by_name["support_y"].shape == (-1,)
    assert by_name["support_x"].type == np.dtype(object) and by_name["support_x"].shape == (-1,)
    # RGB images as PIL gives them for a colour PNG: the grayscale model converts them itself.
    rgb = np.repeat(support[..., None], 3, axis=-1)
    rgb_pred = model.predict({"support_x": rgb, "support_y": NAMES, "query_x": rgb[order]})
    assert rgb_pred.tolist() == NAMES[order].tolist()


def test_json_labels_come_back_as_strings_and_integers(five_images, registered: dict[str, str]) -> None:
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    model = mlflow.pyfunc.load_model(registered["protonet"])
    support, order = five_images()
    for labels in (NAMES, IDS):
        # A request body, parsed against the signature as `mlflow models serve` parses it.
        body = {"inputs": {"support_x": support.tolist(), "support_y": labels.tolist(),
                           "query_x": support[order].tolist()}}  # fmt: skip
        parsed = infer_and_parse_data(json.loads(json.dumps(body)), model.metadata.get_input_schema())
        assert parsed["support_y"].dtype == object
        assert model.predict(parsed).tolist() == labels[order].tolist()


def test_renamed_classes_get_the_same_predictions(registered: dict[str, str]) -> None:
    model = mlflow.pyfunc.load_model(registered["maml"])
    rng = np.random.default_rng(1)
    support = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    query = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    slot = rng.permutation(np.repeat(np.arange(5), 2))
    by_id = model.predict({"support_x": support, "support_y": IDS[slot], "query_x": query})
    by_name = model.predict({"support_x": support, "support_y": NAMES[slot], "query_x": query})
    assert by_id.dtype == np.int64 and set(by_id.tolist()) <= set(IDS.tolist())
    name_of = dict(zip(IDS.tolist(), NAMES.tolist(), strict=True))
    assert [name_of[i] for i in by_id.tolist()] == by_name.tolist()


@pytest.mark.parametrize(
    ("change", "error", "message"),
    [
        ({"support_y": NAMES[:4]}, ValueError, "support_y has 4 labels but support_x has 5 images"),
        ({"support_y": np.array(["a", "b", "c", "d", "e", "f"])}, ValueError, "6 labels but support_x"),
        ({"support_y": np.array([0.0, 1.0, 2.0, 3.0, 4.0])}, ValueError, "integer or string labels"),
        ({"query_x": np.zeros((2, 28, 28), dtype=np.float32)}, ValueError, "8-bit pixels .* got float32"),
        ({"query_x": np.full((2, 28, 28), 300)}, ValueError, "8-bit pixels .* got int64 values"),
        ({"query_x": np.zeros((28, 28), dtype=np.uint8)}, ValueError, "must be \\(n, H, W\\) or"),
        ("ragged", ValueError, "query_x holds images of different sizes"),
        ("six classes", ValueError, "6 classes but the model was trained for 5 ways"),
    ],
)
def test_bad_inputs_are_refused(
    five_images, registered: dict[str, str], change: Any, error: type, message: str
) -> None:
    model = mlflow.pyfunc.load_model(registered["maml"])
    support, _ = five_images()
    model_input = {"support_x": support, "support_y": NAMES, "query_x": support}
    if change == "ragged":
        ragged = np.empty(2, dtype=object)
        ragged[:] = [support[0], np.zeros((30, 30), dtype=np.uint8)]
        model_input["query_x"] = ragged
    elif change == "six classes":
        model_input["support_x"] = np.concatenate([support, support[:1]])
        model_input["support_y"] = np.array([*NAMES, "Vav"])
    else:
        model_input |= change
    with pytest.raises(error, match=message):
        model.predict(model_input)


def test_regression_keeps_float_targets(registered: dict[str, str]) -> None:
    model = mlflow.pyfunc.load_model(registered["sinusoid"])
    x = np.linspace(-5, 5, 9, dtype=np.float32).reshape(-1, 1)
    pred = model.predict({"support_x": x[:5], "support_y": np.sin(x[:5]), "query_x": x[5:]})
    assert pred.dtype == np.float32 and pred.shape == (4, 1)
    # Declared object, so MLflow passes NumPy's default float64 through; the model casts it.
    assert model.metadata.get_input_schema().inputs[1].type == np.dtype(object)
    x64, y64 = x.astype(np.float64), np.sin(x[:5]).astype(np.float64)  # the same values, wider
    wide = model.predict({"support_x": x64[:5], "support_y": y64, "query_x": x64[5:]})
    np.testing.assert_array_equal(wide, pred)
    with pytest.raises(ValueError, match="support_y has 4 labels but support_x has 5 inputs"):
        model.predict({"support_x": x[:5], "support_y": np.sin(x[:4]), "query_x": x[5:]})
    with pytest.raises(
        ValueError, match=r"support_y must hold real numbers \(any int or float dtype\), got <U1"
    ):
        model.predict({"support_x": x[:5], "support_y": np.array(list("abcde"))[:, None], "query_x": x[5:]})
