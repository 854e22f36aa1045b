"""A synthetic study in the documented Parquet schema (docs/results-schema.md), for report tests.

Until a real smoke study's Parquet exists, this writes realistic tables with a seeded numpy RNG:
several data sets (one with published figures: cifar10_lt, β=100, resnet32), several seeds,
every method ± mixup, MiSLAS trials whose settings are sampled by a real Optuna study persisted
with JournalStorage (stopped-early trials told as COMPLETE with partial values, as Ray Tune
does; failed as FAIL; a few left RUNNING). Numbers are internally consistent: per-split and
overall accuracies are means of the class rows, ECE is computed from the reliability bins, the
confidence quantiles from the sampled confidences.

Also the columns added since the report was first written: cRT/LWS baselines in both BN modes
(``shift_bn`` true/false, ``--baseline-bn both``) for one group, component-ablation ``variant``
rows (``--ablation components``) for two groups, scored far above the searched settings on
validation so that any leak into the searched-settings analyses shows, the new calibration
metrics, temperature scaling and ``confidence.parquet``. ``legacy=True`` writes a study as the
schema was before all of these (no such columns, rows or table).
"""

from __future__ import annotations

import atexit
import functools
import io
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.storages import JournalStorage
from optuna.storages.journal import JournalFileBackend

FORMS = ("concave", "linear", "convex", "exp")
BASELINES = ("ce", "crt", "lws", "tau_norm")
T0 = datetime(2026, 11, 26, 10, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class GroupSpec:
    dataset: str
    imb_factor: float | None
    arch: str
    n_max: int
    n_classes: int
    seeds: tuple[int, ...]
    n_configs: int
    paper: dict[str, object]
    base_acc: float
    test_per_class: int
    eps_step: float | None = 0.1  # None: continuous ε (heatmap bins them)
    baseline_bn: tuple[bool, ...] = (True,)  # cRT/LWS BN modes run (True: train, the default)
    ablation: bool = False  # run the component ablation (variant rows)


DEFAULT_GROUPS = (
    GroupSpec("cifar10_lt", 100.0, "resnet32", 5000, 10, (0, 1, 2), 7,
              {"eps_1": 0.3, "eps_k": 0.0, "form": "concave", "dw_ratio": 0.5, "shift_bn": True, "las_target": "paper"},
              72.0, 1000, baseline_bn=(True, False), ablation=True),
    GroupSpec("cifar100_lt", 50.0, "resnet32", 500, 100, (0,), 14,
              {"eps_1": 0.3, "eps_k": 0.0, "form": "concave", "dw_ratio": 0.1, "shift_bn": True, "las_target": "paper"},
              45.0, 100, eps_step=None),
    GroupSpec("fashion_mnist_lt", 100.0, "resnet32", 5000, 10, (0,), 5,
              {"eps_1": 0.3, "eps_k": 0.0, "form": "concave", "dw_ratio": 0.5, "shift_bn": False, "las_target": "paper"},
              80.0, 1000, ablation=True),
)
# Columns and tables the schema gained after the report was first written (left out by legacy=True).
NEW_METRICS = ("classwise_ece", "adaptive_ece", "brier", "ece_many", "ece_medium", "ece_few")
TS_METRICS = ("ece", "nll", "classwise_ece", "adaptive_ece", "brier")
NEW_TRIAL_COLUMNS = ("variant", "temperature", *(f"{s}_{m}" for s in ("val", "test") for m in NEW_METRICS),
                     *(f"{s}_{m}_ts" for s in ("val", "test") for m in TS_METRICS))
NEW_EPOCH_COLUMNS = ("steps",)
NEW_TABLES = ("confidence.parquet",)


def component_variants(paper: dict[str, object], mixup: bool) -> list[tuple[str, dict[str, object]]]:
    """The ablation rows of one Stage 1, named as study.settings.component_variants names them."""
    out = []
    for shift_bn in (True, False):
        for las in (True, False):
            setting = {**paper, "shift_bn": shift_bn}
            if not las:
                setting.update(eps_1=0.0, eps_k=0.0)
            name = "+".join(["mixup" if mixup else "plain", *(["shift_bn"] if shift_bn else []), "las" if las else "ce"])
            out.append((name, setting))
    if mixup:
        name = "+".join(["mixup", *(["shift_bn"] if paper["shift_bn"] else []), "uniform_ls"])
        out.append((name, {**paper, "eps_k": paper["eps_1"]}))
    return out


# test-accuracy bonus per component (mixup, shift BN, LAS / uniform LS) of the ablation rows
COMPONENT_BONUS = {"mixup": 2.0, "shift_bn": 1.0, "las": 1.5, "uniform_ls": 0.7, "ce": 0.0}
VARIANT_LEAK = 6.0  # ablation rows score this far above every searched setting


def lt_counts(n_max: int, n_classes: int, beta: float) -> np.ndarray:
    """LDAM-DRW exponential profile, class 0 largest."""
    return np.array([int(n_max * (1 / beta) ** (i / (n_classes - 1))) for i in range(n_classes)])


def _eps(counts: np.ndarray, e1: float, ek: float, form: str, p: float | None) -> np.ndarray:
    x = (counts - counts.min()) / (counts.max() - counts.min())
    if form == "concave":
        return ek + (e1 - ek) * np.sin(np.pi / 2 * x)
    if form == "linear":
        return ek + (e1 - ek) * x
    if form == "convex":
        return e1 + (e1 - ek) * np.sin(3 * np.pi / 2 + np.pi / 2 * x)
    return ek + (e1 - ek) * x ** float(p)


@dataclass
class _Writer:
    """Accumulates rows of the five tables."""

    study: str
    rng: np.random.Generator
    trials: list[dict] = field(default_factory=list)
    epochs: list[dict] = field(default_factory=list)
    classes: list[dict] = field(default_factory=list)
    reliability: list[dict] = field(default_factory=list)
    confidence: list[dict] = field(default_factory=list)
    clock: datetime = T0
    n_bins: int = 15  # eval.n_bins the synthetic runs recorded
    many_above: int = 100  # eval.many_above
    few_below: int = 20  # eval.few_below

    def _bins(self, trial_id: str, split: str, n: int, overconf: float, mean_conf: float) -> float:
        conf = np.clip(self.rng.beta(8 * mean_conf, 8 * (1 - mean_conf), size=n), 1e-3, 1.0)
        nb = self.n_bins
        idx = np.clip(np.ceil(conf * nb).astype(int) - 1, 0, nb - 1)
        gap_sum = 0.0
        for b in range(nb):
            sel = conf[idx == b]
            if sel.size == 0:
                acc = c = None
            else:
                c = float(sel.mean())
                acc = float(np.clip(c - overconf + self.rng.normal(0, 0.02), 0, 1))
                gap_sum += sel.size * abs(acc - c)
            self.reliability.append({"trial_id": trial_id, "eval_split": split, "bin": b, "lower": b / nb,
                                     "upper": (b + 1) / nb, "count": int(sel.size), "accuracy": acc, "confidence": c})
        return 100.0 * gap_sum / n

    def _confidence(self, trial_id: str, split: str, acc: dict[str, float], per_class: dict[str, int],
                    overconf: float) -> None:
        """Top-label confidence per class split: sampled, then summarised as the schema stores it."""
        for s, a in acc.items():
            m = float(np.clip(a / 100 + overconf, 0.05, 0.97))
            conf = np.clip(self.rng.beta(6 * m, 6 * (1 - m), size=min(per_class[s], 3000)), 1e-3, 1.0)
            q = np.quantile(conf, [0.05, 0.25, 0.5, 0.75, 0.95])
            self.confidence.append({"trial_id": trial_id, "eval_split": split, "class_split": s,
                                    "count": per_class[s], "mean": float(conf.mean()),
                                    **{k: float(v) for k, v in zip(("q05", "q25", "q50", "q75", "q95"), q)}})

    def _new_metrics(self, row: dict[str, object], overconf: float, have: dict[str, bool]) -> None:
        """The calibration metrics added to the schema later, and temperature scaling."""
        rng = self.rng
        row["temperature"] = float(max(0.5, 1.0 + 4.0 * overconf + rng.normal(0, 0.05)))
        for s in ("val", "test"):
            ece, acc, nll = float(row[f"{s}_ece"]), float(row[f"{s}_acc"]), float(row[f"{s}_nll"])
            row[f"{s}_classwise_ece"] = ece * float(rng.uniform(1.1, 1.6))
            row[f"{s}_adaptive_ece"] = ece * float(rng.uniform(0.8, 1.1))
            row[f"{s}_brier"] = float(np.clip(1.25 * (1 - acc / 100) + abs(overconf) + rng.normal(0, 0.01), 0, 2))
            for split, present in have.items():
                row[f"{s}_ece_{split}"] = ece * float(rng.uniform(0.5, 2.0)) if present else None
            row[f"{s}_ece_ts"] = ece * float(rng.uniform(0.2, 0.6))
            row[f"{s}_nll_ts"] = nll - float(rng.uniform(0.01, 0.15))
            row[f"{s}_classwise_ece_ts"] = row[f"{s}_classwise_ece"] * float(rng.uniform(0.5, 0.9))
            row[f"{s}_adaptive_ece_ts"] = row[f"{s}_adaptive_ece"] * float(rng.uniform(0.3, 0.7))
            row[f"{s}_brier_ts"] = row[f"{s}_brier"] - float(rng.uniform(0.0, 0.02))

    def add(self, g: GroupSpec, counts: np.ndarray, method: str, mixup: bool, seed: int, status: str,
            level: float, params: dict[str, object] | None, paper: bool, overconf: float, flat: float,
            epochs_planned: int = 10, shift_bn: bool | None = None, variant: str | None = None) -> str:
        trial_id = f"t{len(self.trials):04d}"
        rng = self.rng
        failed = status == "failed"
        epochs_run = 0 if failed else (int(rng.integers(2, epochs_planned)) if status == "stopped_early" else epochs_planned)
        rank = np.arange(g.n_classes)
        split = np.where(counts > self.many_above, "many", np.where(counts >= self.few_below, "medium", "few"))
        row: dict[str, object] = {
            "trial_id": trial_id, "study": self.study, "dataset": g.dataset, "imb_factor": g.imb_factor,
            "arch": g.arch, "method": method, "mixup": mixup, "seed": seed, "is_paper_setting": paper,
            "variant": variant, "eps_1": None, "eps_k": None, "form": None, "p": None, "dw_ratio": None,
            "shift_bn": shift_bn, "las_target": None, "tau": float(rng.uniform(0.5, 1.5)) if method == "tau_norm" else None,
            "epochs_planned": epochs_planned, "epochs_run": epochs_run, "status": status, "error": None,
        }
        if params:
            row.update({k: params.get(k) for k in ("eps_1", "eps_k", "form", "p", "dw_ratio", "shift_bn", "las_target")})
        start = self.clock
        self.clock += timedelta(seconds=float(rng.uniform(20, 60)))
        wall = float(rng.uniform(30, 120))
        row.update({"started_at": start, "finished_at": start + timedelta(seconds=wall), "wall_s": wall})
        if failed:
            row["error"] = "RuntimeError: CUDA out of memory (synthetic)\n  at stage2"
            self.trials.append(row)
            return trial_id
        slope = 30.0 * (1 - flat)
        class_acc = np.clip(level + slope * (0.5 - rank / max(1, g.n_classes - 1)) + rng.normal(0, 2, g.n_classes), 0, 100)
        val_class = np.clip(class_acc + rng.normal(0, 3, g.n_classes), 0, 100)
        norms = 1.0 + (1 - flat) * 0.8 * np.log(counts / counts.min()) / np.log(counts.max() / counts.min()) \
            + rng.normal(0, 0.03, g.n_classes)
        eps = _eps(counts, params["eps_1"], params["eps_k"], params["form"], params.get("p")) if params else None
        for j in rank:
            self.classes.append({"trial_id": trial_id, "class_index": int(j), "count": int(counts[j]), "rank": int(j),
                                 "split": str(split[j]), "test_acc": float(class_acc[j]), "val_acc": float(val_class[j]),
                                 "weight_norm": float(norms[j]), "epsilon": None if eps is None else float(eps[j])})
        for s in ("many", "medium", "few"):
            sel = split == s
            row[f"test_acc_{s}"] = float(class_acc[sel].mean()) if sel.any() else None
            row[f"val_acc_{s}"] = float(val_class[sel].mean()) if sel.any() else None
        row["test_acc"], row["val_acc"] = float(class_acc.mean()), float(val_class.mean())
        mean_conf = float(np.clip(row["test_acc"] / 100 + overconf, 0.15, 0.97))
        row["test_ece"] = self._bins(trial_id, "test", g.n_classes * g.test_per_class, overconf, mean_conf)
        row["val_ece"] = self._bins(trial_id, "val", g.n_classes * 20, overconf, mean_conf)
        row["test_mce"], row["val_mce"] = row["test_ece"] * 2.5, row["val_ece"] * 2.5
        row["test_nll"] = float(0.4 + (100 - row["test_acc"]) / 60 + overconf * 3 + rng.normal(0, 0.02))
        row["val_nll"] = row["test_nll"] + float(rng.normal(0, 0.02))
        have = {s: bool((split == s).any()) for s in ("many", "medium", "few")}
        self._new_metrics(row, overconf, have)
        per_class = {s: int((split == s).sum()) for s in have}
        for eval_split, n in (("test", g.test_per_class), ("val", 20)):
            acc = {s: float(row[f"{eval_split}_acc_{s}"]) for s in have if have[s]}
            self._confidence(trial_id, eval_split, acc, {s: k * n for s, k in per_class.items()}, overconf)
        for e in range(1, epochs_run + 1):
            frac = e / epochs_planned
            self.epochs.append({"trial_id": trial_id, "epoch": e, "steps": 40, "lr": 0.1 * 0.5 * (1 + math.cos(math.pi * frac)),
                                "classifier_lr": 0.05, "train_loss": 2.0 - frac, "val_acc": row["val_acc"] * (0.9 + 0.1 * frac),
                                "val_ece": row["val_ece"] * (1.5 - 0.5 * frac), "val_nll": row["val_nll"] * (1.2 - 0.2 * frac),
                                "wall_s": wall * frac})
        self.trials.append(row)
        return trial_id


def _mislas_quality(params: dict[str, object], g: GroupSpec) -> tuple[float, float]:
    """A smooth synthetic response: best near ε_1≈0.3, small ε_K, concave, ΔW ratio≈0.2."""
    e1, ek, dw = float(params["eps_1"]), float(params["eps_k"]), float(params["dw_ratio"])
    form_bonus = {"concave": 0.4, "linear": 0.2, "convex": 0.0, "exp": 0.1}[str(params["form"])]
    acc = g.base_acc + 8.0 - 12 * (e1 - 0.3) ** 2 - 10 * ek ** 2 - 1.2 * math.log10(dw / 0.2) ** 2 + form_bonus
    overconf = 0.06 - 0.25 * e1 - 0.1 * ek
    return acc, overconf


def _suggest(trial: optuna.Trial, g: GroupSpec) -> dict[str, object]:
    """The define-by-run space (ε_K ≤ ε_1, p only for exp), as the study's space would be."""
    e1 = trial.suggest_float("eps_1", 0.0, 0.5, step=g.eps_step)
    ek_step = None if g.eps_step is None else g.eps_step / 2
    ek = trial.suggest_float("eps_k", 0.0, max(e1, 1e-9) if ek_step is None else round(e1, 9), step=ek_step)
    form = trial.suggest_categorical("form", list(FORMS))
    params: dict[str, object] = {"eps_1": e1, "eps_k": ek, "form": form}
    if form == "exp":
        params["p"] = trial.suggest_float("p", 0.2, 5.0, log=True)
    params["dw_ratio"] = trial.suggest_float("dw_ratio", 0.01, 1.0, log=True)
    params["shift_bn"] = trial.suggest_categorical("shift_bn", [True, False])
    params["las_target"] = trial.suggest_categorical("las_target", ["paper", "reference"])
    return params


def _add_group(w: _Writer, study: optuna.Study, g: GroupSpec, *, stop_rate: float, fail_rate: float) -> None:
    """Baselines and MiSLAS trials of one data set; ``study`` is that data set's Optuna study."""
    rng = w.rng
    counts = lt_counts(g.n_max, g.n_classes, g.imb_factor or 100.0)
    # Baselines (not tuned): every method ± mixup for every seed. (overconfidence, norm flatness)
    style = {("ce", False): (0.10, 0.0), ("ce", True): (0.03, 0.3), ("crt", False): (0.08, 0.5),
             ("crt", True): (0.02, 0.7), ("lws", False): (0.07, 0.6), ("lws", True): (-0.01, 0.75),
             ("tau_norm", False): (0.08, 0.55), ("tau_norm", True): (0.02, 0.7)}
    offset = {"ce": -6.0, "crt": 0.0, "lws": 1.0, "tau_norm": 0.8}
    for seed in g.seeds:
        for method in BASELINES:
            for mixup in (False, True):
                for bn in (g.baseline_bn if method in ("crt", "lws") else (False,)):
                    over, flat = style[(method, mixup)]
                    level = g.base_acc + offset[method] + (2.0 if mixup else 0.0) - (0.0 if bn else 1.5) \
                        + rng.normal(0, 0.4)
                    w.add(g, counts, method, mixup, seed, "complete", level, None, False, over + (0 if bn else 0.02),
                          flat, shift_bn=bn)
    # MiSLAS: the paper setting first, then sampled settings; each setting run for every seed.
    for c in range(g.n_configs):
        first: dict[str, object] | None = None
        for seed in g.seeds:
            is_paper = c == 0
            if is_paper or first is not None:
                study.enqueue_trial(g.paper if is_paper else first)
            trial = study.ask()
            params = _suggest(trial, g)
            first = first or params
            status = "complete"
            if not is_paper:
                draw = rng.random()
                status = "failed" if draw < fail_rate else ("stopped_early" if draw < fail_rate + stop_rate else "complete")
                if c == 1 and seed == g.seeds[-1] and fail_rate > 0:  # every group has one of each
                    status = "failed"
                elif c == 2 and seed == g.seeds[0] and stop_rate > 0:
                    status = "stopped_early"
            acc, over = _mislas_quality(params, g)
            acc += rng.normal(0, 0.6)
            tid = w.add(g, counts, "mislas", True, seed, status, acc, params, is_paper, over, 0.85)
            row = w.trials[-1]
            row.update({"optuna_study": study.study_name, "optuna_trial_number": trial.number})
            for key, value in (("ray_trial_id", tid), ("seed", seed), ("is_paper_setting", is_paper), ("status", status)):
                trial.set_user_attr(key, value)
            if status == "failed":
                study.tell(trial, state=optuna.trial.TrialState.FAIL)
            elif status == "stopped_early":  # as study.search.MislasOptunaSearch does
                study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            else:
                study.tell(trial, [row["val_acc"], row["val_ece"]])
    if g.ablation:
        _add_ablation(w, g, counts)


def _add_ablation(w: _Writer, g: GroupSpec, counts: np.ndarray) -> None:
    """The component ablation: fixed rows, never told to Optuna; one failed row where seeds > 1."""
    for seed in g.seeds:
        for mixup in (True, False):
            for name, setting in component_variants(g.paper, mixup):
                bonus = sum(COMPONENT_BONUS.get(t, 0.0) for t in name.split("+"))
                acc, over = _mislas_quality(setting, g)
                status = "failed" if (name == "plain+las" and seed == g.seeds[-1] and len(g.seeds) > 1) else "complete"
                w.add(g, counts, "mislas", mixup, seed, status, acc + VARIANT_LEAK + bonus + w.rng.normal(0, 0.5),
                      setting, False, over - 0.02 * bonus, 0.85, variant=name)


def make_study(root: Path, *, name: str = "fixture_study", groups: tuple[GroupSpec, ...] = DEFAULT_GROUPS,
               seed: int = 0, with_optuna: bool = True, running: int = 2, stop_rate: float = 0.15,
               fail_rate: float = 0.1, drop: tuple[str, ...] = (), legacy: bool = False, n_bins: int = 15,
               many_above: int = 100, few_below: int = 20) -> Path:
    """Write a study under ``root/name`` and return that directory.

    ``drop`` names table files to leave out (a partial or older study); ``running`` Optuna
    trials are asked and never told (still running when the report is made). ``legacy``: a
    study written before the variant / TS / new-metric columns, ``steps`` and confidence.parquet
    (no ablation rows, baselines in the default BN mode with ``shift_bn`` null) and ``config_json``
    null. ``n_bins``, ``many_above``, ``few_below``: the eval settings the runs use and record in
    ``config_json`` (its ``eval`` section, as ``RunConfig.to_dict`` writes it).
    """
    if legacy:
        groups = tuple(replace(g, ablation=False, baseline_bn=(True,)) for g in groups)
        drop = (*drop, *NEW_TABLES)
    out = Path(root) / name
    out.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # One Optuna study per data set, NAME:dataset, in one journal (as study.run does). Settings
    # are always sampled by Optuna; without ``with_optuna`` the studies are not persisted.
    storage = JournalStorage(JournalFileBackend(str(out / "optuna.log"))) if with_optuna else None
    w = _Writer(name, np.random.default_rng(seed), n_bins=n_bins, many_above=many_above, few_below=few_below)
    config_json = json.dumps({"eval": {"batch_size": 512, "few_below": few_below, "index_ranges": None,
                                       "many_above": many_above, "n_bins": n_bins}}, sort_keys=True)
    studies = []
    for i, g in enumerate(groups):
        studies.append(optuna.create_study(study_name=f"{name}:{g.dataset}", storage=storage,
                                           directions=["maximize", "minimize"],
                                           sampler=optuna.samplers.RandomSampler(seed=seed + i)))
        _add_group(w, studies[-1], g, stop_rate=stop_rate, fail_rate=fail_rate)
    for _ in range(running):
        _suggest(studies[0].ask(), groups[0])
    provenance = {"mislas_version": "0.1.0", "torch_version": "2.14.1", "ray_version": "2.60.0",
                  "optuna_version": optuna.__version__, "python_version": "3.11.2", "git_commit": "abc1234",
                  "device_name": "cpu (2 threads)", "hostname": "fixture-host"}
    trials = pd.DataFrame([{"optuna_study": None, "optuna_trial_number": None, **r, **provenance, "stage1_key": f"{r['dataset']}-{r['seed']}-{r['mixup']}",
                            "stage1_val_acc": 60.0, "stage1_test_acc": 59.0, "stage1_test_ece": 9.0,
                            "config_json": None if legacy else config_json} for r in w.trials])
    for column in ("started_at", "finished_at"):
        trials[column] = pd.to_datetime(trials[column], utc=True).astype("datetime64[us, UTC]")
    trials["shift_bn"] = trials["shift_bn"].astype("boolean")
    epochs = pd.DataFrame(w.epochs)
    if legacy:
        trials = trials.drop(columns=list(NEW_TRIAL_COLUMNS))
        trials.loc[trials["method"] != "mislas", "shift_bn"] = pd.NA
        epochs = epochs.drop(columns=list(NEW_EPOCH_COLUMNS))
    tables = {"trials.parquet": trials, "epochs.parquet": epochs,
              "classes.parquet": pd.DataFrame(w.classes), "reliability.parquet": pd.DataFrame(w.reliability),
              "confidence.parquet": pd.DataFrame(w.confidence)}
    for file, frame in tables.items():
        if file not in drop:
            frame.to_parquet(out / file, index=False)
    identity = {"datasets": [g.dataset for g in groups], "trials": max(g.n_configs * len(g.seeds) for g in groups),
                "objectives": ["acc", "ece"], "scheduler": "asha", "budget": "smoke",
                "seeds": sorted({s for g in groups for s in g.seeds}), "methods": ["mislas", *BASELINES]}
    settings = {"name": name, "identity": identity, "created_at": T0.isoformat(), "storage": str(root),
                "results": str(out)}  # the layout study.run writes
    (out / "study.json").write_text(json.dumps(settings, indent=2))
    return out


# --- shared, built once per test session -----------------------------------------------------------

def _tmp_root(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, root, True)
    return root


@functools.cache
def full_study() -> Path:
    """The default synthetic study (written once per session)."""
    return make_study(_tmp_root("report-study-"))


@functools.cache
def full_report():  # -> study.reporting.ReportResult
    """The report of :func:`full_study` in all formats (built once per session)."""
    from study.reporting import FORMATS, build_report

    study = full_study()
    return build_report(study, study / "report", FORMATS)


def distinct_colours(png: bytes) -> int:
    """How many RGB colours a PNG uses (pixels packed into one integer each, for speed)."""
    from matplotlib import image as mpimg

    rgb = (mpimg.imread(io.BytesIO(png), format="png")[..., :3] * 255).round().astype(np.uint32)
    return len(np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]))


class TableParser(HTMLParser):
    """Collect every <table id=...> of an HTML page as rows of (text, bold) cells, headers apart."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, bool]]]] = {}
        self.headers: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self._bold = False
        self._header = False
        self.images: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        elif tag == "table":
            self._table = a.get("id") or f"table{len(self.tables)}"
            self.tables[self._table], self.headers[self._table] = [], []
        elif tag == "tr" and self._table:
            self._row: list = []
        elif tag in ("td", "th") and self._table:
            self._cell, self._bold, self._header = [], False, tag == "th"
        elif tag == "b" and self._cell is not None:
            self._bold = True

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None:
            text = "".join(self._cell).strip()
            self._row.append(text if self._header else (text, self._bold))
            self._cell = None
        elif tag == "tr" and self._table:
            target = self.headers if self._row and isinstance(self._row[0], str) else self.tables
            target[self._table].append(self._row)
        elif tag == "table":
            self._table = None


def parse_html(text: str) -> TableParser:
    parser = TableParser()
    parser.feed(text)
    return parser
