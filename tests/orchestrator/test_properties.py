"""Property-based tests of the two places users' inputs enter: the config schema (YAML files and
``--set``) and the dataset importers (archives). Whatever they are given, they either load it or
raise :class:`UserError`; any other exception would reach the user as a traceback (issue 10).

The suite runs a fixed set of examples (``derandomize``), so CI is reproducible; cases that once
failed stay pinned with ``@example``. To explore fresh inputs, run with
``HYPOTHESIS_EXPLORE=1000`` (the number of examples per test, drawn at random)."""

from __future__ import annotations

import io
import os
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from PIL import Image

from metasweep.orchestrator.config import RunConfig, SweepConfig, load_config, load_config_dict
from metasweep.orchestrator.data import importers
from metasweep.orchestrator.errors import UserError

EXPLORE = int(os.environ.get("HYPOTHESIS_EXPLORE", "0"))
SETTINGS = settings(
    max_examples=EXPLORE or 60,
    derandomize=not EXPLORE,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

# Keys users write: the schema's own (so deep structures get explored), and typos.
RUN_KEYS = ["name", "algorithm", "model", "data", "train", "eval", "seed", "device", "output_dir"]
SECTION_KEYS = [
    "name", "hidden", "filters", "dataset", "ways", "shots", "queries", "rotations", "split",
    "iterations", "inner_lr", "inner_steps", "meta_lr", "meta_batch_size", "first_order",
    "eval_every", "strategy", "val_tasks", "test_tasks", "batch_size", "seed", "space", "type",
    "low", "high", "values", "num_samples", "initial_points", "uri", "experiment", "typo",
]  # fmt: skip
SWEEP_KEYS = [*RUN_KEYS, "search", "tracking"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["maml", "protonet", "conv4", "mlp", "sinusoid", "uniform", "int", "../x", "a;b"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.sampled_from(SECTION_KEYS), inner, max_size=4),
    ),
    max_leaves=12,
)


def trees(keys: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(keys), values, max_size=6)


def loads_or_refuses(call: Any) -> None:
    try:
        call()
    except UserError as exc:
        assert str(exc), "a UserError must say what is wrong"


@SETTINGS
@given(tree=trees(RUN_KEYS))
def test_any_run_config_tree_loads_or_is_refused(tree: dict[str, Any]) -> None:
    loads_or_refuses(lambda: load_config_dict(tree, [], RunConfig))


@SETTINGS
@given(tree=trees(SWEEP_KEYS))
def test_any_sweep_config_tree_loads_or_is_refused(tree: dict[str, Any]) -> None:
    loads_or_refuses(lambda: load_config_dict(tree, [], SweepConfig))


@SETTINGS
@given(
    key=st.one_of(
        st.sampled_from(["train.inner_lr", "seed", "data.ways", "search.space", "model.hidden", "name"]),
        st.text(max_size=20),
    ),
    value=st.one_of(st.text(max_size=30), values.map(lambda v: yaml.safe_dump(v, default_flow_style=True))),
)
def test_any_set_override_loads_or_is_refused(key: str, value: str) -> None:
    loads_or_refuses(lambda: load_config(None, [f"{key}={value}"], SweepConfig))


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_yaml_file_loads_or_is_refused(text: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.yaml"
        path.write_text(text)
        loads_or_refuses(lambda: load_config(path, [], RunConfig))


def _png(size: int, mode: str) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, (size, size), 128).save(buffer, format="PNG")
    return buffer.getvalue()


members = st.lists(
    st.tuples(
        st.one_of(
            st.builds(
                "images_background/{}/character{:02d}/{:04d}_{:02d}{}".format,
                st.sampled_from(["Alpha", "Beta", "../up"]),
                st.integers(1, 3),
                st.integers(1, 3),
                st.integers(1, 4),
                st.sampled_from([".png", ".PNG", ".txt", ""]),
            ),
            # zipfile cuts a name at NUL (and cannot write one that starts with it), so no NUL
            st.text(st.characters(exclude_characters="\x00"), min_size=1, max_size=30),
        ),
        st.one_of(
            st.builds(_png, st.integers(1, 20), st.sampled_from(["L", "RGB", "1"])),
            st.binary(max_size=64),
        ),
    ),
    max_size=8,
)


@SETTINGS
@given(entries=members)
def test_any_small_zip_imports_or_is_refused(entries: list[tuple[str, bytes]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "images_background.zip"
        with zipfile.ZipFile(archive, "w") as z, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # duplicate names are part of the test
            for name, data in entries:
                z.writestr(name, data)
        out = Path(tmp) / "o.parquet"
        try:
            importers.import_omniglot([archive], str(out), train_classes=1, val_classes=0)
        except UserError:
            assert not out.exists()  # nothing half written


@SETTINGS
@given(
    shape=st.lists(st.integers(0, 4), min_size=1, max_size=5),
    dtype=st.sampled_from([np.bool_, np.uint8, np.float32, np.int64]),
    key=st.sampled_from(["images", "pixels"]),
)
@example(shape=[1, 0, 0, 0], dtype=np.bool_, key="images")  # no drawings: once crashed np.stack
def test_any_small_npz_imports_or_is_refused(shape: list[int], dtype: Any, key: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "images_background.npz"
        np.savez(npz, **{key: np.ones(shape, dtype=dtype)})
        out = Path(tmp) / "o.parquet"
        try:
            importers.import_omniglot([npz], str(out), train_classes=1, val_classes=0)
        except UserError:
            assert not out.exists()
