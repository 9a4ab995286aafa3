"""The run config schema: defaults, overrides and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from metasweep.orchestrator.config import RunConfig, load_config, load_config_dict, to_yaml
from metasweep.orchestrator.errors import UserError

ROOT = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["sinusoid_maml.yaml", "sinusoid_metasgd.yaml"])
def test_examples_validate(name: str) -> None:
    cfg = load_config(ROOT / "examples" / name)
    assert cfg.data.shots == 10
    assert cfg.train.meta_batch_size == 25
    assert cfg.train.meta_lr == 0.001
    assert cfg.train.inner_lr == 0.01
    assert cfg.train.inner_steps == 1
    assert cfg.eval.inner_steps == (1 if cfg.algorithm == "metasgd" else 10)
    assert cfg.train.iterations == 70000


def test_defaults_without_file() -> None:
    cfg = load_config(None)
    assert cfg == RunConfig()
    assert cfg.algorithm == "maml"
    assert cfg.eval.test_tasks == 600


def test_override_types_are_parsed(tmp_path: Path) -> None:
    cfg = load_config(
        write(tmp_path, "algorithm: maml\n"),
        ["train.inner_lr=0.05", "train.first_order=true", "model.hidden=[20, 20]", "name=x"],
    )
    assert cfg.train.inner_lr == 0.05
    assert cfg.train.first_order is True
    assert cfg.model.hidden == (20, 20)
    assert cfg.name == "x"


def test_yaml_round_trip() -> None:
    cfg = load_config(None, ["algorithm=metasgd", "train.inner_steps=3"])
    assert load_config_dict(__import__("yaml").safe_load(to_yaml(cfg))) == cfg


@pytest.mark.parametrize(
    ("text", "overrides", "expected"),
    [
        ("algorithm: mamll\n", [], "valid algorithms: maml, anil, metasgd, reptile, protonet"),
        ("model: {name: resnet}\n", [], "valid models: mlp, conv4"),
        ("train:\n  inner_lrr: 0.1\n", [], "did you mean 'inner_lr'?"),
        ("trian: {}\n", [], "did you mean 'train'?"),
        ("train:\n  inner_lr: -1\n", [], "train.inner_lr: Input should be greater than 0"),
        ("train:\n  meta_lr: 0\n", [], "train.meta_lr: Input should be greater than 0"),
        ("train:\n  inner_steps: -1\n", [], "train.inner_steps: Input should be greater than or equal to 0"),
        ("data:\n  shots: 0\n", [], "data.shots: Input should be greater than or equal to 1"),
        ("train:\n  inner_lr: fast\n", [], "train.inner_lr: Input should be a valid number"),
        ("device: tpu\n", [], "device: Input should be 'auto', 'cpu' or 'cuda'"),
        ("algorithm: protonet\n", [], "protonet classifies"),
        ("model: {name: conv4}\n", [], "does not fit sinusoid regression"),
        ("- 1\n- 2\n", [], "must hold a mapping"),
        ("train: [1\n", [], "is not valid YAML"),
        ("", ["train.inner_lrr=0.1"], "--set train.inner_lrr: unknown key 'inner_lrr' in section 'train'"),
        ("", ["nope=1"], "unknown key 'nope' at the top level"),
        ("", ["train.inner_lr.x=1"], "train.inner_lr is a value, not a section"),
        ("", ["train.inner_lr"], "--set expects key=value"),
    ],
)
def test_bad_input_is_one_clear_message(
    tmp_path: Path, text: str, overrides: list[str], expected: str
) -> None:
    with pytest.raises(UserError) as info:
        load_config(write(tmp_path, text), overrides)
    assert expected in str(info.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "absent.yaml")


def test_every_field_is_described() -> None:
    from pydantic import BaseModel

    def walk(model: type[BaseModel]) -> None:
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no description"
            ann = field.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                walk(ann)

    walk(RunConfig)


def test_config_is_frozen() -> None:
    cfg = load_config(None)
    with pytest.raises(Exception, match="frozen"):
        cfg.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    "name", ["sweep_sinusoid_maml.yaml", "sweep_omniglot_maml.yaml", "sweep_sinusoid_maml_1step.yaml"]
)
def test_sweep_examples_validate(name: str) -> None:
    from metasweep.orchestrator.config import SweepConfig

    cfg = load_config(ROOT / "examples" / name, schema=SweepConfig)
    assert cfg.search.space and cfg.search.initial_points
    first = cfg.run_config(dict(cfg.search.initial_points[0]))
    assert first.train.inner_lr == cfg.train.inner_lr


def test_sweep_space_is_checked_against_the_run_schema() -> None:
    from metasweep.orchestrator.config import SweepConfig

    good = load_config(None, ["search.space={train.inner_lr: {type: loguniform, low: 0.01, high: 1}}"],
                       schema=SweepConfig)  # fmt: skip
    assert good.objective(good.problem(None)) == ("val/mse", "min")
    assert good.run_config({"train.inner_lr": 0.5}).train.inner_lr == 0.5
    bad = {
        "search.space={train.inner_lrr: {type: uniform, low: 0, high: 1}}": "did you mean 'inner_lr'",
        "search.space={train.inner_lr: {type: uniform, low: 1, high: 0.5}}": "low must be below high",
        "search.space={train.inner_steps: {type: loguniform, low: 1, high: 5}}": "is int",
        "search.space={train.meta_lr: {type: int, low: 1, high: 5}}": "is float",
        "search.space={algorithm: {type: categorical, values: []}}": "non-empty 'values'",
        "search.space={algorithm: {type: categorical, values: [maml, nope]}}": "unknown algorithm 'nope'",
        "search.space={train.inner_lr: {type: loguniform, low: 0, high: 1}}": "loguniform needs low > 0",
        "search.space={search.num_samples: {type: int, low: 1, high: 2}}": "unknown key 'search'",
        "search.initial_points=[{train.inner_lr: 0.1}]": "not in search.space",
    }
    for override, expected in bad.items():
        with pytest.raises(UserError, match=expected):
            load_config(None, [override], schema=SweepConfig)
    with pytest.raises(UserError, match="protonet has no inner loop"):
        load_config(None, ["algorithm=protonet", "data.dataset=x.parquet", "model.name=conv4",
                           "search.space={train.inner_lr: {type: uniform, low: 0.1, high: 1}}"],
                    schema=SweepConfig)  # fmt: skip


IMAGES = ["data.dataset=x.parquet", "model.name=conv4"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["algorithm=reptile", "train.first_order=true"], "train.first_order does not apply to reptile"),
        (
            [*IMAGES, "algorithm=protonet", "train.inner_steps=5"],
            "train.inner_steps does not apply to protonet",
        ),
        ([*IMAGES, "algorithm=protonet", "train.inner_lr=0.4"], "protonet has no inner loop"),
        ([*IMAGES, "algorithm=protonet", "eval.inner_steps=3"], "eval.inner_steps does not apply"),
    ],
)
def test_settings_a_learner_does_not_take_are_refused_not_ignored(overrides: list[str], message: str) -> None:
    with pytest.raises(UserError, match=message):
        load_config(None, overrides)


def test_a_saved_config_spells_out_defaults_of_settings_it_does_not_use_and_reloads() -> None:
    protonet = load_config(None, [*IMAGES, "algorithm=protonet"])
    assert load_config_dict(protonet.model_dump(mode="json")) == protonet
    assert protonet.eval_inner_steps is None and load_config(None).eval_inner_steps == 10


def test_problem_is_described_from_the_config_and_the_dataset_metadata() -> None:
    sinusoid = load_config(None).problem(None)
    assert (sinusoid.task_kind, sinusoid.input_shape, sinusoid.ways, sinusoid.metric, sinusoid.mode) == (
        "regression", (1,), None, "mse", "min",
    )  # fmt: skip
    images = load_config(None, [*IMAGES, "data.ways=20"])
    meta = {"image_shape": [84, 84, 3], "invert": True, "name": "photos"}
    problem = images.problem(meta)
    assert (problem.task_kind, problem.input_shape, problem.ways, problem.invert, problem.mode) == (
        "classification", (3, 84, 84), 20, True, "max",
    )  # fmt: skip
    assert (
        problem.fingerprint
        == images.problem(dict(meta)).fingerprint
        != images.problem({**meta, "seed": 1}).fingerprint
    )
    with pytest.raises(UserError, match="needs its metadata"):
        images.problem(None)


def test_a_searched_algorithm_samples_only_the_fields_it_uses() -> None:
    from metasweep.orchestrator.config import SweepConfig, applies

    space = (
        "search.space={algorithm: {type: categorical, values: [maml, protonet]}, "
        "train.inner_lr: {type: loguniform, low: 0.1, high: 1}}"
    )
    sweep = load_config(None, [*IMAGES, "train.inner_lr=0.4", space], SweepConfig)
    assert sweep.algorithms == ("maml", "protonet")
    assert applies("train.inner_lr", "maml") and not applies("train.inner_lr", "protonet")
    protonet = sweep.run_config({"algorithm": "protonet"})
    assert protonet.train.inner_lr == 0.01  # the base config's 0.4 means nothing to protonet
    assert sweep.run_config({"algorithm": "maml", "train.inner_lr": 0.2}).train.inner_lr == 0.2


@pytest.mark.parametrize(
    "name", ["x;rm -rf ~", "../elsewhere", "/abs/path", ".hidden", "a b", "", "it's", "$(id)", "x" * 129]
)
def test_names_that_could_escape_a_folder_a_shell_or_a_filter_are_refused(name: str) -> None:
    from metasweep.orchestrator.config import SweepConfig

    with pytest.raises(UserError, match="is not a valid name: use 1-128 letters"):
        load_config_dict({"name": name})
    with pytest.raises(UserError, match=r"tracking\.registered_model .* is not a valid name"):
        load_config_dict({"tracking": {"registered_model": name}}, (), SweepConfig)


def test_a_numeric_name_is_its_digits() -> None:
    assert load_config(None, ["name=2024"]).name == "2024"
    assert load_config(None, ["name=run-1.v2_b"]).name == "run-1.v2_b"
