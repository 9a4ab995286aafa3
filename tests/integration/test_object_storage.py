"""Datasets on S3-compatible object storage: a real moto server on 127.0.0.1, real pyarrow S3."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch

from metasweep.orchestrator.data import importers
from metasweep.orchestrator.data.format import load_dataset
from metasweep.orchestrator.data.sampler import EpisodeSampler
from metasweep.orchestrator.data.storage import (
    delete_folder,
    filesystem,
    folder_listing,
    read_bytes,
    rename_folder,
)
from metasweep.orchestrator.errors import UserError
from tests.refusals import assert_refused

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3_endpoint(free_port, wait_for_port) -> Iterator[str]:
    """Start moto's S3 server on 127.0.0.1 and make a bucket through pyarrow itself."""
    port = free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    wait_for_port(port, server, "moto server", timeout=30)
    endpoint = f"127.0.0.1:{port}"
    fs = pafs.S3FileSystem(
        access_key="testing", secret_key="testing", endpoint_override=endpoint, scheme="http",
        allow_bucket_creation=True, region="us-east-1",
    )  # fmt: skip
    fs.create_dir("episodes")
    yield endpoint
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture
def s3_env(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://{s3_endpoint}")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return s3_endpoint


def test_s3_round_trip(make_folder, run_cli, tmp_path: Path, s3_env: str) -> None:
    root = make_folder(tmp_path / "p", classes=8, per_class=4, size=8)
    local = tmp_path / "d.parquet"
    importers.import_image_folder(root, str(local), seed=1)
    importers.import_image_folder(root, "s3://episodes/d.parquet", seed=1)

    remote = load_dataset("s3://episodes/d.parquet")
    here = load_dataset(str(local))
    assert remote.metadata == here.metadata
    assert remote.class_names == here.class_names
    assert (remote.pixels == here.pixels).all()
    a = EpisodeSampler(remote, "train", 3, 1, 2).sample(4, torch.Generator().manual_seed(0))
    b = EpisodeSampler(here, "train", 3, 1, 2).sample(4, torch.Generator().manual_seed(0))
    assert torch.equal(a.support_x, b.support_x)

    # The CLI reads it too, with the endpoint from the environment as a user would set it.
    info = run_cli("data", "info", "s3://episodes/d.parquet")
    assert info.returncode == 0, info.stderr
    assert "fixed_size_binary[64]" in info.stdout


def test_s3_missing_object_and_unreachable_endpoint(
    free_port, run_cli, s3_env: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("s3://episodes/absent.parquet")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    started = time.time()
    result = run_cli("data", "info", "s3://episodes/d.parquet", timeout=120)
    assert_refused(result)
    assert time.time() - started < 60


def test_s3_wrong_bucket_is_a_clear_error(run_cli, s3_env: str) -> None:
    result = run_cli("data", "info", "s3://no-such-bucket/d.parquet")
    assert_refused(result)


def test_s3_unauthorized_is_a_clear_error(
    free_port, run_cli, wait_for_port, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server that enforces credentials (moto with IAM authentication on) refuses unknown keys."""
    port = free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "0"}
    server = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )  # fmt: skip
    try:
        wait_for_port(port, server, "moto server", timeout=30)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-a-secret")
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
        result = run_cli("data", "info", "s3://episodes/d.parquet")
        assert_refused(result, "ACCESS_DENIED")
    finally:
        server.terminate()
        server.wait(timeout=10)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_folder_is_listed_read_and_renamed_with_every_file(where: str, tmp_path: Path, request) -> None:
    """What healing a resumed sweep's checkpoints does to its trial folders (orchestrator.sweep.
    checkpoints), on a local disk and on object storage, which has no folders to rename; what
    cannot be read is a UserError."""
    root = str(tmp_path) if where == "local" else f"s3://episodes/{request.node.name.replace('[', '-')[:-1]}"
    if where == "s3":
        request.getfixturevalue("s3_env")
    fs, path = filesystem(f"{root}/trial/checkpoint_000002")
    fs.create_dir(f"{path}/inner")
    for name, data in (("state.pt", b"weights"), ("inner/step.json", b"3")):
        with fs.open_output_stream(f"{path}/{name}") as out:
            out.write(data)
    assert folder_listing(f"{root}/trial") == {"checkpoint_000002": True}
    assert folder_listing(f"{root}/missing") == {}
    rename_folder(f"{root}/trial/checkpoint_000002", f"{root}/trial/checkpoint_000001")
    assert folder_listing(f"{root}/trial") == {"checkpoint_000001": True}
    assert folder_listing(f"{root}/trial/checkpoint_000001") == {"state.pt": False, "inner": True}
    assert read_bytes(f"{root}/trial/checkpoint_000001/inner/step.json") == b"3"
    assert read_bytes(f"{root}/trial/checkpoint_000001/state.pt") == b"weights"
    delete_folder(f"{root}/trial/checkpoint_000001")
    assert folder_listing(f"{root}/trial") == {}
    with pytest.raises(UserError, match=r"cannot read .*/trial/checkpoint_000001/state.pt"):
        read_bytes(f"{root}/trial/checkpoint_000001/state.pt")
