"""One trial of the study: Stage 1 from the shared cache, Stage 2 with per-epoch reports.

Tune calls :func:`run_trial` with the trial's config (data set, seed, method, mixup and the
sampled Stage-2 knobs) and a :class:`TrialContext` shared by all trials
(``tune.with_parameters``). What it reports:

* after each Stage-2 epoch but the last: the validation metrics and ``epoch`` (what ASHA acts
  on), with a checkpoint holding ``stage2.pt`` (the resumable Stage-2 state) and the epoch rows
  so far, so a retried trial (``FailureConfig``) resumes at its last finished epoch;
* once at the end: validation *and* test metrics with ``final = 1``, with a checkpoint holding
  the trial's Parquet rows (epochs, classes, reliability bins) and ``final.json``.

The driver's :class:`study.callbacks.ResultsCallback` turns those checkpoints into the
study's Parquet part for the trial. The trial never selects anything on the test split.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from ray import tune

from mislas.config import apply_overrides, preset_config
from mislas.data import LTData, load_dataset
from mislas.splits import class_splits
from mislas.stages import EpochRecord, load_stage1, train_stage1, train_stage2
from study import results
from study.groups import group_metrics, member_config, member_ids
from study.stage1_cache import Stage1Cache, stage1_key
from study.storage import Store

FINAL = "final.json"
META = "meta.json"
EPOCHS_JSON = "epochs.json"
STAGE2_KNOBS = ("eps_1", "eps_k", "form", "p", "dw_ratio", "shift_bn", "las_target")
TRAINED_METHODS = ("mislas", "crt", "lws")  # methods with Stage-2 epochs


@dataclass(frozen=True)
class TrialContext:
    """What every trial of a study shares; built once by the driver, picklable."""

    study: str
    results_location: str  # <storage>/<name>
    stage1_location: str  # <storage>/stage1
    budget: str  # paper | smoke
    imb_factor: float | None
    data_root: str | None
    overrides: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per data set, "section.key=value"
    gpus_per_trial: float = 0.0
    cpus_per_trial: float = 1.0
    git_commit: str | None = None
    progress: bool = False


def build_config(ctx: TrialContext, config: dict[str, Any]) -> Any:
    """The trial's RunConfig: budget preset + study overrides + the trial's own knobs."""
    dataset = config["dataset"]
    cfg = preset_config(ctx.budget, dataset, ctx.imb_factor)
    cfg = apply_overrides(cfg, ctx.overrides.get(dataset, ()))
    s2 = {"method": config["method"]}
    if config["method"] == "mislas":
        s2.update({k: config[k] for k in STAGE2_KNOBS})
        if s2["form"] != "exp":
            s2["p"] = None
    return replace(
        cfg,
        data=replace(cfg.data, data_root=ctx.data_root if ctx.data_root else cfg.data.data_root),
        stage1=replace(cfg.stage1, mixup=bool(config["mixup"])),
        stage2=replace(cfg.stage2, **s2),
        seed=int(config["seed"]),
        device="cuda" if ctx.gpus_per_trial > 0 else "cpu",
    )


def planned_epochs(cfg: Any) -> int:
    return int(cfg.stage2.epochs) if cfg.stage2.method in TRAINED_METHODS else 0


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"


def provenance() -> dict[str, str]:
    import optuna
    import ray

    import mislas

    return {"mislas_version": mislas.__version__, "torch_version": torch.__version__, "ray_version": ray.__version__,
            "optuna_version": optuna.__version__, "python_version": platform.python_version()}


def _summary_metrics(prefix: str, summary: dict[str, Any]) -> dict[str, Any]:
    return {f"{prefix}_{k}": v for k, v in summary.items()}


def report_metrics(*, epoch: int, final: bool, val: dict[str, Any],
                   test: dict[str, Any] | None = None) -> dict[str, Any]:
    """What goes to Tune: val metrics (selection, ASHA), test metrics only in the final report."""
    metrics: dict[str, Any] = {"epoch": epoch, "final": int(final), **_summary_metrics("val", val)}
    if test is not None:
        metrics.update(_summary_metrics("test", test))
    return {k: (float("nan") if v is None else v) for k, v in metrics.items()}


def _write_json(path: Path, payload: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=_jsonable))
    os.replace(tmp, path)


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _non_finite(exc: BaseException) -> bool:
    text = str(exc).lower()
    return isinstance(exc, FloatingPointError) or any(w in text for w in ("nan", "inf", "finite"))


def _report_diverged(work: Path, planned: int, records: list[dict[str, Any]], stage2_s: float,
                     exc: BaseException) -> None:
    nan = {m: None for m in results.METRICS}
    metrics = report_metrics(epoch=len(records), final=False, val=nan) | {"diverged": 1}
    _write_json(work / FINAL, {
        "metrics": metrics, "epochs_run": len(records), "tau": None, "stage2_s": stage2_s, "wall_s": stage2_s,
        "finished_at": datetime.now(timezone.utc).isoformat(),
        "error": f"diverged (non-finite values) after {len(records)} of {planned} epochs: "
                 f"{type(exc).__name__}: {exc}"[:2000],
    })
    (work / "stage2.pt").unlink(missing_ok=True)
    results.write_table_local(results.table("epochs", results.epochs_rows(tune.get_context().get_trial_id(), records)),
                              work / "epochs.parquet")
    print(f"[trial {tune.get_context().get_trial_id()}] diverged: {exc}", file=sys.stderr, flush=True)
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(work)))


def stored_metrics(store: Store, trial_id: str) -> dict[str, Any]:
    """The report of a trial whose rows are already written (read back from its part)."""
    row = results.read_part(store, trial_id, "trials").to_pylist()[0]
    val = {m: row.get(f"val_{m}") for m in results.METRICS}
    test = {m: row.get(f"test_{m}") for m in results.METRICS}
    return report_metrics(epoch=row["epochs_run"] or 0, final=row["status"] == "complete", val=val,
                          test=test) | {"diverged": int(row["status"] == "failed")}


def run_trial(config: dict[str, Any], ctx: TrialContext) -> None:
    """The Tune function trainable (wrapped with ``tune.with_parameters(run_trial, ctx=...)``)."""
    torch.set_num_threads(max(1, int(ctx.cpus_per_trial)))
    trial_id = tune.get_context().get_trial_id()
    if config.get("members"):
        run_group(config, ctx, trial_id)
        return
    started_at = datetime.now(timezone.utc).isoformat()
    cfg = build_config(ctx, config)
    planned = planned_epochs(cfg)

    # A trial whose rows were written before a driver crash is not run again: its stored
    # result is reported back (the experiment state may predate its completion).
    store = Store(ctx.results_location)
    if results.part_complete(store, trial_id):
        print(f"[trial {trial_id}] rows already written: reporting them back, not training again",
              file=sys.stderr, flush=True)
        tune.report(stored_metrics(store, trial_id) | {"from_part": 1})
        return

    work = Path(tempfile.mkdtemp(prefix=f"mislas-trial-{trial_id}-"))
    try:
        _run(ctx, cfg, planned, trial_id, started_at, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _load_data(cfg: Any) -> LTData:
    d = cfg.data
    return load_dataset(d.dataset, d.data_root, imb_factor=d.imb_factor, n_max=d.n_max, seed=d.seed,
                        val_per_class=d.val_per_class, train_list=d.train_list, val_list=d.val_list,
                        test_list=d.test_list, download=d.download)


def _stage1(ctx: TrialContext, cfg: Any, data: LTData, device: torch.device) -> tuple[Any, str, Any, float]:
    """Stage 1 from the shared cache: (model, key, cache entry, seconds spent getting it).

    Trained once per key, under a lock; other trials (and groups) wait for it and reuse it.
    """
    cache = Stage1Cache(ctx.stage1_location)
    key, inputs = stage1_key(data.fingerprint, cfg)

    def train(folder: Path) -> dict[str, Any]:
        res = train_stage1(data, cfg, device=device, checkpoint_dir=folder, progress=ctx.progress)
        return {"val": res.val.summary(), "test": res.test.summary()}

    t_s1 = time.perf_counter()
    entry = cache.get_or_train(key, inputs, train)
    stage1_s = time.perf_counter() - t_s1
    return load_stage1(entry.checkpoint, data, cfg, device), key, entry, stage1_s


def _meta(ctx: TrialContext, cfg: Any, data: LTData, device: torch.device, *, trial_id: str, started_at: str,
          planned: int, key: str, entry: Any, stage1_s: float) -> dict[str, Any]:
    """meta.json of a trial (or of one member of a group): where and how it ran, its Stage 1."""
    return {
        "trial_id": trial_id, "started_at": started_at, "hostname": socket.gethostname(),
        "device_name": device_name(device), "arch": cfg.stage1.arch, "data_fingerprint": data.fingerprint,
        "config_json": json.dumps(cfg.to_dict(), sort_keys=True), "epochs_planned": planned,
        "stage1_key": key, "stage1_metrics": entry.metrics, "stage1_trained": entry.trained, "stage1_s": stage1_s,
        "git_commit": ctx.git_commit, **provenance(),
    }


def _final_tables(trial_id: str, data: LTData, cfg: Any, res: Any) -> dict[str, Any]:
    """A finished trial's epochs, classes and reliability tables (from its StageResult)."""
    splits = class_splits(data.class_counts, cfg.eval.many_above, cfg.eval.few_below, cfg.eval.index_ranges)
    epsilon = res.extras.get("epsilon")
    return {
        "epochs": results.table("epochs", results.epochs_rows(trial_id, res.epochs)),
        "classes": results.table("classes", results.classes_rows(
            trial_id, data.class_counts, splits, res.test.per_class_acc, res.val.per_class_acc, res.weight_norms,
            None if epsilon is None else np.asarray(epsilon))),
        "reliability": results.table("reliability", results.reliability_rows(
            trial_id, {"val": res.val.reliability, "test": res.test.reliability})),
    }


def _run(ctx: TrialContext, cfg: Any, planned: int, trial_id: str, started_at: str, work: Path) -> None:
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # a retry (FailureConfig) or a resumed study: continue from it
        with checkpoint.as_directory() as folder:
            for item in Path(folder).iterdir():
                if item.is_file():
                    shutil.copy2(item, work / item.name)
        if (work / FINAL).exists():
            final = json.loads((work / FINAL).read_text())
            tune.report(final["metrics"], checkpoint=tune.Checkpoint.from_directory(str(work)))
            return

    data = _load_data(cfg)
    device = torch.device(cfg.device if cfg.device != "cuda" or torch.cuda.is_available() else "cpu")

    model, key, entry, stage1_s = _stage1(ctx, cfg, data, device)
    meta = _meta(ctx, cfg, data, device, trial_id=trial_id, started_at=started_at, planned=planned, key=key,
                 entry=entry, stage1_s=stage1_s)
    if (work / META).exists():  # keep the first attempt's start and Stage-1 facts
        earlier = json.loads((work / META).read_text())
        for k in ("started_at", "stage1_trained", "stage1_s"):
            meta[k] = earlier.get(k, meta[k])
        meta["stage1_trained"] = bool(earlier.get("stage1_trained")) or entry.trained
    _write_json(work / META, meta)

    records: list[dict[str, Any]] = []
    if (work / EPOCHS_JSON).exists():  # a resumed trial: the epochs before its checkpoint
        records = json.loads((work / EPOCHS_JSON).read_text())
    t_s2 = time.perf_counter() - (records[-1]["wall_s"] if records else 0.0)

    def on_epoch(record: EpochRecord) -> None:
        records.append(asdict(record))
        if record.epoch >= planned:
            return  # the final report follows, with the test metrics
        _write_json(work / EPOCHS_JSON, records)
        results.write_table_local(results.table("epochs", results.epochs_rows(trial_id, records)),
                                  work / "epochs.parquet")
        tune.report(report_metrics(epoch=record.epoch, final=False, val=record.val),
                    checkpoint=tune.Checkpoint.from_directory(str(work)))

    try:
        res = train_stage2(data, model, cfg, device=device, checkpoint_dir=work, on_epoch=on_epoch,
                           progress=ctx.progress)
    except (ValueError, FloatingPointError, RuntimeError) as exc:
        if not _non_finite(exc):
            raise
        # A setting whose training diverged (NaN/inf logits) fails the same way on every retry:
        # end the trial with a "diverged" result instead of raising, so FailureConfig does not
        # rerun it; the driver records it as failed and Optuna as FAIL.
        _report_diverged(work, planned, records, time.perf_counter() - t_s2, exc)
        return
    stage2_s = time.perf_counter() - t_s2

    # The final rows of this trial, handed to the driver inside the last checkpoint.
    tables = _final_tables(trial_id, data, cfg, res)
    (work / "stage2.pt").unlink(missing_ok=True)  # the finished trial needs only its rows
    (work / EPOCHS_JSON).unlink(missing_ok=True)
    for name, tbl in tables.items():
        results.write_table_local(tbl, work / f"{name}.parquet")
    metrics = report_metrics(epoch=planned, final=True, val=res.val.summary(), test=res.test.summary())
    _write_json(work / FINAL, {
        "metrics": metrics, "epochs_run": len(res.epochs), "tau": res.extras.get("tau"),
        "stage2_s": stage2_s, "wall_s": stage2_s, "finished_at": datetime.now(timezone.utc).isoformat(),
    })
    print(f"[trial {trial_id}] {cfg.data.dataset} {cfg.stage2.method} seed {cfg.seed}: val acc "
          f"{res.val.acc:.2f} ECE {res.val.ece:.2f}", file=sys.stderr, flush=True)
    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(work)))


# --- groups: several MiSLAS settings of one Tune trial on one backbone pass per batch ------

GROUP_FINAL = "group_final.json"


def _train_subgroups(data: LTData, model: Any, cfgs: list[Any], *, device: torch.device,
                     on_epoch: Callable[[int, EpochRecord], None], progress: bool) -> list[Any]:
    """``train_stage2_group`` over the members, split where they cannot share a backbone pass.

    Members that differ in a field the shared pass depends on (e.g. ``shift_bn``, which the
    search space samples per setting) run as separate sub-groups, one after another; results
    and ``on_epoch`` indices stay in the members' order.
    """
    from mislas.group import SHARED_FIELDS, train_stage2_group

    parts: dict[tuple[Any, ...], list[int]] = {}
    for i, cfg in enumerate(cfgs):
        parts.setdefault(tuple(get(cfg) for _, get in SHARED_FIELDS), []).append(i)
    out: list[Any] = [None] * len(cfgs)
    for members in parts.values():
        def forward(j: int, record: EpochRecord, members: list[int] = members) -> None:
            on_epoch(members[j], record)

        for i, r in zip(members, train_stage2_group(data, model, [cfgs[i] for i in members], device=device,
                                                    on_epoch=forward, progress=progress)):
            out[i] = r
    return out


def run_group(config: dict[str, Any], ctx: TrialContext, group_id: str) -> None:
    """A Tune trial that trains several MiSLAS settings of one (data set, seed) as a group.

    Stage 1 comes from the cache as for a single trial; Stage 2 runs through
    :func:`mislas.group.train_stage2_group` (one backbone pass per batch, each member with its own
    head, scale, optimizer and loss). Reports per epoch carry no checkpoint: a group is re-run
    whole if its worker dies. The final report's checkpoint holds one folder ``g<k>/`` per
    member with that member's meta.json, final.json and Parquet rows, which the driver writes as
    the member's own part (row id ``<group_id>-g<k>``).
    """
    started_at = datetime.now(timezone.utc).isoformat()
    ids = member_ids(group_id, config)
    cfgs = [build_config(ctx, member_config(config, k)) for k in range(len(ids))]
    planned = planned_epochs(cfgs[0])

    store = Store(ctx.results_location)
    if all(results.part_complete(store, i) for i in ids):  # written before a driver crash: not rerun
        members = []
        for i in ids:
            members.append(stored_metrics(store, i))
        tune.report(group_metrics(epoch=planned, final=True, members=members) | {"from_part": 1})
        return

    work = Path(tempfile.mkdtemp(prefix=f"mislas-group-{group_id}-"))
    try:
        _run_group(ctx, cfgs, planned, ids, started_at, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_group(ctx: TrialContext, cfgs: list[Any], planned: int, ids: list[str], started_at: str,
               work: Path) -> None:

    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:  # only the final report has one: a resumed study re-reports it
        with checkpoint.as_directory() as folder:
            shutil.copytree(folder, work, dirs_exist_ok=True)
        if (work / GROUP_FINAL).exists():
            tune.report(json.loads((work / GROUP_FINAL).read_text()),
                        checkpoint=tune.Checkpoint.from_directory(str(work)))
            return

    ref = cfgs[0]
    data = _load_data(ref)
    device = torch.device(ref.device if ref.device != "cuda" or torch.cuda.is_available() else "cpu")
    model, key, entry, stage1_s = _stage1(ctx, ref, data, device)
    folders = [work / f"g{k}" for k in range(len(ids))]
    for k, (folder, cfg, mid) in enumerate(zip(folders, cfgs, ids)):
        folder.mkdir(parents=True, exist_ok=True)
        meta = _meta(ctx, cfg, data, device, trial_id=mid, started_at=started_at, planned=planned, key=key,
                     entry=entry, stage1_s=stage1_s)
        if k > 0:  # the group got Stage 1 once: its training / waiting time is on member 0's row
            meta.update(stage1_trained=False, stage1_s=0.0)
        _write_json(folder / META, meta)

    records: list[list[dict[str, Any]]] = [[] for _ in ids]
    t_s2 = time.perf_counter()

    def on_epoch(i: int, record: EpochRecord) -> None:
        records[i].append(asdict(record))
        if record.epoch < planned and all(len(r) >= record.epoch for r in records) and \
                sum(len(r) == record.epoch for r in records) == 1:  # the last member to reach this epoch
            members = [report_metrics(epoch=record.epoch, final=False, val=r[-1]["val"]) for r in records]
            tune.report(group_metrics(epoch=record.epoch, final=False, members=members))

    try:
        res = _train_subgroups(data, model, cfgs, device=device, on_epoch=on_epoch, progress=ctx.progress)
    except (ValueError, FloatingPointError, RuntimeError) as exc:
        if not _non_finite(exc):
            raise
        # One member's non-finite values stop the whole group (they share one loop): every
        # member ends as failed ("diverged ... in a group"), with its epochs so far, not retried.
        wall = time.perf_counter() - t_s2
        nan = {m: None for m in results.METRICS}
        members = []
        for folder, mid, recs in zip(folders, ids, records):
            metrics = report_metrics(epoch=len(recs), final=False, val=nan) | {"diverged": 1}
            members.append(metrics)
            _write_json(folder / FINAL, {
                "metrics": metrics, "epochs_run": len(recs), "tau": None, "stage2_s": wall / len(ids),
                "wall_s": wall, "finished_at": datetime.now(timezone.utc).isoformat(),
                "error": f"diverged (non-finite values in a group of {len(ids)}) after {len(recs)} of {planned} "
                         f"epochs: {type(exc).__name__}: {exc}"[:2000]})
            results.write_table_local(results.table("epochs", results.epochs_rows(mid, recs)),
                                      folder / "epochs.parquet")
        report = group_metrics(epoch=min(len(r) for r in records), final=False, members=members) | {"diverged": 1}
        _write_json(work / GROUP_FINAL, report)
        print(f"[group {ids[0].rsplit('-g', 1)[0]}] diverged: {exc}", file=sys.stderr, flush=True)
        tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(work)))
        return
    stage2_s = time.perf_counter() - t_s2

    members = []
    finished_at = datetime.now(timezone.utc).isoformat()
    for folder, cfg, mid, r in zip(folders, cfgs, ids, res):
        for name, tbl in _final_tables(mid, data, cfg, r).items():
            results.write_table_local(tbl, folder / f"{name}.parquet")
        metrics = report_metrics(epoch=planned, final=True, val=r.val.summary(), test=r.test.summary())
        members.append(metrics | {"diverged": 0})
        # stage2_s is the member's share of the group's Stage 2; wall_s the group's elapsed time
        _write_json(folder / FINAL, {"metrics": metrics, "epochs_run": len(r.epochs), "tau": None,
                                     "stage2_s": stage2_s / len(ids), "wall_s": stage2_s,
                                     "finished_at": finished_at})
        print(f"[trial {mid}] {cfg.data.dataset} {cfg.stage2.method} seed {cfg.seed} (group of {len(ids)}): "
              f"val acc {r.val.acc:.2f} ECE {r.val.ece:.2f}", file=sys.stderr, flush=True)
    report = group_metrics(epoch=planned, final=True, members=members)
    _write_json(work / GROUP_FINAL, report)
    tune.report(report, checkpoint=tune.Checkpoint.from_directory(str(work)))
