"""The served model: a meta-learner that adapts to the caller's support set at prediction.

Registered as an MLflow pyfunc "model from code" (:mod:`.model_code`): the model folder holds
this code, a JSON spec (:class:`ModelSpec`) and the learner's tensors, read with
``torch.load(weights_only=True)``; no pickled Python object is ever loaded.

    model = mlflow.pyfunc.load_model("models:/omniglot-5w1s@champion")
    pred = model.predict({"support_x": sx, "support_y": sy, "query_x": qx})

Images: ``support_x``/``query_x`` are uint8 ``(n, H, W)`` or ``(n, H, W, C)``, as PIL gives them,
in the source dataset's pixel convention; the model resizes, scales and inverts them as the
dataset recorded. ``support_y`` holds integer or string labels, ``(n,)``, any values (e.g.
``[7, 42, 3]`` or ``["Alef", "Bet", "Gimel"]``); predictions come back as those labels, in the same
dtype. Which label names a class never changes a prediction: classes are numbered in order of first
appearance in ``support_y``. Regression: ``(n, 1)`` or ``(n,)`` inputs and targets of any int or
float dtype (NumPy's default float64 included), cast to float32; float32 ``(n, 1)`` predictions.

Imports MLflow, torch, numpy, metasweep's core and the image helpers (PIL) only: nothing of the
sweep, the CLI or the config schema (tests/orchestrator/test_served_model.py checks the closure).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from mlflow.pyfunc import PythonModel

from metasweep.algorithms import InnerLoopLearner, MetaLearner
from metasweep.orchestrator.data.images import model_images
from metasweep.orchestrator.learner import LearnerSpec, build_learner
from metasweep.orchestrator.problem import Problem

WEIGHTS = "weights"
SPEC = "spec"
SPEC_FORMAT = 2


@dataclass(frozen=True)
class ModelSpec:
    """What rebuilds a registered learner: the problem, the learner's settings, how it adapts.

    Attributes:
        problem: the problem it was trained on.
        learner: the settings that build it.
        eval_inner_steps: adaptation steps at prediction (``None`` without an inner loop).
    """

    problem: Problem
    learner: LearnerSpec
    eval_inner_steps: int | None

    def to_json(self) -> dict[str, Any]:
        """JSON-serialisable fields, with the spec's format version."""
        return {
            "format": SPEC_FORMAT,
            "problem": self.problem.to_json(),
            "learner": self.learner.to_json(),
            "eval_inner_steps": self.eval_inner_steps,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelSpec:
        """The inverse of :meth:`to_json`.

        Raises:
            ValueError: a spec of another format (a model registered by metasweep 0.1).
        """
        if data.get("format") != SPEC_FORMAT:
            raise ValueError(
                f"model spec format {data.get('format', 1)}, this metasweep reads format {SPEC_FORMAT}; "
                "register the model again with this version (see CHANGELOG.md)"
            )
        return cls(
            Problem.from_json(data["problem"]),
            LearnerSpec.from_json(data["learner"]),
            data["eval_inner_steps"],
        )


def rebuild(spec: ModelSpec, weights: dict[str, Any]) -> MetaLearner[Any]:
    """The learner ``spec`` describes with ``weights`` loaded, in eval mode, on the CPU."""
    learner = build_learner(spec.learner, spec.problem)
    learner.load_state_dict(weights)
    return learner.eval()


class MetaLearnerModel(PythonModel):
    """Adapts the meta-learned model to each call's support set, then predicts its queries."""

    # MLflow's type-hint validation takes list[...] inputs only; this model takes one dict of arrays
    # that its signature checks, so predict is untyped on purpose. This flag (MLflow's own, for its
    # ChatModel) skips the hint check and its "add type hints" warning at every class definition.
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        """Rebuild the learner from JSON and tensors only."""
        self.spec = ModelSpec.from_json(json.loads(Path(context.artifacts[SPEC]).read_text()))
        weights = torch.load(context.artifacts[WEIGHTS], map_location="cpu", weights_only=True)
        self.learner = rebuild(self.spec, weights)

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Predictions for ``model_input["query_x"]`` after adapting to the support set.

        Deliberately without type hints: MLflow would read them as an input schema.
        """
        return predict_with(self.learner, self.spec, model_input)


def real_points(value: Any, name: str) -> torch.Tensor:
    """``value`` (an array or list of real numbers of any int or float dtype, ``(n,)`` or
    ``(n, 1)``) as a float32 ``(1, n, 1)`` task.

    Raises:
        ValueError: values that are not real numbers.
    """
    array = np.asarray(value)
    if array.dtype.kind == "O":  # JSON lists, and lists of Python numbers; else refused below
        with contextlib.suppress(TypeError, ValueError):
            array = array.astype(np.float64)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{name} must hold real numbers (any int or float dtype), got {array.dtype}")
    return torch.as_tensor(array.astype(np.float32)).reshape(1, -1, 1)


def predict_with(learner: MetaLearner[Any], spec: ModelSpec, model_input: Any) -> np.ndarray:
    """Adapt ``learner`` to one support set and predict the query set (see module docstring).

    Args:
        learner: the meta-learner, in eval mode.
        spec: the model's spec.
        model_input: ``support_x``, ``support_y`` and ``query_x`` arrays.

    Returns:
        Classification: ``(queries,)`` labels taken from ``support_y``, in its dtype.
        Regression: ``(queries, 1)`` float32 predictions.

    Raises:
        ValueError: missing keys, labels that are not integers or strings, a label count that
            differs from the support image count, or more classes than the model's ways.
    """
    missing = {"support_x", "support_y", "query_x"} - set(model_input)
    if missing:
        raise ValueError(f"model input needs support_x, support_y and query_x; missing {sorted(missing)}")
    problem = spec.problem

    def adapt(sx: torch.Tensor, sy: torch.Tensor) -> Any:
        if spec.eval_inner_steps is None:
            return learner.adapt(sx, sy)
        inner: InnerLoopLearner[Any] = learner  # type: ignore[assignment]
        return inner.adapt(sx, sy, inner_steps=spec.eval_inner_steps)

    if problem.task_kind == "regression":
        sx, sy, qx = (real_points(model_input[key], key) for key in ("support_x", "support_y", "query_x"))
        _check_one_label_each(sy.shape[1], sx.shape[1], "inputs")
        adapted = adapt(sx, sy)
        with torch.no_grad():
            return learner.predict(adapted, qx)[0].numpy()
    support_x = model_images(model_input["support_x"], problem.input_shape, problem.invert, "support_x")
    query_x = model_images(model_input["query_x"], problem.input_shape, problem.invert, "query_x")
    classes, indices = encode_labels(model_input["support_y"])
    _check_one_label_each(len(indices), support_x.shape[0], "images")
    ways = problem.ways or 0
    if learner.capabilities.head and len(classes) > ways:
        raise ValueError(
            f"the support set has {len(classes)} classes but the model was trained for {ways} ways; "
            f"adapt it to at most {ways} classes at a time"
        )
    sy = torch.as_tensor(indices, dtype=torch.long).unsqueeze(0)
    with torch.no_grad():
        adapted = adapt(support_x.unsqueeze(0), sy)
        logits = learner.predict(adapted, query_x.unsqueeze(0))[0, :, : len(classes)]
    return classes[logits.argmax(-1).numpy()]


def encode_labels(support_y: Any) -> tuple[np.ndarray, np.ndarray]:
    """The distinct labels in order of first appearance, and each example's index among them.

    Indices depend only on which examples share a label, never on the label values, so renaming
    classes (``7`` to ``"Alef"``) cannot change which example a prediction points to.

    Args:
        support_y: ``(n,)`` integer labels (any int dtype, or Python ints in an object array) or
            string labels (``<U``, or ``str`` in an object array, as MLflow's JSON parsing gives).

    Returns:
        ``classes`` ``(k,)`` in ``support_y``'s dtype, and ``indices`` ``(n,)`` into it.

    Raises:
        ValueError: not 1-D, empty, or labels that are not all integers or all strings.
    """
    labels = np.asarray(support_y)
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"support_y must be a non-empty (n,) array of labels, got shape {labels.shape}")
    kind = labels.dtype.kind
    if kind == "O":
        values = labels.tolist()
        integers = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        if not (integers or all(isinstance(v, str) for v in values)):
            kinds = sorted({type(v).__name__ for v in values})
            raise ValueError(f"support_y must hold all integer or all string labels, got {kinds}")
    elif kind not in "iuU":
        raise ValueError(
            f"support_y must hold integer or string labels, got dtype {labels.dtype}; "
            "pass class names as strings or class ids as integers"
        )
    classes, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return classes[order], rank[inverse.reshape(-1)]


def _check_one_label_each(labels: int, examples: int, what: str) -> None:
    if labels != examples:
        raise ValueError(
            f"support_y has {labels} labels but support_x has {examples} {what}; "
            "give exactly one label per support example"
        )
