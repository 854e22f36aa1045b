"""Checks a study makes before Ray starts, so a bad data set fails in seconds with one line.

Each data set is loaded as its trials will load it (lists parsed, arrays read; no image is
decoded), with the study's own config, so a missing root, a malformed split list or a
missing file is a :class:`mislas.errors.UsageError` naming it, before any worker starts and
before the study's folder is written.
"""

from __future__ import annotations

import sys
import time

from mislas.errors import UsageError
from study.settings import StudySettings


def check_data(s: StudySettings) -> dict[str, str]:
    """Load every data set of the study once; raises UsageError naming the data set and the problem.

    Returns each data set's fingerprint (the Stage-1 phase plans its cache keys from them).
    """
    from study.trainable import load_data

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
        fingerprints[d] = data.fingerprint
    return fingerprints
