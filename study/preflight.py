"""Checks a study makes before Ray starts, so a bad data set fails in seconds with one line.

Each data set is loaded as its trials will load it (lists parsed, arrays read), with the
study's own config, and an even sample of its listed images is opened and decoded, so a
missing root, a malformed split list or a missing or broken image file is a
:class:`mislas.errors.UsageError` naming it, before any worker starts and before the study's
folder is written. A backbone that starts from pretrained weights
(Places-LT's ResNet-152) must find them without a download (a given file, or torch's hub
cache), unless the study is given its Stage 1 (``--stage1-checkpoint``); a given Stage 1 is
read as its trials will read it (weights-only, its data and recipe checked).
"""

from __future__ import annotations

import json
import sys
import time

from mislas.config import RunConfig
from mislas.data import LTData
from mislas.errors import UsageError
from study.settings import StudySettings

SAMPLE_IMAGES = 64
"""Listed images per data set the preflight opens and decodes (spread evenly over the lists);
``python -m mislas describe --check-files`` decodes all of them."""


def check_image_sample(dataset: str, data: LTData) -> None:
    """Decode an even sample of the data set's listed images (none for array data sets)."""
    from mislas.data.describe import check_images, listed_images

    paths = listed_images(data)
    if not paths:
        return
    step = max(1, len(paths) // SAMPLE_IMAGES)
    sample = paths[::step][:SAMPLE_IMAGES]
    found = check_images(sample)
    if found.missing or found.undecodable:
        first = found.missing[0] if found.missing else f"{found.undecodable[0][0]}: {found.undecodable[0][1]}"
        raise UsageError(f"--dataset {dataset}: {found.bad} of {len(sample)} sampled listed images are missing or do "
                         f"not decode (first: {first}); python -m mislas describe --dataset {dataset} --data-root "
                         f"... --check-files checks them all")


def check_stage1_checkpoint(path: str, data: LTData, cfg: RunConfig) -> None:
    """Load the given Stage-1 checkpoint on the CPU as every trial will, refusing a bad one.

    Read the given Stage 1 as every trial will (weights-only; ours: data and recipe checked;
    the reference's: names and shapes), on the CPU, so a refused file stops the study here.
    """
    import torch

    from mislas.reference import load_any_stage1

    try:
        load_any_stage1(path, data, cfg, torch.device("cpu"))
    except UsageError as exc:
        raise UsageError(f"--stage1-checkpoint: {exc}") from None


STORAGE_ALLOWED = "a folder this user can write (created if missing), an NFS path or an s3:// / gs:// URI"


def _study_json_problem(text: bytes) -> str | None:
    """Why the bytes are not a study.json that study.run wrote (a JSON object with an identity)."""
    try:
        saved = json.loads(text.decode("utf-8"))
    except UnicodeDecodeError:
        return "not UTF-8 text"
    except json.JSONDecodeError as exc:
        return f"not valid JSON ({exc.msg}, line {exc.lineno} column {exc.colno}: truncated?)"
    if not isinstance(saved, dict) or not isinstance(saved.get("identity"), dict):
        return "not a JSON object with the study's identity"
    return None


def check_storage(s: StudySettings) -> None:
    """Check that the storage is usable and an existing study.json reads back.

    The storage is usable and an existing study's study.json reads back, before Ray starts
    and before anything is written: a file given as ``--storage``, a folder this process cannot
    write (probed by writing, not by its mode) or a damaged study.json is one line, and the
    study folder is left as it is (study.json records the settings a resume is checked against,
    so a damaged one is never replaced).
    """
    from study.storage import StorageError, Store, write_problem

    try:
        store = Store(s.storage)
    except StorageError as exc:
        raise UsageError(f"--storage: {exc}; allowed: {STORAGE_ALLOWED}") from None
    results = store.child(s.name)
    if store.local:
        for folder in (store.local_path(), results.local_path()):
            if folder.exists() and not folder.is_dir():
                raise UsageError(f"--storage {s.storage}: {folder} is a file, not a folder; allowed: "
                                 f"{STORAGE_ALLOWED}")
        problem = write_problem(results.local_path())
        if problem is not None:
            raise UsageError(f"--storage {s.storage}: {problem}; allowed: {STORAGE_ALLOWED}")
    if not results.exists("study.json"):
        return
    try:
        problem = _study_json_problem(results.read_bytes("study.json"))
    except OSError as exc:
        problem = f"cannot read it ({type(exc).__name__}: {exc})"
    if problem is not None:
        raise UsageError(f"{results.uri('study.json')}: {problem}; it holds the settings a resume is checked "
                         f"against: restore it, or pick a new --name")


def check_data(s: StudySettings) -> dict[str, str]:
    """Load every data set of the study once; raises UsageError naming the data set and the problem.

    Returns each data set's fingerprint (the Stage-1 phase plans its cache keys from them).
    """
    from mislas.models import pretrained_problem
    from mislas.train import load_data

    fingerprints = {}
    for d, cfg in s.configs.items():
        t0 = time.perf_counter()
        try:
            data = load_data(cfg)
        except UsageError as exc:
            raise UsageError(f"--dataset {d}: {exc}") from None
        except (OSError, ValueError) as exc:
            raise UsageError(f"--dataset {d}: cannot load its data ({type(exc).__name__}: {exc})") from None
        print(f"[study] {d}: {len(data.train.labels)} train / {len(data.val.labels)} val / "
              f"{len(data.test.labels)} test images, {data.num_classes} classes "
              f"(checked in {time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
        check_image_sample(d, data)
        if d in s.stage1_checkpoints:
            check_stage1_checkpoint(s.stage1_checkpoints[d], data, cfg)
        fingerprints[d] = data.fingerprint
        problem = None if d in s.stage1_checkpoints else pretrained_problem(cfg.stage1.arch, cfg.stage1.pretrained)
        if problem is not None:
            raise UsageError(f"--dataset {d}: {problem}")
    return fingerprints
