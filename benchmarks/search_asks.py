"""How long the searcher blocks Tune's loop when it issues a group of G Optuna asks (issue 16.5).

    python -m benchmarks.search_asks --group-size 64 --history 192

A :class:`study.search.StudySearcher` on a journal file (as the driver makes it), two
objectives, the CIFAR-10-LT space; ``history`` settings are first asked and told (so TPE models
that many finished trials), then the next groups are issued as Tune issues them: ``suggest``
called in a loop (every 50 ms while it answers "not now", as Tune's loop asks again), each
call timed. Prints one JSON line: the longest single call (the loop's longest block), the
total time in calls per group and the wall time until each group was issued.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

from mislas.config import paper_config
from study.groups import group_metrics
from study.records import Stage2Setting
from study.search import MislasOptunaSearch, StudySearcher
from study.space import default_space_file, load_space


def make(folder: Path, group_size: int, n_trials: int) -> StudySearcher:
    journal = str(folder / "optuna.log")
    storage = JournalStorage(JournalFileBackend(journal))
    d = "cifar10_lt"
    table6 = Stage2Setting.from_config(paper_config(d, 100.0))
    space = load_space(default_space_file(d), table6=table6)
    sub = MislasOptunaSearch(space=space, metric=["val_acc", "val_ece"], mode=["max", "min"], sampler_seed=0,
                             study_name=f"b:{d}", storage=storage)
    return StudySearcher(searchers={d: sub}, n_trials={d: n_trials}, seeds=(0,), table6={d: table6},
                         spaces={d: space}, fixed=[], metric=["val_acc", "val_ece"], mode=["max", "min"],
                         study_names={d: f"b:{d}"}, group_size=group_size, journal_file=journal)


def issue(searcher: StudySearcher, trial_id: str, calls: list[float]) -> Any:
    """Call ``suggest`` as Tune's loop does until it gives a trial; each call's seconds in ``calls``."""
    while True:
        t0 = time.perf_counter()
        cfg = searcher.suggest(trial_id)
        calls.append(time.perf_counter() - t0)
        if cfg is not None:
            return cfg
        time.sleep(0.05)


def finish(searcher: StudySearcher, trial_id: str, spec: Any, rng: random.Random) -> None:
    members = [{"val_acc": rng.uniform(30, 60), "val_ece": rng.uniform(1, 20)} for _ in spec.members]
    searcher.on_trial_complete(trial_id, group_metrics(epoch=10, final=True, members=members))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--group-size", type=int, default=64)
    p.add_argument("--history", type=int, default=192, help="settings asked and told before the timed groups")
    p.add_argument("--groups", type=int, default=3, help="groups timed")
    p.add_argument("--work-s", type=float, default=0.0,
                   help="seconds each timed group 'runs' before the next is issued (the ask-ahead's head start)")
    args = p.parse_args()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    g = args.group_size
    rng = random.Random(0)
    with tempfile.TemporaryDirectory() as tmp:
        searcher = make(Path(tmp), g, args.history + g * args.groups)
        t0 = time.perf_counter()
        n_hist = -(-args.history // g)
        for i in range(n_hist):
            spec = issue(searcher, f"h{i}", [])["spec"]
            finish(searcher, f"h{i}", spec, rng)
        history_s = time.perf_counter() - t0
        per_group = []
        for i in range(args.groups):
            calls: list[float] = []
            t1 = time.perf_counter()
            spec = issue(searcher, f"g{i}", calls)["spec"]
            per_group.append({"members": len(spec.members), "longest_call_s": round(max(calls), 3),
                              "calls": len(calls), "in_calls_s": round(sum(calls), 3),
                              "until_issued_s": round(time.perf_counter() - t1, 3)})
            time.sleep(args.work_s)
            finish(searcher, f"g{i}", spec, rng)
        searcher_close = getattr(searcher, "close", None)
        if searcher_close is not None:
            searcher_close()
    print(json.dumps({"group_size": g, "history": n_hist * g, "history_s": round(history_s, 1),
                      "work_s": args.work_s, "longest_block_s": max(x["longest_call_s"] for x in per_group),
                      "groups": per_group}))


if __name__ == "__main__":
    main()
