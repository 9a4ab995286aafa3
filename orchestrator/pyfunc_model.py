"""The MLflow pyfunc model of a meta-learner: it adapts to the caller's support set at prediction.

Logged as an MLflow "model from code": MLflow copies this file into the model and runs it at load
time, so no pickled Python object is ever loaded. Weights are read with
``torch.load(weights_only=True)``; everything else is JSON.

    model = mlflow.pyfunc.load_model("models:/omniglot-5w1s@champion")
    pred = model.predict({"support_x": sx, "support_y": sy, "query_x": qx})

Images: ``support_x``/``query_x`` are uint8 ``(n, H, W)`` or ``(n, H, W, C)``, as PIL gives
them, in the source dataset's pixel convention; the model resizes, scales and inverts them as the
dataset recorded. ``support_y`` holds integer or string labels, ``(n,)``, any values (e.g.
``[7, 42, 3]`` or ``["Alef", "Bet", "Gimel"]``); predictions come back as those labels, in the same
dtype. Which label names a class never changes a prediction: classes are numbered in order of first
appearance in ``support_y``. Regression: float ``(n, 1)`` inputs and targets, float ``(n, 1)``
predictions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow
import mlflow.models
import numpy as np
import torch
from mlflow.pyfunc import PythonModel
from PIL import Image

WEIGHTS = "weights"
SPEC = "spec"


def build_from_spec(spec: dict[str, Any]) -> torch.nn.Module:
    """The learner described by ``spec`` (the run config and dataset facts), untrained."""
    from orchestrator.config import RunConfig
    from orchestrator.training import build_learner

    config = RunConfig.model_validate(spec["config"])

    class _Shape:
        task_kind = spec["task_kind"]
        image_shape = tuple(spec["image_shape"]) if spec.get("image_shape") else (28, 28, 1)

    return build_learner(config, _Shape())  # type: ignore[arg-type]


def preprocess_images(images: np.ndarray, spec: dict[str, Any], name: str = "images") -> torch.Tensor:
    """uint8 ``(n, H, W[, C])`` in the dataset's convention to the model's ``(n, C, h, w)`` floats.

    Args:
        images: one array of equally sized images; any size, the model resizes them.
        spec: the model's spec (``image_shape`` as ``(h, w, c)``, ``invert``).
        name: the input's name in error messages.

    Raises:
        ValueError: images of different sizes in one array, a wrong rank, or a channel count the
            model cannot take.
    """
    h, w, c = spec["image_shape"]
    images = np.asarray(images)
    if images.dtype == object:
        # A JSON request arrives as nested lists; ragged ones are images of different sizes.
        try:
            images = np.array(images.tolist())
        except ValueError:
            images = images.astype(object)
        if images.dtype == object:
            raise ValueError(
                f"{name} holds images of different sizes; resize them to one size and stack them into "
                "one uint8 array (n, H, W) or (n, H, W, C)"
            )
    if images.dtype.kind not in "iu" or (images.size and (images.min() < 0 or images.max() > 255)):
        raise ValueError(
            f"{name} must hold 8-bit pixels (uint8, 0..255) as PIL gives them, got {images.dtype}"
            + (" values" if images.dtype.kind in "iu" else "")
        )
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name} must be (n, H, W) or (n, H, W, C) images, got shape {images.shape}")
    if images.shape[-1] != c:
        if c == 1:
            images = np.stack([np.asarray(Image.fromarray(i.astype(np.uint8)).convert("L")) for i in images])[
                ..., None
            ]
        else:
            raise ValueError(f"the model takes {c}-channel images, got {images.shape[-1]} channels")
    if images.shape[1:3] != (h, w):
        mode = "L" if c == 1 else "RGB"
        images = np.stack(
            [
                np.asarray(
                    Image.fromarray(i.squeeze(-1) if c == 1 else i, mode=mode).resize(
                        (w, h), Image.Resampling.LANCZOS
                    )
                ).reshape(h, w, c)
                for i in images.astype(np.uint8)
            ]
        )
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255.0
    return 1.0 - x if spec.get("invert") else x


class MetaLearnerModel(PythonModel):
    """Adapts the meta-learned model to each call's support set, then predicts its queries."""

    def load_context(self, context: Any) -> None:
        """Rebuild the learner from JSON and tensors only."""
        self.spec = json.loads(Path(context.artifacts[SPEC]).read_text())
        self.learner = build_from_spec(self.spec)
        self.learner.load_state_dict(
            torch.load(context.artifacts[WEIGHTS], map_location="cpu", weights_only=True)
        )
        self.learner.eval()

    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        """Predictions for ``model_input["query_x"]`` after adapting to the support set.

        Deliberately without type hints: MLflow would read them as an input schema.
        """
        return predict_with(self.learner, self.spec, model_input)


def predict_with(learner: torch.nn.Module, spec: dict[str, Any], model_input: Any) -> np.ndarray:
    """Adapt ``learner`` to one support set and predict the query set (see module docstring).

    Args:
        learner: the meta-learner, in eval mode.
        spec: the model's spec (config, task kind, ways, image shape, preprocessing).
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
    steps = spec["eval_inner_steps"]
    if spec["task_kind"] == "regression":
        sx = torch.as_tensor(np.asarray(model_input["support_x"], dtype=np.float32)).reshape(1, -1, 1)
        sy = torch.as_tensor(np.asarray(model_input["support_y"], dtype=np.float32)).reshape(1, -1, 1)
        qx = torch.as_tensor(np.asarray(model_input["query_x"], dtype=np.float32)).reshape(1, -1, 1)
        _check_one_label_each(sy.shape[1], sx.shape[1], "inputs")
        adapted = learner.adapt(sx, sy, inner_steps=steps)  # type: ignore[operator]
        with torch.no_grad():
            return learner.predict(adapted, qx)[0].numpy()  # type: ignore[operator]
    sx = preprocess_images(model_input["support_x"], spec, "support_x").unsqueeze(0)
    qx = preprocess_images(model_input["query_x"], spec, "query_x").unsqueeze(0)
    classes, indices = encode_labels(model_input["support_y"])
    _check_one_label_each(len(indices), sx.shape[1], "images")
    ways = spec["ways"]
    if spec["config"]["algorithm"] != "protonet" and len(classes) > ways:
        raise ValueError(
            f"the support set has {len(classes)} classes but the model was trained for {ways} ways; "
            f"adapt it to at most {ways} classes at a time"
        )
    sy = torch.as_tensor(indices, dtype=torch.long).unsqueeze(0)
    with torch.no_grad():
        adapted = learner.adapt(sx, sy, inner_steps=steps)  # type: ignore[operator]
        logits = learner.predict(adapted, qx)[0, :, : len(classes)]  # type: ignore[operator]
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


mlflow.models.set_model(MetaLearnerModel())
