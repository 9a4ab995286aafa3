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

from metasweep.orchestrator.data.storage import delete_folder, folder_listing, read_bytes, rename_folder

_CHECKPOINT = re.compile(r"checkpoint_(\d+)")
"""The folder Tune gives each of a trial's checkpoints, numbered in the order they were made
(six digits and more)."""


def heal(experiment: str) -> list[str]:
    """Give each trial's latest accepted checkpoint the name the newest experiment snapshot
    knows it by.

    A trial whose snapshot names a checkpoint that is not on storage, while later ones of the
    same trial are, restarts from the first later one: the checkpoint whose arrival made Tune
    delete the named one, so the one the driver had accepted (its evaluation reached the
    scheduler, the searcher and MLflow). Its folder is renamed to the name the snapshot holds,
    and Tune numbers the trial's next checkpoint after it. Any later folder still was written
    by the trial after that, never accepted, perhaps not whole: it is deleted, so that the
    trial's next checkpoints do not land in it; the trial runs those iterations again.

    Args:
        experiment: the Tune experiment's folder, a local path or an object-storage URI.

    Returns:
        One line for each trial healed or beyond healing, saying what happens to it.

    Raises:
        UserError: the storage cannot be read or written.
    """
    snapshots = sorted(fnmatch.filter(folder_listing(experiment), "experiment_state-*.json"))
    if not snapshots:
        return []
    said = []
    for trial_state, run_metadata in json.loads(read_bytes(f"{experiment}/{snapshots[-1]}"))["trial_data"]:
        trial = Trial.from_json_state(trial_state, stub=True)
        trial.restore_run_metadata(run_metadata)
        if trial.checkpoint is None or trial.storage is None:
            continue
        folder = f"{experiment}/{trial.storage.trial_dir_name}"
        named = trial.checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
        kept = folder_listing(folder)
        if named in kept or not (index := _CHECKPOINT.fullmatch(named)):
            continue
        later = sorted(
            (int(match[1]), name)
            for name, is_folder in kept.items()
            if is_folder and (match := _CHECKPOINT.fullmatch(name)) and int(match[1]) > int(index[1])
        )
        if not later:
            said.append(
                f"trial {trial.trial_id}: its checkpoint {named} is not on storage and no later one is; "
                "Tune cannot restore it"
            )
            continue
        accepted, *unaccepted = (name for _, name in later)
        rename_folder(f"{folder}/{accepted}", f"{folder}/{named}")
        for name in unaccepted:
            delete_folder(f"{folder}/{name}")
        dropped = f"; {', '.join(unaccepted)}, never accepted, deleted" if unaccepted else ""
        said.append(
            f"trial {trial.trial_id} restarts from its last checkpoint, {accepted} (renamed {named}: "
            f"the sweep stopped before Tune's snapshot named it{dropped})"
        )
    return said
