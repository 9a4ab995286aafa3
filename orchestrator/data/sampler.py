"""Episode sampling: N-way K-shot tasks drawn from one split of a dataset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from metasweep.algorithms.tasks import Episode
from metasweep.orchestrator.data.format import EpisodicDataset
from metasweep.orchestrator.errors import UserError


@dataclass(frozen=True)
class ImageEpisode:
    """Episodes as stored pixels: ``support_x: (tasks, ways*shots, H, W, C)`` uint8 in the
    dataset's convention, ``support_y: (tasks, ways*shots)`` int64 labels ``0..ways-1``; the same
    for the query set."""

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray


class EpisodeSampler:
    """Draws N-way K-shot episodes from one split of a dataset.

    Each episode picks ``ways`` distinct classes and, per class, ``shots + queries`` distinct
    images (support and query never share an image); labels are re-assigned ``0..ways-1`` per
    episode in the order the classes were drawn. Support rows are grouped by class
    (``ways*shots``), then the query rows (``ways*queries``).

    Pixels are turned into floats in ``[0, 1]``; with ``invert`` (Omniglot: black ink on white),
    ink becomes 1 and background 0, as in the MAML reference code.

    Determinism: the episodes depend only on the generator passed to :meth:`sample` (a numpy
    generator seeded from it), never on global state, so the same seed gives the same episodes
    on any machine. Thread safety: the sampler is read-only after construction; share it freely.

    Args:
        dataset: the loaded dataset.
        split: ``train``, ``val`` or ``test``.
        ways: classes per episode.
        shots: support images per class.
        queries: query images per class.
        rotations: add the 90°, 180° and 270° rotations of every class as new classes.

    Raises:
        UserError: the split has fewer classes than ``ways`` or a class has fewer than
            ``shots + queries`` images.
    """

    task_kind = "classification"

    def __init__(
        self,
        dataset: EpisodicDataset,
        split: str,
        ways: int,
        shots: int,
        queries: int,
        rotations: bool = False,
    ):
        classes = dataset.classes_in(split)
        factor = 4 if rotations else 1
        if len(classes) * factor < ways:
            raise UserError(
                f"ways={ways} but split {split!r} of {dataset.uri} has only {len(classes) * factor} classes"
                f"{' (with rotations)' if rotations else ''}; lower ways or use a dataset with more classes"
            )
        counts = dataset.images_per_class()[classes]
        need = shots + queries
        if len(classes) and counts.min() < need:
            worst = classes[int(counts.argmin())]
            raise UserError(
                f"shots + queries = {need} but class {dataset.class_names[worst]!r} of split {split!r} "
                f"has only {counts.min()} images; lower shots or queries"
            )
        self.ways, self.shots, self.queries = ways, shots, queries
        self.image_shape = dataset.image_shape
        self.invert = bool(dataset.metadata.get("invert", False))
        self._images, self._start, self._count = _split_view(dataset, split, rotations)

    @property
    def num_classes(self) -> int:
        """Classes available to episodes (rotations included)."""
        return len(self._count)

    def sample(self, tasks: int, generator: torch.Generator, queries: int | None = None) -> Episode:
        """Draw ``tasks`` episodes: ``support_x: (tasks, ways*shots, C, H, W)`` float32 in
        ``[0, 1]`` (inverted where the dataset says so), labels ``(tasks, ways*shots)``."""
        raw = self.sample_images(tasks, generator, queries)

        def floats(images: np.ndarray) -> torch.Tensor:
            x = torch.from_numpy(images).permute(0, 1, 4, 2, 3).float().div_(255.0)
            return 1.0 - x if self.invert else x

        return Episode(
            floats(raw.support_x),
            torch.from_numpy(raw.support_y),
            floats(raw.query_x),
            torch.from_numpy(raw.query_y),
        )

    def sample_images(
        self, tasks: int, generator: torch.Generator, queries: int | None = None
    ) -> ImageEpisode:
        """Draw ``tasks`` episodes as the dataset stores them: uint8 pixels, as a user hands them to
        the served model. The same generator state gives the same episodes as :meth:`sample`."""
        q = self.queries if queries is None else queries
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        indices = self.sample_indices(tasks, q, rng)  # (tasks, ways, shots+q)
        pixels = self._images[indices]  # (tasks, ways, k, H, W, C)
        image = pixels.shape[3:]
        classes = np.arange(self.ways, dtype=np.int64)
        return ImageEpisode(
            support_x=pixels[:, :, : self.shots].reshape(tasks, -1, *image),
            support_y=np.tile(np.repeat(classes, self.shots), (tasks, 1)),
            query_x=pixels[:, :, self.shots :].reshape(tasks, -1, *image),
            query_y=np.tile(np.repeat(classes, q), (tasks, 1)),
        )

    def sample_indices(self, tasks: int, queries: int, rng: np.random.Generator) -> np.ndarray:
        """Row indices ``(tasks, ways, shots + queries)`` into this split's images."""
        k = self.shots + queries
        classes = rng.random((tasks, self.num_classes)).argpartition(self.ways - 1, axis=1)[:, : self.ways]
        counts = self._count[classes]  # (tasks, ways)
        width = int(counts.max())
        keys = rng.random((tasks, self.ways, width))
        keys[np.arange(width) >= counts[..., None]] = np.inf  # never pick past a class's end
        picks = (
            keys.argpartition(k - 1, axis=2)[:, :, :k] if k < width else np.argsort(keys, axis=2)[:, :, :k]
        )
        return self._start[classes][..., None] + picks


def _split_view(
    dataset: EpisodicDataset, split: str, rotations: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Images of one split (contiguous, rotations appended as new classes), starts and counts."""
    classes = dataset.classes_in(split)
    if len(classes) == 0:
        return dataset.pixels[:0], np.zeros(0, np.int64), np.zeros(0, np.int64)
    first, last = dataset.class_start[classes[0]], dataset.class_start[classes[-1] + 1]
    images = dataset.pixels[first:last]  # rows are grouped by split: a view, no copy
    counts = dataset.images_per_class()[classes]
    if rotations:
        images = np.concatenate([images] + [np.rot90(images, k, axes=(1, 2)) for k in (1, 2, 3)])
        counts = np.tile(counts, 4)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return np.ascontiguousarray(images), starts, counts.astype(np.int64)
