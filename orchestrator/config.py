"""The run configuration: one validated schema, filled in from YAML and ``--set key=value``.

Defaults live here and nowhere else. Every field carries a one-line description, which the CLI
uses in its messages and ``docs/config.md`` is generated from (``python -m
metasweep.orchestrator.config``).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from metasweep.algorithms import ALGORITHMS, Capabilities, learner_class
from metasweep.orchestrator.errors import UserError
from metasweep.orchestrator.learner import BACKBONE_TASKS, BACKBONES, LearnerSpec, check_input
from metasweep.orchestrator.problem import Mode, Problem, mode_of, own_direction
from metasweep.orchestrator.redact import redact, uri_scheme

SINUSOID = "sinusoid"
SWEEP_STORAGE = "runs/sweeps"  # where Tune keeps a sweep's checkpoints unless told otherwise
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""What a run, sweep or registered model may be called: it becomes a folder name, a Ray job id, an
MLflow tag and part of a shell command, so letters, digits and ``._-`` only, no leading dot."""


def check_name(value: object, what: str) -> str:
    """``value`` as a name (a bare number is read as its digits).

    Raises:
        ValueError: a name :data:`NAME` does not match, with what to do.
    """
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not NAME.fullmatch(value):
        raise ValueError(
            f"{what} {value!r} is not a valid name: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (it becomes a folder, a job id and an MLflow tag)"
        )
    return value


CAPABILITY_FIELDS: dict[str, tuple[str, ...]] = {
    "inner_loop": ("train.inner_lr", "train.inner_steps", "eval.inner_steps"),
    "second_order": ("train.first_order", "train.memory.checkpoint_inner"),
}
"""The fields that mean something only to a learner with that capability."""


def fields_that_do_not_apply(capabilities: Capabilities) -> tuple[str, ...]:
    """Dotted names of the fields a learner with ``capabilities`` does not use."""
    return tuple(
        name
        for capability, names in CAPABILITY_FIELDS.items()
        if not getattr(capabilities, capability)
        for name in names
    )


SEED_MAX = 2**63 - 1  # torch.Generator.manual_seed and numpy take seeds up to this


class _Section(BaseModel):
    # Non-finite floats validate as numbers (inf > 0) but cannot run: refused everywhere.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class ModelConfig(_Section):
    """The backbone."""

    name: str = Field(
        "mlp", description="backbone: 'mlp' (sinusoid regression), 'conv4' or 'resnet12' (images)"
    )
    hidden: tuple[int, ...] = Field((40, 40), description="hidden layer widths of the MLP")
    filters: int = Field(64, ge=1, description="filters per convolution of Conv-4")
    widths: tuple[int, int, int, int] = Field(
        (64, 160, 320, 640), description="filters of ResNet-12's four residual blocks"
    )

    @model_validator(mode="after")
    def _known_name(self) -> ModelConfig:
        if self.name not in BACKBONES:
            raise ValueError(f"unknown model {self.name!r}; valid models: {', '.join(BACKBONES)}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden widths must be >= 1, got {list(self.hidden)}")
        if any(w < 1 for w in self.widths):
            raise ValueError(f"ResNet-12 widths must be >= 1, got {list(self.widths)}")
        return self


class DataConfig(_Section):
    """Where episodes come from and their shape."""

    dataset: str = Field(
        SINUSOID, description="'sinusoid' (MAML regression) or a metasweep Parquet dataset path or URI"
    )
    ways: int = Field(5, ge=1, description="classes per episode (classification only)")
    shots: int = Field(10, ge=1, description="support examples per class (per task for regression)")
    queries: int = Field(10, ge=1, description="query examples per class (per task for regression)")
    rotations: bool = Field(False, description="add 90/180/270-degree rotations of each class as new classes")
    split: Literal["train", "val", "test"] = Field(
        "train", description="dataset split meta-training draws from (validation: val, test: test)"
    )


class MemoryConfig(_Section):
    """How a meta-batch's meta-gradient fits in memory, the same gradient either way (docs/memory.md)."""

    checkpoint_inner: bool = Field(
        False,
        description="second order: recompute each inner step in the backward pass instead of keeping "
        "its activations, so memory barely grows with inner_steps (about one more forward a step)",
    )
    task_chunk: int | Literal["auto"] | None = Field(
        None,
        description="tasks per forward-backward pass, gradients accumulated over the meta-batch "
        "(default: the whole meta-batch at once); auto: the largest that fits "
        "train.memory_budget_gb, or the GPU's free memory",
    )

    @field_validator("task_chunk")
    @classmethod
    def _whole_tasks(cls, chunk: int | str | None) -> int | str | None:
        if isinstance(chunk, int) and chunk < 1:
            raise ValueError(f"task_chunk must be at least 1 (or auto), got {chunk}")
        return chunk


class TrainConfig(_Section):
    """Meta-training hyperparameters."""

    iterations: int = Field(1000, ge=0, description="meta-iterations (meta-batches) to train for")
    meta_batch_size: int = Field(25, ge=1, description="tasks per meta-iteration")
    meta_lr: float = Field(0.001, gt=0, description="outer-loop (meta-optimiser) learning rate")
    meta_optimizer: Literal["adam", "sgd"] = Field("adam", description="outer-loop optimiser")
    inner_lr: float = Field(0.01, gt=0, description="inner-loop SGD step size (Meta-SGD: initial value)")
    inner_steps: int = Field(1, ge=0, description="inner-loop SGD steps during meta-training")
    first_order: bool = Field(False, description="drop second-order terms of the meta-gradient (FOMAML)")
    strategy: Literal["auto", "vmap", "loop"] = Field(
        "auto", description="run tasks batched (vmap), one by one (loop), or pick the faster (auto)"
    )
    eval_every: int = Field(500, ge=1, description="meta-iterations between meta-validation runs")
    memory: MemoryConfig = Field(MemoryConfig(), description="checkpointing and task chunks")
    workers: int = Field(
        1,
        ge=1,
        description="data-parallel workers that share each meta-batch (Ray Train, one local Ray; a "
        "sweep takes search.workers_per_trial); the same updates as one worker (docs/scaling.md)",
    )
    memory_budget_gb: float | None = Field(
        None,
        gt=0,
        description="memory one trial's meta-gradient may take, in GiB; checked before training "
        "starts (default: no check, or the GPU's free memory for task_chunk: auto)",
    )

    @model_validator(mode="after")
    def _chunk_divides_the_meta_batch(self) -> TrainConfig:
        if self.meta_batch_size % self.workers:
            raise ValueError(
                f"meta_batch_size={self.meta_batch_size} does not split evenly over {self.workers} "
                f"workers; use a multiple of {self.workers}"
            )
        chunk, shard = self.memory.task_chunk, self.worker_tasks
        if isinstance(chunk, int) and (chunk > shard or shard % chunk):
            divisors = [d for d in range(1, shard + 1) if shard % d == 0]
            tasks = f"meta_batch_size={self.meta_batch_size}"
            if self.workers > 1:
                tasks = f"the {shard} tasks of each of {self.workers} workers ({tasks})"
            raise ValueError(
                f"memory.task_chunk={chunk} does not divide {tasks} into equal chunks; "
                f"use one of {', '.join(map(str, divisors))} or auto"
            )
        return self

    @property
    def worker_tasks(self) -> int:
        """Tasks of the meta-batch each worker takes the meta-gradient of."""
        return self.meta_batch_size // self.workers

    def evaluates_at(self, iteration: int) -> bool:
        """Whether meta-validation runs after meta-iteration ``iteration`` (every ``eval_every``,
        and after the last one)."""
        return iteration % self.eval_every == 0 or iteration == self.iterations


class EvalConfig(_Section):
    """Meta-validation and meta-test on fixed, seeded held-out tasks."""

    inner_steps: int = Field(10, ge=0, description="inner-loop steps when adapting to held-out tasks")
    val_tasks: int = Field(100, ge=1, description="meta-validation tasks, scored every eval_every")
    test_tasks: int = Field(600, ge=1, description="meta-test tasks, scored once at the end")
    queries: int | None = Field(
        None, ge=1, description="query examples of held-out tasks (default: data.queries)"
    )
    batch_size: int = Field(50, ge=1, description="held-out tasks adapted at once")
    seed: int = Field(
        1234,
        ge=0,
        le=SEED_MAX,
        description="seed of the held-out task sets, independent of the training seed",
    )


class RunConfig(_Section):
    """One meta-training run: ``metasweep train CONFIG.yaml``."""

    name: str = Field(
        "run", description="run name (letters, digits, ._-); the default output directory is runs/<name>"
    )
    algorithm: str = Field("maml", description="meta-learner: " + ", ".join(ALGORITHMS))
    model: ModelConfig = Field(ModelConfig(), description="the backbone")
    data: DataConfig = Field(DataConfig(), description="where episodes come from")
    train: TrainConfig = Field(TrainConfig(), description="meta-training hyperparameters")
    eval: EvalConfig = Field(EvalConfig(), description="held-out evaluation")
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of model initialisation and training episodes")
    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="'auto' uses a GPU when one is visible"
    )
    output_dir: str | None = Field(
        None, description="where checkpoints and metrics go (default: runs/<name>)"
    )

    @field_validator("name", mode="before")
    @classmethod
    def _valid_name(cls, value: object) -> str:
        return check_name(value, "name")

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        capabilities = learner_class(self.algorithm).capabilities
        task_kind = self.task_kind
        if BACKBONE_TASKS[self.model.name] != task_kind:
            fitting = [name for name, kind in BACKBONE_TASKS.items() if kind == task_kind]
            what = "sinusoid regression" if task_kind == "regression" else "image datasets"
            raise ValueError(
                f"model {self.model.name!r} does not fit {what}; use model.name={' or '.join(fitting)}"
            )
        if task_kind not in capabilities.task_kinds:
            does = " and ".join(_VERBS[kind] for kind in sorted(capabilities.task_kinds))
            raise ValueError(f"{self.algorithm} {does}; it does not apply to {_TASKS[task_kind]}")
        defaults = RunConfig.model_construct()
        for name in fields_that_do_not_apply(capabilities):
            if _get(self, name) != _get(defaults, name):
                why = f"{self.algorithm} {_why(capabilities)}"
                raise ValueError(f"{name} does not apply to {self.algorithm}: {why}; drop it")
        return self

    @property
    def task_kind(self) -> Literal["regression", "classification"]:
        """``regression`` for the built-in sinusoid tasks, ``classification`` for image datasets."""
        return "regression" if self.data.dataset == SINUSOID else "classification"

    @property
    def run_dir(self) -> Path:
        """The output directory."""
        return Path(self.output_dir) if self.output_dir else Path("runs") / self.name

    def problem(self, metadata: Mapping[str, Any] | None) -> Problem:
        """What this run solves, from the config and the dataset's metadata (``None`` for
        sinusoids); computed once where a command starts and handed down from there.

        Raises:
            UserError: an image dataset without its metadata, or images the backbone cannot take.
        """
        if self.task_kind == "regression":
            return Problem("regression", (1,), None, False, SINUSOID, SINUSOID)
        if metadata is None:
            raise UserError(f"dataset {self.data.dataset} needs its metadata to describe the problem")
        h, w, c = metadata["image_shape"]
        fingerprint = hashlib.sha256(json.dumps(dict(metadata), sort_keys=True).encode()).hexdigest()[:16]
        problem = Problem(
            "classification", (c, h, w), self.data.ways, bool(metadata.get("invert", False)),
            self.data.dataset, fingerprint,
        )  # fmt: skip
        check_input(self.learner_spec(), problem)
        return problem

    def learner_spec(self) -> LearnerSpec:
        """The settings that build this run's learner."""
        t = self.train
        return LearnerSpec(
            algorithm=self.algorithm, backbone=self.model.name, hidden=self.model.hidden,
            filters=self.model.filters, widths=self.model.widths, inner_lr=t.inner_lr,
            inner_steps=t.inner_steps, first_order=t.first_order, strategy=t.strategy, seed=self.seed,
        )  # fmt: skip

    @property
    def eval_inner_steps(self) -> int | None:
        """``eval.inner_steps`` for a learner with an inner loop, else ``None``."""
        return self.eval.inner_steps if learner_class(self.algorithm).capabilities.inner_loop else None


_VERBS = {"classification": "classifies", "regression": "regresses"}
_TASKS = {"classification": "image classification", "regression": "sinusoid regression"}


def _why(capabilities: Capabilities) -> str:
    if not capabilities.inner_loop:
        return "has no inner loop"
    return "is first order by construction"


def _get(config: BaseModel, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


Schema = TypeVar("Schema", bound=BaseModel)


@overload
def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> RunConfig: ...
@overload
def load_config(path: str | Path | None, overrides: Sequence[str], schema: type[Schema]) -> Schema: ...
def load_config(
    path: str | Path | None, overrides: Sequence[str] = (), schema: type[BaseModel] = RunConfig
) -> BaseModel:
    """Read a YAML config, apply ``key=value`` overrides and validate it.

    Args:
        path: a YAML file, or ``None`` for the schema's defaults.
        overrides: ``dotted.key=value`` strings; values are parsed as YAML (``0.05``, ``true``,
            ``[40, 40]``).
        schema: the pydantic model to validate against.

    Returns:
        A validated, frozen ``schema`` instance.

    Raises:
        UserError: unreadable file, invalid YAML, unknown key, wrong type or out-of-range value.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise UserError(f"config file {source!r} does not exist or is not a file")
        try:
            loaded = yaml.safe_load(p.read_text())
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"cannot read config file {source!r}: {exc}") from None
        except yaml.YAMLError as exc:
            raise UserError(f"config file {source!r} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise UserError(
                f"config file {source!r} must hold a mapping of settings, got {type(loaded).__name__}"
            )
        raw = loaded or {}
    return load_config_dict(raw, overrides, schema, source)


@overload
def load_config_dict(raw: Mapping[str, Any], overrides: Sequence[str] = ()) -> RunConfig: ...
@overload
def load_config_dict(
    raw: Mapping[str, Any], overrides: Sequence[str], schema: type[Schema], source: str = "dict"
) -> Schema: ...
def load_config_dict(
    raw: Mapping[str, Any],
    overrides: Sequence[str] = (),
    schema: type[BaseModel] = RunConfig,
    source: str = "dict",
) -> BaseModel:
    """Validate an already-parsed config (e.g. one saved in a checkpoint), with overrides.

    Raises:
        UserError: unknown key, wrong type or out-of-range value.
    """
    tree = copy.deepcopy(dict(raw))
    for item in overrides:
        _apply_override(tree, item, schema)
    try:
        return schema.model_validate(tree)
    except ValidationError as exc:
        raise UserError(format_validation_error(exc, schema, source)) from None


class _KeyError(ValueError):
    """A dotted name that is not a field of the schema (the message says why)."""


def resolve_key(schema: type[BaseModel], dotted: str | Sequence[str]) -> list[FieldInfo]:
    """The fields a dotted name walks through, from the schema down to the leaf.

    The one walk over dotted names: ``--set`` overrides, search spaces and error messages use it.

    Raises:
        _KeyError: an unknown key (with the closest valid one), or a key below a plain value.
    """
    parts = dotted.split(".") if isinstance(dotted, str) else list(dotted)
    model: type[BaseModel] | None = schema
    walked: list[FieldInfo] = []
    for depth, part in enumerate(parts):
        if model is None:
            raise _KeyError(f"{'.'.join(parts[:depth])} is a value, not a section")
        if part not in model.model_fields:
            raise _KeyError(_unknown_key(part, model, parts[:depth]))
        info = model.model_fields[part]
        walked.append(info)
        model = _section(info)
    return walked


def _section(info: FieldInfo) -> type[BaseModel] | None:
    annotation = info.annotation
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set ``tree[a][b][c] = value`` for ``dotted = "a.b.c"``, creating sections on the way.

    Raises:
        _KeyError: a part of the path that holds a value, not a section.
    """
    *parents, leaf = dotted.split(".")
    node = tree
    for part in parents:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise _KeyError(f"{part!r} in the config file is not a section")
        node = child
    node[leaf] = value


def _apply_override(tree: dict[str, Any], item: str, schema: type[BaseModel]) -> None:
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise UserError(f"--set expects key=value (e.g. train.inner_lr=0.05), got {item!r}")
    key = key.strip()
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    try:
        resolve_key(schema, key)
        set_dotted(tree, key, value)
    except _KeyError as exc:
        raise UserError(f"--set {key}: {exc}") from None


def _unknown_key(key: str, model: type[BaseModel], section: Sequence[str]) -> str:
    where = f"in section '{'.'.join(section)}'" if section else "at the top level"
    message = f"unknown key {key!r} {where}"
    close = difflib.get_close_matches(key, list(model.model_fields), n=1)
    if close:
        message += f"; did you mean {close[0]!r}?"
    return message + f" (valid keys: {', '.join(model.model_fields)})"


def format_validation_error(exc: ValidationError, schema: type[BaseModel], source: str) -> str:
    """Turn pydantic's errors into one readable message, one line per problem."""
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        loc = tuple(str(p) for p in err["loc"])
        dotted = ".".join(loc)
        if err["type"] == "extra_forbidden":
            lines.append(f"  {dotted}: {_extra_key(schema, loc)}")
            continue
        message = str(err["msg"]).removeprefix("Value error, ")
        if loc:
            given = err.get("input")
            shown = "" if isinstance(given, dict) else f" (got {given!r})"
            lines.append(f"  {dotted}: {message}{shown}")
        else:
            lines.append(f"  {message}")
    return "\n".join(lines)


def _extra_key(schema: type[BaseModel], loc: tuple[str, ...]) -> str:
    """Why a key is not allowed: with the closest valid name where its section is a schema."""
    try:
        resolve_key(schema, loc[:-1])
    except _KeyError:  # below a dict of sections (the search space): no names to suggest
        return f"unknown key {loc[-1]!r}"
    try:
        resolve_key(schema, loc)
    except _KeyError as unknown:
        return str(unknown)
    return f"unknown key {loc[-1]!r}"


def to_yaml(config: BaseModel, redacted: bool = True) -> str:
    """The config as YAML, every default spelled out (saved beside each run), with any login in
    a URI masked unless ``redacted`` is false (the config a submitted job runs)."""
    text = yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
    return redact(text) if redacted else text


# --------------------------------------------------------------------------------------------
# Sweeps: metasweep sweep CONFIG.yaml
# --------------------------------------------------------------------------------------------


class ParamSpec(_Section):
    """The distribution of one searched field."""

    type: Literal["loguniform", "uniform", "int", "categorical"] = Field(
        description="loguniform / uniform (floats), int (integers), categorical (listed values)"
    )
    low: float | None = Field(None, description="lower bound (numeric types)")
    high: float | None = Field(None, description="upper bound, inclusive (numeric types)")
    values: tuple[Any, ...] | None = Field(None, description="the choices (categorical)")

    @model_validator(mode="after")
    def _bounds(self) -> ParamSpec:
        if self.type == "categorical":
            if not self.values:
                raise ValueError("categorical needs a non-empty 'values' list")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"{self.type} needs 'low' and 'high'")
        if self.low >= self.high:
            raise ValueError(f"low must be below high, got low={self.low}, high={self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"loguniform needs low > 0, got {self.low}")
        if self.type == "int" and (self.low != int(self.low) or self.high != int(self.high)):
            raise ValueError(f"int bounds must be whole numbers, got {self.low}, {self.high}")
        return self


def _database_url(url: str | None) -> str | None:
    if url is not None and uri_scheme(url) not in ("sqlite", "postgresql", "mysql"):
        raise ValueError(f"{redact(url)} is not a database URL (sqlite:///..., postgresql://...)")
    return url


class WarmStartConfig(_Section):
    """Earlier sweeps a new sweep starts from: their best settings first, their trials for the sampler."""

    sweep: tuple[str, ...] = Field(
        (), description="the earlier sweep, or a list of them, by name (default: none, a cold start)"
    )
    top: int = Field(
        3, ge=0, description="the earlier sweeps' best settings to evaluate first, before sampling"
    )
    study_storage: str | None = Field(
        None,
        description="Optuna storage URL of their studies (default: where each kept its study, as "
        "for search.study_storage)",
    )

    @field_validator("sweep", mode="before")
    @classmethod
    def _names(cls, value: object) -> tuple[str, ...]:
        names = list(value) if isinstance(value, list | tuple) else [value]
        return tuple(check_name(name, "search.warm_start.sweep") for name in names)

    @field_validator("study_storage")
    @classmethod
    def _rdb_url(cls, url: str | None) -> str | None:
        return _database_url(url)


COSTS = ("cost/adapt_ms", "cost/inner_steps")
"""What every evaluation reports besides the scores: the milliseconds a trained model takes to
adapt to one new task (a support set of the configured shape, on the run's device), and the inner
steps it takes (0 for a learner without an inner loop)."""


def reported_metrics(task_kind: str) -> tuple[str, ...]:
    """The metrics every evaluation of a ``task_kind`` run reports: what a sweep can optimise or
    constrain."""
    score = "accuracy" if task_kind == "classification" else "mse"
    return (f"val/{score}", f"val/{score}_ci95", "val/loss", "train/loss", *COSTS)


class Objective(_Section):
    """One objective of a multi-objective sweep."""

    metric: str = Field(
        description="a metric each evaluation reports: val/accuracy (or val/mse), val/loss, "
        "train/loss, cost/adapt_ms, cost/inner_steps"
    )
    mode: Literal["min", "max"] | None = Field(
        None,
        description="min or max: the metric's own direction, max for accuracy, min for losses and "
        "costs (the default; the opposite is refused)",
    )


class Bound(_Section):
    """Limits a metric of the champion must keep to."""

    min: float | None = Field(None, description="the lowest value allowed")
    max: float | None = Field(None, description="the highest value allowed")

    @model_validator(mode="after")
    def _a_bound(self) -> Bound:
        if self.min is None and self.max is None:
            raise ValueError("a constraint needs min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min={self.min:g} is above max={self.max:g}")
        return self

    def holds(self, value: float) -> bool:
        """Whether ``value`` keeps to the bounds (a NaN never does)."""
        return (self.min is None or value >= self.min) and (self.max is None or value <= self.max)

    def text(self, metric: str) -> str:
        """The bounds in words, e.g. ``cost/adapt_ms <= 5``."""
        parts = [f"{metric} >= {self.min:g}"] if self.min is not None else []
        return " and ".join([*parts, *([f"{metric} <= {self.max:g}"] if self.max is not None else [])])


class SearchConfig(_Section):
    """What to search and how: Optuna sampler, Tune scheduler, resources."""

    space: dict[str, ParamSpec] = Field(
        default_factory=dict, description="searched fields by dotted name, e.g. train.inner_lr"
    )
    sampler: Literal["tpe", "random", "cmaes", "gp", "qmc", "nsga2"] = Field(
        "tpe",
        description="Optuna sampler: multivariate TPE (multi-objective TPE with search.objectives), "
        "random, CMA-ES (one objective only), Gaussian process, QMC or NSGA-II",
    )
    num_samples: int = Field(8, ge=1, description="trials to run")
    max_concurrent: int = Field(2, ge=1, description="trials running at once")
    constant_liar: bool = Field(
        True,
        description="TPE: count running trials as the worst result so far, so that concurrent "
        "trials spread out instead of sampling the same region (benchmarks/parallel_sampling.py)",
    )
    startup_trials: int | None = Field(
        None,
        ge=1,
        description="tpe and gp: trials sampled at random before the model takes over (default: "
        "Optuna's 10, so that a sweep of 20 trials is half random search: docs/results.md)",
    )
    initial_points: tuple[dict[str, Any], ...] = Field(
        (), description="settings to evaluate first (e.g. the paper's), by dotted name"
    )
    warm_start: WarmStartConfig = Field(WarmStartConfig(), description="earlier sweeps to start from")
    scheduler: Literal["asha", "fifo"] = Field("asha", description="early stopping: asha, or fifo for none")
    grace_period: int = Field(
        1000, ge=1, description="meta-iterations every trial runs before ASHA may stop it"
    )
    reduction_factor: float = Field(2.0, gt=1, description="ASHA keeps 1/reduction_factor per rung")
    metric: str | None = Field(None, description="metric to optimise (default val/accuracy or val/mse)")
    objectives: tuple[Objective, ...] = Field(
        (),
        description="two or more {metric, mode} to optimise at once, instead of search.metric: "
        "a Pareto front, early stopping by MOASHA (docs/sweeps.md); the first also picks the champion",
    )
    time_budget_s: float | None = Field(None, gt=0, description="stop launching trials after this long")
    cpus_per_trial: float = Field(
        1.0, gt=0, description="CPUs reserved per trial, shared equally by its workers"
    )
    gpus_per_trial: float = Field(
        0.0, ge=0, description="GPUs per trial, shared equally by its workers; fractions share one GPU"
    )
    workers_per_trial: int = Field(
        1,
        ge=1,
        description="data-parallel workers of each trial (a Ray Train run inside the trial; "
        "docs/scaling.md); meta_batch_size must split evenly over them",
    )
    max_failures: int = Field(2, ge=0, description="restarts of a failed trial from its checkpoint")
    progress_every_s: float = Field(
        15.0,
        gt=0,
        description="seconds between a trial's progress reports while it trains between evaluations",
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, description="seed of the Optuna sampler")
    study_storage: str | None = Field(
        None,
        description="Optuna storage URL of the sweep's study (sqlite:///..., postgresql://...); "
        "default: the PostgreSQL tracking store's database (schema optuna), else optuna.db in the "
        "sweep's folder",
    )

    @field_validator("study_storage")
    @classmethod
    def _rdb_url(cls, url: str | None) -> str | None:
        return _database_url(url)

    @model_validator(mode="after")
    def _startup_of_a_model(self) -> SearchConfig:
        if self.startup_trials is not None and self.sampler not in ("tpe", "gp"):
            raise ValueError(
                f"startup_trials applies to the tpe and gp samplers, not sampler={self.sampler}; drop it"
            )
        return self

    @model_validator(mode="after")
    def _several_objectives(self) -> SearchConfig:
        if not self.objectives:
            return self
        metrics = [o.metric for o in self.objectives]
        if len(metrics) == 1:
            raise ValueError(
                f"objectives has one objective ({metrics[0]}); give two or more, or set metric for one"
            )
        if len(set(metrics)) < len(metrics):
            twice = next(m for i, m in enumerate(metrics) if m in metrics[:i])
            modes = sorted({o.mode for o in self.objectives if o.metric == twice and o.mode})
            conflict = (
                f", as {' and '.join(modes)}: a metric is minimised or maximised" if len(modes) > 1 else ""
            )
            raise ValueError(f"objectives names {twice} twice{conflict}")
        if self.metric is not None:
            raise ValueError(
                f"metric={self.metric} and objectives both set; the objectives' first is the "
                "one that picks the champion, so drop metric"
            )
        if self.sampler == "cmaes":
            raise ValueError(
                "sampler=cmaes optimises one objective; with objectives use tpe "
                "(multi-objective TPE), nsga2, gp, random or qmc"
            )
        return self

    @property
    def cpus_per_worker(self) -> float:
        """CPUs of each of a trial's workers: its share of ``cpus_per_trial``."""
        return self.cpus_per_trial / self.workers_per_trial

    @property
    def gpus_per_worker(self) -> float:
        """GPUs of each of a trial's workers: its share of ``gpus_per_trial``."""
        return self.gpus_per_trial / self.workers_per_trial


class TrackingConfig(_Section):
    """Where MLflow records the sweep."""

    uri: str | None = Field(
        None, description="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    experiment: str = Field("metasweep", description="MLflow experiment of the sweep")
    registered_model: str | None = Field(
        None, description="registry name for the best model (letters, digits, ._-)"
    )

    champion_constraints: dict[str, Bound] = Field(
        default_factory=dict,
        description="limits the champion must keep to at its last evaluation, by objective, e.g. "
        "{cost/adapt_ms: {max: 5}}; among the trials that keep them it is the best on the "
        "objective (with search.objectives: on the first, among those on the Pareto front)",
    )

    @field_validator("registered_model", mode="before")
    @classmethod
    def _valid_model_name(cls, value: object) -> str | None:
        return None if value is None else check_name(value, "tracking.registered_model")


class SweepConfig(RunConfig):
    """A sweep: a run config plus a search space and a tracking destination."""

    search: SearchConfig = Field(SearchConfig(), description="the search space and searcher")
    tracking: TrackingConfig = Field(TrackingConfig(), description="MLflow tracking")

    @model_validator(mode="after")
    def _space_fits_the_run(self) -> SweepConfig:
        algorithms = self.algorithms
        for key, spec in self.search.space.items():
            _check_space_key(key, spec)
            if not any(applies(key, algorithm) for algorithm in algorithms):
                capabilities = learner_class(self.algorithm).capabilities
                raise ValueError(
                    f"search.space.{key}: {self.algorithm} {_why(capabilities)}; drop it from the space"
                )
        for i, point in enumerate(self.search.initial_points):
            unknown = sorted(set(point) - set(self.search.space))
            if unknown:
                raise ValueError(f"search.initial_points: {', '.join(unknown)} not in search.space")
            try:
                self.run_config(point)
            except (ValidationError, ValueError, TypeError) as exc:
                first = exc.errors()[0] if isinstance(exc, ValidationError) else {"msg": str(exc), "loc": ()}
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(
                    f"search.initial_points[{i}] {point} gives an invalid run"
                    f"{f' ({where})' if where else ''}: {_message(first)}"
                ) from None
        # Every value the space can produce must make a valid run config.
        for key, spec in self.search.space.items():
            for algorithm in (a for a in algorithms if applies(key, a)):
                for value in _corners(spec):
                    params = {key: value} if key == "algorithm" else {"algorithm": algorithm, key: value}
                    try:
                        self.run_config(params)
                    except ValidationError as exc:
                        first = exc.errors()[0]
                        raise ValueError(
                            f"search.space.{key}: value {value!r} gives an invalid run: {_message(first)}"
                        ) from None
        chunk, batch = self.train.memory.task_chunk, self.search.space.get("train.meta_batch_size")
        workers = self.search.workers_per_trial
        if batch is not None:  # between the corners too
            sizes = batch.values or range(int(batch.low or 1), int(batch.high or 1) + 1)
            multiple, why = workers, f"search.workers_per_trial={workers}"
            if isinstance(chunk, int):
                multiple, why = workers * chunk, f"train.memory.task_chunk={chunk}"
                if workers > 1:
                    why = f"{why} for each of search.workers_per_trial={workers}"
            uneven = [size for size in sizes if isinstance(size, int) and size % multiple]
            if uneven:
                raise ValueError(
                    f"search.space.train.meta_batch_size: {uneven[0]} is not a multiple of {multiple} "
                    f"({why}); search multiples of it"
                    + (", or use task_chunk: auto" if isinstance(chunk, int) else "")
                )
        return self

    @model_validator(mode="after")
    def _known_metrics(self) -> SweepConfig:
        known = reported_metrics(self.task_kind)
        named = [(f"search.objectives[{i}].metric", o.metric) for i, o in enumerate(self.search.objectives)]
        named += [(f"tracking.champion_constraints.{m}", m) for m in self.tracking.champion_constraints]
        if self.search.metric is not None:
            named.insert(0, ("search.metric", self.search.metric))
        for where, metric in named:
            if metric not in known:
                close = difflib.get_close_matches(str(metric), known, n=1)
                hint = f"did you mean {close[0]}? " if close else ""
                raise ValueError(
                    f"{where}: {metric} is not a metric a {self.task_kind} run reports; {hint}"
                    f"one of {', '.join(known)}"
                )
        for i, objective in enumerate(self.search.objectives):
            own = own_direction(objective.metric)
            if objective.mode is not None and own is not None and objective.mode != own:
                raise ValueError(
                    f"search.objectives[{i}].mode={objective.mode} would "
                    f"{'maximise' if objective.mode == 'max' else 'minimise'} {objective.metric}, "
                    f"which a better meta-learner {'raises' if own == 'max' else 'lowers'}; "
                    f"drop mode ({objective.metric} is {own}imised)"
                )
        # A limit on a metric the search does not weigh would pick off the front it built.
        optimised = self.objective_metrics
        for metric in self.tracking.champion_constraints:
            if metric not in optimised:
                raise ValueError(
                    f"tracking.champion_constraints.{metric}: {metric} is not an objective of this "
                    f"sweep ({', '.join(optimised)}); constrain an objective, or add {metric} to "
                    "search.objectives"
                )
        return self

    @model_validator(mode="after")
    def _workers_of_a_trial(self) -> SweepConfig:
        s = self.search
        if self.train.workers != 1:
            raise ValueError(
                f"train.workers={self.train.workers}: a sweep's trials take search.workers_per_trial "
                "(train.workers is metasweep train's)"
            )
        per_worker = s.gpus_per_worker
        if s.workers_per_trial > 1 and s.gpus_per_trial and per_worker != int(per_worker):
            raise ValueError(
                f"search.gpus_per_trial={s.gpus_per_trial:g} gives each of {s.workers_per_trial} "
                f"workers {per_worker:g} GPUs; a trial of several workers needs whole GPUs per worker "
                f"(NCCL runs one rank per GPU): use a multiple of {s.workers_per_trial}"
            )
        if "train.meta_batch_size" not in s.space:  # else the space's check says it
            try:
                self.run_config({})
            except ValidationError as exc:
                raise ValueError(
                    f"search.workers_per_trial={s.workers_per_trial}: {_message(exc.errors()[0])}"
                ) from None
        return self

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The algorithms the sweep's trials may use: the searched ones, or the config's."""
        spec = self.search.space.get("algorithm")
        return tuple(spec.values or ()) if spec is not None else (self.algorithm,)

    def run_config(self, params: Mapping[str, Any]) -> RunConfig:
        """The run config of one trial: this config with ``params`` (dotted names) applied, and
        the fields its algorithm does not use at their defaults.

        Raises:
            ValidationError: ``params`` make an invalid run.
        """
        tree = self.model_dump(mode="json", exclude={"search", "tracking"})
        tree["train"]["workers"] = self.search.workers_per_trial
        for key, value in params.items():
            set_dotted(tree, key, value)
        defaults = RunConfig.model_construct()
        for name in fields_that_do_not_apply(learner_class(str(tree["algorithm"])).capabilities):
            set_dotted(tree, name, _get(defaults, name))
        return RunConfig.model_validate(tree)

    def objective(self, problem: Problem) -> tuple[str, Mode]:
        """``(metric, mode)`` the sweep optimises: ``search.metric``, else the problem's own
        validation score; with ``search.objectives``, their first."""
        return self.objectives(problem)[0]

    def objectives(self, problem: Problem) -> tuple[tuple[str, Mode], ...]:
        """Every ``(metric, mode)`` the sweep optimises: ``search.objectives``, or the one
        objective (:meth:`objective`)."""
        modes = [o.mode for o in self.search.objectives] or [None]
        return tuple(
            (metric, mode or mode_of(metric, problem))
            for metric, mode in zip(self.objective_metrics, modes, strict=True)
        )

    @property
    def objective_metrics(self) -> tuple[str, ...]:
        """The metrics the sweep optimises, in order: ``search.objectives``', else
        ``search.metric``, else the task's validation score (``val/accuracy`` or ``val/mse``)."""
        if self.search.objectives:
            return tuple(o.metric for o in self.search.objectives)
        return (self.search.metric or reported_metrics(self.task_kind)[0],)

    @property
    def multi_objective(self) -> bool:
        """Whether the sweep optimises two or more objectives at once."""
        return bool(self.search.objectives)


def _message(error: Mapping[str, Any]) -> str:
    return str(error["msg"]).removeprefix("Value error, ")


def applies(key: str, algorithm: str) -> bool:
    """Whether a searched field means something to ``algorithm`` (a sweep samples it only then)."""
    if algorithm not in ALGORITHMS:
        return False
    return key not in fields_that_do_not_apply(learner_class(algorithm).capabilities)


def _corners(spec: ParamSpec) -> list[Any]:
    if spec.type == "categorical":
        return list(spec.values or ())
    assert spec.low is not None and spec.high is not None
    if spec.type == "int":
        return [int(spec.low), int(spec.high)]
    return [spec.low, spec.high]


def _check_space_key(key: str, spec: ParamSpec) -> None:
    try:
        annotation = resolve_key(RunConfig, key)[-1].annotation
    except _KeyError as exc:
        raise ValueError(f"search.space: {exc}") from None
    if spec.type in ("loguniform", "uniform") and annotation is not float:
        raise ValueError(
            f"search.space.{key}: {spec.type} draws floats but {key} is {_type_name(annotation)}"
        )
    if spec.type == "int" and annotation is not int:
        raise ValueError(f"search.space.{key}: int draws integers but {key} is {_type_name(annotation)}")


def _type_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", str(annotation))


# --------------------------------------------------------------------------------------------
# The generated reference: docs/config.md
# --------------------------------------------------------------------------------------------


def reference() -> str:
    """The config reference in Markdown, one table per section, from the schema's descriptions
    (``make docs`` writes it to docs/config.md; a test checks that file is up to date)."""
    lines = [
        "# Configuration reference",
        "",
        "Generated from the schema in `orchestrator/config.py` by `make docs`; do not edit by hand.",
        "A YAML file and `--set key=value` fill these fields in; unknown keys are refused with the",
        "closest valid name. `metasweep train` takes the run sections, `metasweep sweep` and",
        "`metasweep submit` also `search` and `tracking`.",
        "",
    ]
    for title, model, prefix in _sections():
        lines += [f"## {title}", "", (model.__doc__ or "").strip().splitlines()[0], ""]
        lines += ["| field | type | default | description |", "| --- | --- | --- | --- |"]
        for name, info in model.model_fields.items():
            if _section(info) is not None:
                continue
            lines.append(
                f"| `{prefix}{name}` | {_type_text(info.annotation)} | {_default_text(info)} | "
                f"{info.description or ''}{_only_for(prefix + name)} |"
            )
        lines.append("")
    return "\n".join(lines)


def _sections() -> list[tuple[str, type[BaseModel], str]]:
    sections: list[tuple[str, type[BaseModel], str]] = [("Top level", SweepConfig, "")]
    for name, info in SweepConfig.model_fields.items():
        section = _section(info)
        if section is not None:
            sections.append((f"`{name}`", section, f"{name}."))
            for inner, inner_info in section.model_fields.items():
                nested = _section(inner_info)
                if nested is not None:
                    sections.append((f"`{name}.{inner}`", nested, f"{name}.{inner}."))
    sections.append(("`search.space.<field>`", ParamSpec, ""))
    return sections


_ONLY_FOR = {
    "inner_loop": "learners with an inner loop",
    "second_order": "learners that take second-order terms",
}


def _only_for(dotted: str) -> str:
    for capability, names in CAPABILITY_FIELDS.items():
        if dotted in names:
            return f" (only {_ONLY_FOR[capability]}; refused for others when set)"
    return ""


def _type_text(annotation: Any) -> str:
    text = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    text = re.sub(r"\b(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)  # no module paths
    return f"`{text}`".replace("|", "\\|")


def _default_text(info: FieldInfo) -> str:
    if info.is_required():
        return "required"
    value = info.get_default(call_default_factory=True)
    return f"`{json.dumps(value)}`" if not isinstance(value, BaseModel) else ""


if __name__ == "__main__":
    print(reference())
