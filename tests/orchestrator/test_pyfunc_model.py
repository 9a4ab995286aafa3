"""The served model's label handling and input checks, called directly (no MLflow store)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from metasweep.orchestrator.tracking.model import ModelSpec, encode_labels, predict_with, rebuild

NAMES = np.array(["Gimel", "Alef", "He", "Bet", "Dalet"])
IDS = np.array([7, 42, 3, 19, 5])


def fresh(spec: ModelSpec) -> Any:
    """The learner ``spec`` describes, as initialised, through the path the served model takes."""
    from metasweep.orchestrator.learner import build_learner

    return rebuild(spec, build_learner(spec.learner, spec.problem).state_dict())


@pytest.fixture
def protonet(served_spec) -> tuple[Any, ModelSpec]:
    spec = served_spec("protonet")
    return fresh(spec), spec


def test_labels_are_numbered_by_first_appearance_in_their_own_dtype() -> None:
    classes, indices = encode_labels(np.array(["b", "a", "b", "c", "a"]))
    assert classes.tolist() == ["b", "a", "c"] and classes.dtype.kind == "U"
    assert indices.tolist() == [0, 1, 0, 2, 1]
    classes, indices = encode_labels(np.array([42, 7, 42], dtype=np.int32))
    assert classes.dtype == np.int32 and classes.tolist() == [42, 7] and indices.tolist() == [0, 1, 0]
    # MLflow parses JSON labels into object arrays.
    classes, _ = encode_labels(np.array(["x", "y"], dtype=object))
    assert classes.dtype == object and classes.tolist() == ["x", "y"]
    classes, _ = encode_labels(np.array([3, 1], dtype=object))
    assert classes.tolist() == [3, 1]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        (np.array([1.0, 2.0]), "integer or string labels, got dtype float64"),
        (np.array([True, False]), "integer or string labels, got dtype bool"),
        (np.array([1, "a"], dtype=object), r"all integer or all string labels, got \['int', 'str'\]"),
        (np.array([[1, 2]]), r"non-empty \(n,\) array of labels, got shape \(1, 2\)"),
        (np.array([], dtype=np.int64), "non-empty"),
    ],
)
def test_labels_that_are_not_integers_or_strings_are_refused(labels: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_labels(labels)


def test_predictions_come_back_in_the_callers_label_space(
    five_images, protonet: tuple[Any, ModelSpec]
) -> None:
    learner, spec = protonet
    support, order = five_images()
    # One shot per class and queries identical to support images: each query's own prototype is
    # at distance zero, so the right label is known without training.
    for labels in (NAMES, IDS, IDS.astype(np.int32), NAMES.astype(object)):
        pred = predict_with(
            learner, spec, {"support_x": support, "support_y": labels, "query_x": support[order]}
        )
        assert pred.dtype == labels.dtype
        assert pred.tolist() == labels[order].tolist()


def test_renaming_classes_never_changes_a_prediction(served_spec) -> None:
    spec = served_spec("maml")
    learner = fresh(spec)
    rng = np.random.default_rng(1)
    support = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    query = rng.integers(0, 256, (12, 28, 28), dtype=np.uint8)
    slot = rng.permutation(np.repeat(np.arange(5), 2))  # two shots per class, shuffled
    by_id = predict_with(learner, spec, {"support_x": support, "support_y": IDS[slot], "query_x": query})
    by_name = predict_with(learner, spec, {"support_x": support, "support_y": NAMES[slot], "query_x": query})
    name_of = dict(zip(IDS.tolist(), NAMES.tolist(), strict=True))
    assert [name_of[i] for i in by_id.tolist()] == by_name.tolist()


def test_bad_support_sets_are_refused_with_what_to_do(
    served_spec, five_images, protonet: tuple[Any, ModelSpec]
) -> None:
    learner, spec = protonet
    support, _ = five_images()
    with pytest.raises(ValueError, match="4 labels but support_x has 5 images; give exactly one label"):
        predict_with(learner, spec, {"support_x": support, "support_y": NAMES[:4], "query_x": support})
    ragged = np.empty(2, dtype=object)
    ragged[:] = [support[0], np.zeros((30, 30), dtype=np.uint8)]
    with pytest.raises(ValueError, match="query_x holds images of different sizes"):
        predict_with(learner, spec, {"support_x": support, "support_y": NAMES, "query_x": ragged})
    with pytest.raises(ValueError, match="missing \\['support_y'\\]"):
        predict_with(learner, spec, {"support_x": support, "query_x": support})
    maml_spec = served_spec("maml", ways=3)
    maml = fresh(maml_spec)
    with pytest.raises(ValueError, match="5 classes but the model was trained for 3 ways"):
        predict_with(maml, maml_spec, {"support_x": support, "support_y": NAMES, "query_x": support})


def test_a_spec_round_trips_through_json_and_refuses_the_old_format(served_spec) -> None:
    import json

    for algorithm in ("maml", "protonet", "sinusoid"):
        spec = served_spec(algorithm)
        assert ModelSpec.from_json(json.loads(json.dumps(spec.to_json()))) == spec
    with pytest.raises(ValueError, match="format 1, this metasweep reads format 2"):
        ModelSpec.from_json({"config": {}, "task_kind": "classification"})


def test_regression_points_of_any_real_dtype_predict_alike(served_spec) -> None:
    spec = served_spec("sinusoid")
    learner = fresh(spec)
    rng = np.random.default_rng(0)
    x, y, q = (rng.uniform(-5, 5, (5, 1)) for _ in range(3))  # float64, NumPy's default
    want = predict_with(learner, spec, {"support_x": x.astype(np.float32), "support_y": y.astype(np.float32),
                                        "query_x": q.astype(np.float32)})  # fmt: skip
    assert want.shape == (5, 1) and want.dtype == np.float32
    for given in (
        {"support_x": x, "support_y": y, "query_x": q},
        {"support_x": x.ravel().tolist(), "support_y": y.ravel().tolist(), "query_x": q.ravel().tolist()},
        {"support_x": x.ravel().astype(object), "support_y": y, "query_x": q},
    ):
        np.testing.assert_array_equal(predict_with(learner, spec, given), want)
    ints = predict_with(
        learner, spec, {"support_x": np.arange(5), "support_y": np.arange(5), "query_x": np.arange(5)}
    )
    assert ints.shape == (5, 1) and np.isfinite(ints).all()
    for bad, dtype in (
        (np.array(["1", "2"]), "<U1"),
        (np.array([1 + 2j]), "complex128"),
        (["a", 1.0], "<U32"),
    ):
        with pytest.raises(
            ValueError, match=rf"^support_x must hold real numbers \(any int or float dtype\), got {dtype}$"
        ):
            predict_with(learner, spec, {"support_x": bad, "support_y": y, "query_x": q})
