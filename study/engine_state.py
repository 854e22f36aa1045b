"""Where a trial keeps its Stage-2 engine state between reports: written once per epoch, not copied per report.

Why: the state of a group of G members is 2·G·K·D·4 bytes (weights and momentum; 8.5 GB at
iNaturalist's K = 8,142, D = 2,048 for G = 64). Kept inside the folder a trial reports to Tune,
it is written by the engine and then copied again by Tune at every report
(``ray.train._internal.storage.StorageContext.persist_current_checkpoint`` copies the whole
reported folder). Here the engine (:func:`mislas.stage2.train_subgroups`) writes it into
:attr:`EngineState.work`, and each report moves it into the study's store as
``<results>/engine/<trial_id>/sub<n>-e<epoch>.pt`` (a rename on a local store: the work folder
lies on the store's file system; one upload on an object store). The Tune checkpoint carries
only a pointer, ``engine.json``: ``{"files": {"sub<n>": name}, "previous": {...}}``.

Retention follows Tune's ``CheckpointConfig(num_to_keep=2)``: after a report, the files the
last two reports name are kept and the others deleted; after the final report, those of the
last intermediate one (Tune keeps it beside the final checkpoint). A restored trial gets the
pointed files back in a fresh work folder (hard links on a local store) and the engine
resumes from them, so a restore from the report before the newest one still finds its state.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow.fs as pafs

from mislas.checkpoint import STAGE2
from study.storage import Store

POINTER = "engine.json"
STATE = STAGE2  # the name the engine writes in each sub-group's folder


class EngineState:
    """One trial's Stage-2 state: the engine's work folder, the published files, the pointer."""

    def __init__(self, results_location: str, trial_id: str, scratch: Path) -> None:
        """``scratch``: a local folder outside the reported one, for the work folder of an object store."""
        self.store = Store(results_location).child("engine", trial_id)
        self.work = self.store.local_path("work") if self.store.local else scratch
        self.files: dict[str, str] = {}
        self.previous: dict[str, str] = {}
        self._fetched: dict[str, int] = {}  # sub-group -> inode of the file fetched for it (not new state)

    def start(self, reported: Path) -> None:
        """A fresh work folder holding the state the restored checkpoint in ``reported`` names (none: from scratch).

        A checkpoint written before the pointer existed holds the state itself
        (``reported/engine/sub<n>/stage2.pt``): it is moved into the work folder.
        """
        shutil.rmtree(self.work, ignore_errors=True)  # an attempt that died after its last report left it
        self.work.mkdir(parents=True, exist_ok=True)
        pointer = reported / POINTER
        if pointer.exists():
            raw = json.loads(pointer.read_text())
            self.files, self.previous = dict(raw["files"]), dict(raw.get("previous", {}))
        for sub, name in self.files.items():
            self._fetch(name, self.work / sub / STATE)
            self._fetched[sub] = (self.work / sub / STATE).stat().st_ino
        legacy = reported / "engine"
        for old in sorted(legacy.glob(f"sub*/{STATE}")):
            (self.work / old.parent.name).mkdir(exist_ok=True)
            shutil.move(old, self.work / old.parent.name / STATE)  # a rename where both lie on one file system
        shutil.rmtree(legacy, ignore_errors=True)

    def publish(self, epoch: int, reported: Path) -> None:
        """Move each sub-group's state written since the last report into the store; the pointer into ``reported``."""
        new: dict[str, str] = {}
        for state in sorted(self.work.glob(f"sub*/{STATE}")):
            if self._fetched.get(state.parent.name) == state.stat().st_ino:
                continue  # the state it resumed from, unchanged (a finished sub-group): already in the store
            name = f"{state.parent.name}-e{epoch}.pt"
            if self.store.local:
                os.replace(state, self.store.local_path(name))
            else:
                self.store.makedirs()
                pafs.copy_files(str(state), self.store.path(name), source_filesystem=pafs.LocalFileSystem(),
                                destination_filesystem=self.store.fs)
                state.unlink()
            new[state.parent.name] = name
        self.previous, self.files = self.files, {**self.files, **new}
        (reported / POINTER).write_text(json.dumps({"files": self.files, "previous": self.previous}, sort_keys=True))

    def prune(self) -> None:
        """After Tune took the report: delete the files neither of the last two reports names."""
        self._keep(set(self.files.values()) | set(self.previous.values()))

    def finish(self, reported: Path) -> None:
        """Clean up after the trial ended, keeping only the files the last intermediate report names.

        The trial ended (final or diverged report next): the work folder and the pointer go, and every file
        but those the last intermediate report names (the checkpoint Tune keeps beside the final one).
        """
        shutil.rmtree(self.work, ignore_errors=True)
        (reported / POINTER).unlink(missing_ok=True)
        self._keep(set(self.files.values()))
        if not self.files and self.store.exists():  # no intermediate report: nothing to keep
            self.store.fs.delete_dir(self.store.path())

    def _fetch(self, name: str, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        if not self.store.exists(name):
            raise RuntimeError(f"the trial's checkpoint names Stage-2 state {self.store.uri(name)}, which is gone; "
                               f"the trial cannot resume from it")
        if self.store.local:
            try:  # the engine replaces its file (temporary + rename), so a link never sees a change
                os.link(self.store.local_path(name), target)
            except OSError:
                shutil.copyfile(self.store.local_path(name), target)
        else:
            pafs.copy_files(self.store.path(name), str(target), source_filesystem=self.store.fs,
                            destination_filesystem=pafs.LocalFileSystem())

    def _keep(self, keep: set[str]) -> None:
        if not self.store.exists():
            return
        for info in self.store.fs.get_file_info(pafs.FileSelector(self.store.path(), recursive=False)):
            if info.type == pafs.FileType.File and info.base_name not in keep:
                self.store.delete(info.base_name)

