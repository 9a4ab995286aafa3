"""A resumed sweep's trials restart from checkpoints that exist.

Each trial keeps one checkpoint (``CheckpointConfig(num_to_keep=1)``): when a trial reports a new
one, Tune deletes the one before at once, but names the new one in its experiment snapshot only
at the next snapshot, which it writes to storage in the background. A driver killed between the
two leaves a snapshot naming a checkpoint that is gone, and Tune then refuses to restore the
trial ("does not exist on storage anymore") until it fails for good. The checkpoint that took its
place is on storage beside it, and is later: :func:`heal` gives it the name the snapshot knows.
"""

from __future__ import annotations

import fnmatch
import json
import re

from ray.tune.experiment.trial import Trial

from metasweep.orchestrator.data.storage import folder_listing, read_bytes, rename_folder

_CHECKPOINT = re.compile(r"checkpoint_\d{6}")
"""The folder Tune gives each of a trial's checkpoints, numbered in the order they were made."""


def heal(experiment: str) -> list[str]:
    """Give each trial's latest checkpoint the name the newest experiment snapshot knows it by.

    A trial whose snapshot names a checkpoint that is not on storage, while a later one of the
    same trial is, restarts from the later one: its folder is renamed to the name the snapshot
    holds (Tune numbers the trial's next checkpoint after it). Trials whose checkpoint is there,
    or that have no later one, are left to Tune.

    Args:
        experiment: the Tune experiment's folder, a local path or an object-storage URI.

    Returns:
        One line for each trial healed, saying which checkpoint it restarts from.
    """
    snapshots = sorted(fnmatch.filter(folder_listing(experiment), "experiment_state-*.json"))
    if not snapshots:
        return []
    healed = []
    for trial_state, run_metadata in json.loads(read_bytes(f"{experiment}/{snapshots[-1]}"))["trial_data"]:
        trial = Trial.from_json_state(trial_state, stub=True)
        trial.restore_run_metadata(run_metadata)
        if trial.checkpoint is None or trial.storage is None:
            continue
        folder = f"{experiment}/{trial.storage.trial_dir_name}"
        named = trial.checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
        kept = folder_listing(folder)
        if named in kept:
            continue
        later = sorted(
            n for n, is_folder in kept.items() if is_folder and _CHECKPOINT.fullmatch(n) and n > named
        )
        if not later:
            continue
        rename_folder(f"{folder}/{later[-1]}", f"{folder}/{named}")
        healed.append(
            f"trial {trial.trial_id} restarts from its last checkpoint, {later[-1]} (renamed {named}: "
            "the sweep stopped before Tune's snapshot named it)"
        )
    return healed
