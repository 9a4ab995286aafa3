"""ResNet-12 from the config to a trained, served model: on RGB images imported from a folder,
under a learner with a head (MAML) and one without (ProtoNet), refused on images it cannot pool,
and read back from model specs saved before it existed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from metasweep.algorithms import ResNet12
from metasweep.orchestrator import training
from metasweep.orchestrator.config import load_config_dict
from metasweep.orchestrator.data.importers import import_image_folder
from metasweep.orchestrator.learner import LearnerSpec, build_learner
from tests.refusals import assert_refused


def run_config(algorithm: str, dataset: str):
    settings = {
        "name": algorithm,
        "algorithm": algorithm,
        "model": {"name": "resnet12", "widths": [4, 4, 6, 8]},
        "data": {"dataset": dataset, "ways": 3, "shots": 1, "queries": 2},
        "train": {"iterations": 4, "meta_batch_size": 2, "eval_every": 4},
        "eval": {"val_tasks": 4, "test_tasks": 4, "batch_size": 4},
        "device": "cpu",
    }
    if algorithm != "protonet":
        settings["train"] |= {"inner_steps": 1, "inner_lr": 0.1}
        settings["eval"] |= {"inner_steps": 1}
    return load_config_dict(settings, [])


@pytest.mark.parametrize("algorithm", ["maml", "protonet"])
def test_resnet12_trains_on_rgb_images_and_its_model_rebuilds_from_the_spec(
    algorithm: str, make_folder
) -> None:
    import_image_folder(
        make_folder(Path("rgb"), classes=20, per_class=4, size=16, mode="RGB"), "rgb.parquet", mode="RGB"
    )
    config = run_config(algorithm, "rgb.parquet")
    inputs = training.prepare(config)
    assert inputs.problem.input_shape == (3, 16, 16)
    metrics = training.train(config, inputs)
    assert 0 <= metrics["test/accuracy"] <= 1 and metrics["train/loss"] > 0
    rebuilt = build_learner(LearnerSpec.from_json(config.learner_spec().to_json()), inputs.problem)
    assert isinstance(rebuilt.model, ResNet12)
    saved = torch.load(config.run_dir / training.CHECKPOINT, weights_only=True)["learner"]
    rebuilt.load_state_dict(saved)  # the same architecture, parameter for parameter


def test_a_spec_saved_before_resnet12_reads_back_with_the_default_widths() -> None:
    old = run_config("maml", "any.parquet").learner_spec().to_json()
    del old["widths"]
    assert LearnerSpec.from_json(old).widths == (64, 160, 320, 640)


def test_resnet12_on_images_it_cannot_pool_exits_2(make_folder, cli) -> None:
    import_image_folder(
        make_folder(Path("tiny"), classes=12, per_class=4, size=12, mode="RGB"), "tiny.parquet", mode="RGB"
    )
    settings = "model: {name: resnet12}\ndata: {dataset: tiny.parquet, ways: 3, shots: 1}\n"
    Path("run.yaml").write_text(settings)
    Path("sweep.yaml").write_text(
        settings + "search: {space: {train.inner_lr: {type: loguniform, low: 0.01, high: 1}}}\n"
    )
    # A sweep is refused before any trial, or its Ray, starts.
    for command in (("train", "run.yaml", "--no-progress"), ("sweep", "sweep.yaml")):
        result = cli(*command)
        assert_refused(
            result,
            "model.name=resnet12 cannot take inputs of shape (3, 12, 12)",
            "too small for four 2x2 poolings",
        )
        assert not Path("runs").exists() and not Path("mlflow.db").exists()
