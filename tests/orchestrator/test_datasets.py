"""Parquet episodic datasets: importers, determinism, sampling invariants and bad input."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from metasweep.orchestrator.data import format, importers
from metasweep.orchestrator.data.format import load_dataset, read_metadata
from metasweep.orchestrator.data.sampler import EpisodeSampler
from metasweep.orchestrator.errors import UserError


def make_npz(path: Path, characters: int = 12, drawings: int = 20, size: int = 105) -> Path:
    rng = np.random.default_rng(1)
    images = rng.random((characters, drawings, size, size)) > 0.1
    labels = np.repeat(np.arange(characters)[:, None], drawings, axis=1)
    np.savez(path, images=images, labels=labels)
    return path


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- importers --------------------------------------------------------------------------------


def test_image_folder_import_schema_and_metadata(make_folder, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "photos", classes=10, per_class=4)
    out = tmp_path / "d.parquet"
    meta = importers.import_image_folder(root, str(out), ratios=(0.6, 0.2, 0.2))
    assert meta["classes"] == {"train": 6, "val": 2, "test": 2}
    assert meta["image_shape"] == [12, 12, 1]
    table = pq.read_table(out)
    assert table.schema.field("image").type == pa.binary(144)
    assert table.num_rows == 40
    assert set(table.column("split").to_pylist()) == {"train", "val", "test"}
    ds = load_dataset(str(out))
    # Pixels round-trip exactly: compare one image with its source file.
    row = table.column("class_name").to_pylist().index("class_03")
    expected = np.asarray(Image.open(root / "class_03" / "0.png"))
    np.testing.assert_array_equal(ds.pixels[row, :, :, 0], expected)


def test_image_folder_rgb_and_resize(make_folder, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "rgb", classes=4, per_class=3, size=20, mode="RGB")
    meta = importers.import_image_folder(
        root, str(tmp_path / "d.parquet"), image_size=8, mode="RGB", ratios=(0.5, 0.25, 0.25)
    )
    assert meta["image_shape"] == [8, 8, 3]


def test_explicit_class_lists(make_folder, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "p", classes=4, per_class=2)
    lists = {"train": {"class_00", "class_01"}, "val": {"class_02"}, "test": {"class_03"}}
    importers.import_image_folder(root, str(tmp_path / "d.parquet"), lists=lists)
    ds = load_dataset(str(tmp_path / "d.parquet"))
    assert {ds.class_names[i] for i in ds.classes_in("test")} == {"class_03"}
    with pytest.raises(UserError, match="exactly one split list"):
        importers.import_image_folder(root, str(tmp_path / "e.parquet"), lists={"train": {"class_00"}})


def test_import_is_byte_identical(make_folder, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "p")
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    importers.import_image_folder(root, str(a), seed=3)
    importers.import_image_folder(root, str(b), seed=3)
    assert sha(a) == sha(b)
    c = tmp_path / "c.parquet"
    importers.import_image_folder(root, str(c), seed=4)
    assert sha(a) != sha(c)


def test_npz_import_vinyals_and_lake(tmp_path: Path) -> None:
    bg = make_npz(tmp_path / "images_background.npz", characters=12)
    ev = make_npz(tmp_path / "images_evaluation.npz", characters=5)
    out = tmp_path / "v.parquet"
    meta = importers.import_omniglot([bg, ev], str(out), train_classes=12, val_classes=2)
    assert meta["classes"] == {"train": 10, "val": 2, "test": 5}
    assert meta["image_shape"] == [28, 28, 1]
    ds = load_dataset(str(out))
    assert "character0965" in ds.class_names  # evaluation ids start at 965
    lake = tmp_path / "l.parquet"
    importers.import_omniglot([bg, ev], str(lake), protocol="lake", val_classes=3)
    lds = load_dataset(str(lake))
    test_names = {lds.class_names[i] for i in lds.classes_in("test")}
    assert test_names == {f"character{965 + i:04d}" for i in range(5)}


def test_the_progress_bar_is_told_how_many_classes_are_coming(make_folder, tmp_path: Path) -> None:
    """Before the first class is decoded, from an npz's array header, a zip's directory or a
    folder's listing; each import hands its count to the bar with the stream."""
    bg, ev = make_npz(tmp_path / "images_background.npz", 12), make_npz(tmp_path / "images_evaluation.npz", 7)
    assert importers.omniglot_count([bg, ev]) == 19
    folder = tmp_path / "images_background"
    for alphabet, characters in (("Greek", 3), ("Latin", 2)):
        for c in range(characters):
            (folder / alphabet / f"character{c + 1:02d}").mkdir(parents=True)
            Image.new("L", (105, 105), 255).save(folder / alphabet / f"character{c + 1:02d}" / "0001_01.png")
    assert importers.omniglot_count([folder]) == 5
    archive = tmp_path / "images_background.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for png in sorted(folder.rglob("*.png")):
            z.write(png, png.relative_to(tmp_path).as_posix())
    assert importers.omniglot_count([archive, folder]) == 10  # a character found twice counts twice
    assert importers.omniglot_count([tmp_path / "missing.npz"]) is None

    told: list[int | None] = []

    def bar(classes, total):  # type: ignore[no-untyped-def]
        told.append(total)
        return classes

    importers.import_omniglot(
        [bg, ev], str(tmp_path / "o.parquet"), train_classes=12, val_classes=2, progress=bar
    )
    importers.import_image_folder(
        make_folder(tmp_path / "photos", classes=6), str(tmp_path / "f.parquet"), progress=bar
    )
    assert told == [19, 6]


def test_splits_never_share_a_class(tmp_path: Path) -> None:
    bg = make_npz(tmp_path / "images_background.npz", characters=30, drawings=2, size=28)
    out = tmp_path / "v.parquet"
    importers.import_omniglot([bg], str(out), train_classes=20, val_classes=5)
    table = pq.read_table(out)
    by_split: dict[str, set[str]] = {}
    for name, split in zip(
        table.column("class_name").to_pylist(), table.column("split").to_pylist(), strict=True
    ):
        by_split.setdefault(split, set()).add(name)
    assert sum(len(v) for v in by_split.values()) == 30
    assert not (by_split["train"] & by_split["val"] or by_split["train"] & by_split["test"])
    assert not by_split["val"] & by_split["test"]


@pytest.mark.data
def test_official_archive_matches_npz_pixels(omniglot, tmp_path: Path) -> None:
    """A character read from the official zip equals the same character in the npz."""
    first = next(importers.read_omniglot_archive(omniglot / "images_background_small1.zip", None))
    with zipfile.ZipFile(omniglot / "images_background_small1.zip") as z:
        prefix = f"images_background_small1/{first.name}/"
        name = next(n for n in sorted(z.namelist()) if n.startswith(prefix) and n.endswith(".png"))
    official_id = int(Path(name).name.split("_")[0])
    with np.load(omniglot / "images_background.npz") as npz:
        drawings = npz["images"][official_id - 1]
    np.testing.assert_array_equal(first.images[:, :, :, 0], drawings.astype(np.uint8) * 255)


@pytest.mark.data
def test_small_archives_import(omniglot, tmp_path: Path) -> None:
    sources = [omniglot / "images_background_small1.zip", omniglot / "images_background_small2.zip"]
    out = tmp_path / "small.parquet"
    meta = importers.import_omniglot(sources, str(out), train_classes=200, val_classes=30)
    # Greek and Latin are in both archives: 136 + 156 characters, 50 of them twice.
    assert sum(meta["classes"].values()) == 242
    assert meta["images_per_class"] == {"min": 20, "max": 20}
    assert read_metadata(str(out))[0]["invert"] is True
    again = tmp_path / "again.parquet"
    importers.import_omniglot(sources, str(again), train_classes=200, val_classes=30)
    assert sha(out) == sha(again)


# ---- sampling ----------------------------------------------------------------------------------


@pytest.fixture
def dataset(make_folder, tmp_path: Path) -> format.EpisodicDataset:
    root = make_folder(tmp_path / "p", classes=20, per_class=7, size=8)
    out = tmp_path / "d.parquet"
    importers.import_image_folder(root, str(out), ratios=(0.5, 0.25, 0.25))
    return load_dataset(str(out))


def test_episode_shapes_and_labels(dataset: format.EpisodicDataset) -> None:
    sampler = EpisodeSampler(dataset, "train", ways=5, shots=2, queries=3)
    ep = sampler.sample(4, torch.Generator().manual_seed(0))
    assert ep.support_x.shape == (4, 10, 1, 8, 8)
    assert ep.query_x.shape == (4, 15, 1, 8, 8)
    assert ep.support_x.dtype == torch.float32
    assert float(ep.support_x.min()) >= 0.0 and float(ep.support_x.max()) <= 1.0
    assert ep.support_y[0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    assert ep.query_y[0].tolist() == [i for i in range(5) for _ in range(3)]


def test_episode_invariants(dataset: format.EpisodicDataset) -> None:
    sampler = EpisodeSampler(dataset, "train", ways=5, shots=2, queries=4)
    rng = np.random.default_rng(0)
    idx = sampler.sample_indices(200, 4, rng)  # (tasks, ways, shots + queries)
    starts, counts = sampler._start, sampler._count
    for task in idx:
        classes = [int(np.searchsorted(starts, row[0], side="right") - 1) for row in task]
        assert len(set(classes)) == 5, "classes within an episode are distinct"
        for c, row in zip(classes, task, strict=True):
            assert len(set(row.tolist())) == 6, "support and query never share an image"
            assert np.all((row >= starts[c]) & (row < starts[c] + counts[c])), "images belong to their class"
    # Every class and every image is reachable.
    assert len(np.unique(idx)) == int(counts.sum())


def test_sampling_is_seeded(dataset: format.EpisodicDataset) -> None:
    sampler = EpisodeSampler(dataset, "train", ways=3, shots=1, queries=2)
    a = sampler.sample(8, torch.Generator().manual_seed(7))
    b = sampler.sample(8, torch.Generator().manual_seed(7))
    c = sampler.sample(8, torch.Generator().manual_seed(8))
    assert torch.equal(a.support_x, b.support_x) and torch.equal(a.query_x, b.query_x)
    assert not torch.equal(a.support_x, c.support_x)


def test_rotations_add_classes(dataset: format.EpisodicDataset) -> None:
    plain = EpisodeSampler(dataset, "train", ways=3, shots=1, queries=1)
    rotated = EpisodeSampler(dataset, "train", ways=3, shots=1, queries=1, rotations=True)
    assert rotated.num_classes == 4 * plain.num_classes
    image = rotated._images[rotated._start[plain.num_classes]]  # first class, rotated by 90 degrees
    np.testing.assert_array_equal(image, np.rot90(plain._images[0], 1, axes=(0, 1)))


def test_sampler_rejects_impossible_episodes(dataset: format.EpisodicDataset) -> None:
    with pytest.raises(UserError, match=r"ways=11 but split 'train' .* has only 10 classes"):
        EpisodeSampler(dataset, "train", ways=11, shots=1, queries=1)
    with pytest.raises(UserError, match="has only 7 images; lower shots or queries"):
        EpisodeSampler(dataset, "train", ways=2, shots=5, queries=3)


def test_samplers_read_the_pixels_of_the_dataset_they_are_given(dataset: format.EpisodicDataset) -> None:
    a = EpisodeSampler(dataset, "train", ways=2, shots=1, queries=1)
    b = EpisodeSampler(dataset, "train", ways=4, shots=2, queries=1)
    assert np.shares_memory(a._images, dataset.pixels)  # a view: no copy without rotations
    assert np.shares_memory(b._images, dataset.pixels)


def test_a_dataset_rewritten_at_the_same_path_serves_its_new_pixels(make_folder, tmp_path: Path) -> None:
    """Nothing caches a dataset by its location: reading the path again reads the new file, and
    a sampler serves the pixels of the dataset object it was given."""
    out = str(tmp_path / "d.parquet")
    first_folder = make_folder(tmp_path / "first", classes=6, per_class=4)
    importers.import_image_folder(first_folder, out, ratios=(1.0, 0.0, 0.0))
    old = load_dataset(out)
    old_episode = EpisodeSampler(old, "train", ways=3, shots=1, queries=1).sample_images(
        2, torch.Generator().manual_seed(0)
    )
    second_folder = tmp_path / "second"
    for image in first_folder.rglob("*.png"):  # the same classes and files, inverted pixels
        target = second_folder / image.relative_to(first_folder)
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(image))).save(target)
    importers.import_image_folder(second_folder, out, ratios=(1.0, 0.0, 0.0))
    new = load_dataset(out)
    new_episode = EpisodeSampler(new, "train", ways=3, shots=1, queries=1).sample_images(
        2, torch.Generator().manual_seed(0)
    )
    np.testing.assert_array_equal(new_episode.support_x, 255 - old_episode.support_x)
    again = EpisodeSampler(old, "train", ways=3, shots=1, queries=1).sample_images(
        2, torch.Generator().manual_seed(0)
    )
    np.testing.assert_array_equal(again.support_x, old_episode.support_x)


def test_raw_and_float_episodes_are_the_same_draw(dataset: format.EpisodicDataset) -> None:
    sampler = EpisodeSampler(dataset, "train", ways=3, shots=2, queries=1)
    raw = sampler.sample_images(4, torch.Generator().manual_seed(3))
    floats = sampler.sample(4, torch.Generator().manual_seed(3))
    expected = torch.from_numpy(raw.support_x).permute(0, 1, 4, 2, 3).float() / 255
    torch.testing.assert_close(floats.support_x, 1 - expected if sampler.invert else expected, atol=0, rtol=0)
    assert torch.equal(floats.query_y, torch.from_numpy(raw.query_y))
    assert raw.support_x.dtype == np.uint8 and raw.support_x.shape[:2] == (4, 6)


# ---- bad input ---------------------------------------------------------------------------------


def assert_nothing_left(folder: Path, keep: set[str]) -> None:
    assert {p.name for p in folder.iterdir()} == keep


def test_truncated_zip(tmp_path: Path) -> None:
    whole = tmp_path / "images_background.zip"
    with zipfile.ZipFile(whole, "w") as z:
        for j in range(3):
            z.writestr(f"images_background/Alpha/character01/0001_{j:02d}.png", b"x" * 500)
    (tmp_path / "cut.zip").write_bytes(whole.read_bytes()[:300])
    with pytest.raises(UserError, match="not a readable zip archive"):
        importers.import_omniglot([tmp_path / "cut.zip"], str(tmp_path / "o.parquet"))
    assert not (tmp_path / "o.parquet").exists()


def test_non_image_among_images(make_folder, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "p")
    (root / "class_02" / "notes.png").write_text("not an image")
    with pytest.raises(UserError, match=r"notes.png is not a readable image"):
        importers.import_image_folder(root, str(tmp_path / "o.parquet"))
    assert_nothing_left(tmp_path, {"p"})


def test_unreadable_npz(tmp_path: Path) -> None:
    bad = tmp_path / "images_background.npz"
    bad.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable Omniglot npz"):
        importers.import_omniglot([bad], str(tmp_path / "o.parquet"))
    assert_nothing_left(tmp_path, {"images_background.npz"})


def test_folder_without_classes(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="has no class subfolders"):
        importers.import_image_folder(tmp_path / "empty", str(tmp_path / "o.parquet"))


def test_mismatched_sizes_need_resize(make_folder, tmp_path: Path) -> None:
    root = make_folder(tmp_path / "p", classes=3, size=10)
    Image.fromarray(np.zeros((14, 14), np.uint8)).save(root / "class_01" / "big.png")
    with pytest.raises(UserError, match="pass --image-size"):
        importers.import_image_folder(root, str(tmp_path / "o.parquet"))
    meta = importers.import_image_folder(
        root, str(tmp_path / "o.parquet"), image_size=10, ratios=(1 / 3, 1 / 3, 1 / 3)
    )
    assert meta["image_shape"] == [10, 10, 1]


def test_unknown_protocol(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="valid protocols: vinyals, lake"):
        importers.import_omniglot([tmp_path], str(tmp_path / "o.parquet"), protocol="snell")


def test_too_few_classes_for_protocol(tmp_path: Path) -> None:
    bg = make_npz(tmp_path / "images_background.npz", characters=5, drawings=2, size=28)
    with pytest.raises(UserError, match="lower --train-classes"):
        importers.import_omniglot([bg], str(tmp_path / "o.parquet"))
    with pytest.raises(UserError, match="needs both background and evaluation"):
        importers.import_omniglot([bg], str(tmp_path / "o.parquet"), protocol="lake")


def test_parquet_that_is_not_a_dataset(tmp_path: Path) -> None:
    pq.write_table(pa.table({"x": [1, 2]}), tmp_path / "other.parquet")
    with pytest.raises(UserError, match="not a metasweep dataset"):
        load_dataset(str(tmp_path / "other.parquet"))
    with pytest.raises(UserError, match="does not exist"):
        load_dataset(str(tmp_path / "absent.parquet"))


# ---- hostile archives and images (issue 10): refused before they are read ----------------------

OMNIGLOT_MEMBER = "images_background/Alpha/character01/0001_{:02d}.png"


def png_bytes(size: tuple[int, int] = (8, 8), mode: str = "L") -> bytes:
    import io

    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_zip_bomb_is_refused_from_its_directory(tmp_path: Path) -> None:
    bomb = tmp_path / "images_background.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr(OMNIGLOT_MEMBER.format(0), png_bytes())
        z.writestr(OMNIGLOT_MEMBER.format(1), b"\0" * (64 * 2**20))  # 64 MiB in ~64 KiB
    assert bomb.stat().st_size < 2**20
    with pytest.raises(UserError, match="would inflate past the limits"):
        importers.import_omniglot([bomb], str(tmp_path / "o.parquet"))
    assert_nothing_left(tmp_path, {"images_background.zip"})


def test_an_npz_bomb_is_refused_before_numpy_inflates_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    npz = tmp_path / "images_background.npz"
    np.savez_compressed(npz, images=np.zeros((20, 20, 105, 105), dtype=bool))  # 4.4 MB, 1000x
    monkeypatch.setattr(importers, "MAX_RATIO", 50)
    with pytest.raises(UserError, match="would inflate past the limits"):
        importers.import_omniglot([npz], str(tmp_path / "o.parquet"))


def test_duplicate_member_names_are_refused(tmp_path: Path) -> None:
    twice = tmp_path / "images_background.zip"
    with zipfile.ZipFile(twice, "w") as z, pytest.warns(UserWarning, match="Duplicate name"):
        z.writestr(OMNIGLOT_MEMBER.format(0), png_bytes())
        z.writestr(OMNIGLOT_MEMBER.format(0), png_bytes((9, 9)))
    with pytest.raises(UserError, match="members of the same name twice"):
        importers.import_omniglot([twice], str(tmp_path / "o.parquet"))


def test_an_8_bit_npz_is_refused_not_imported_as_corrupted_pixels(tmp_path: Path) -> None:
    npz = tmp_path / "images_background.npz"
    np.savez(npz, images=np.full((2, 3, 10, 10), 200, dtype=np.uint8))
    with pytest.raises(UserError, match="holds uint8 values, but Omniglot's npz holds booleans"):
        importers.import_omniglot([npz], str(tmp_path / "o.parquet"))
    assert_nothing_left(tmp_path, {"images_background.npz"})


def test_stray_files_in_an_image_folder_are_skipped_and_huge_images_refused(
    make_folder, tmp_path: Path
) -> None:
    root = make_folder(tmp_path / "p", classes=5, per_class=3)
    with (root / "class_01" / "dataset.tar").open("wb") as f:  # a stray 8 GiB file, never read
        f.truncate(8 * 2**30)
    (root / "class_02" / "README.txt").write_text("notes")
    meta = importers.import_image_folder(root, str(tmp_path / "o.parquet"))
    assert meta["images"] == 15

    with (root / "class_03" / "huge.png").open("wb") as f:
        f.truncate(100 * 2**20)
    with pytest.raises(UserError, match=r"huge\.png is 100 MiB, more than the 64 MiB"):
        importers.import_image_folder(root, str(tmp_path / "o2.parquet"))
    assert not (tmp_path / "o2.parquet").exists()


def test_an_image_over_pils_pixel_limit_is_refused_on_import_and_adapt(make_folder, tmp_path: Path) -> None:
    from metasweep.orchestrator.data.images import MAX_IMAGE_PIXELS, read_image_files

    root = make_folder(tmp_path / "p", classes=5, per_class=3)
    side = int((MAX_IMAGE_PIXELS * 1.2) ** 0.5)  # over the limit, under twice it: PIL only warns
    Image.new("1", (side, side)).save(root / "class_01" / "bomb.png")
    assert (root / "class_01" / "bomb.png").stat().st_size < 5 * 2**20
    with pytest.raises(UserError, match="decompression-bomb limit"):
        importers.import_image_folder(root, str(tmp_path / "o.parquet"))
    with pytest.raises(UserError, match="decompression-bomb limit"):
        read_image_files(root / "class_01", (1, 28, 28))
