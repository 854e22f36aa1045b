"""Search-space files (``search_spaces/<dataset>.yaml``) -> a validated space -> Optuna define-by-run.

A file names its data set and, for each MiSLAS Stage-2 knob, either a fixed value or what to
search::

    dataset: cifar10_lt
    eps_1: {low: 0.0, high: 0.5}            # ε_1, in [0, 1)
    eps_k: {low: 0.0, high: 0.3}            # ε_K, sampled in [low, min(high, ε_1)] so ε_K <= ε_1
    form: [concave, linear, convex, exp]    # related function
    p: {low: 0.25, high: 4.0, log: true}    # only sampled when form == exp (conditional)
    dw_ratio: {low: 0.01, high: 1.0, log: true}   # ΔW learning-rate ratio, log scale
    shift_bn: [true, false]
    las_target: [paper, reference]

Validation is by hand rather than with pydantic so that every failure is one line that names
the file and the key and states the rule, then the value (Optuna's style:
"``low <= high`` must hold, but got ..."). The Table 6 setting of the data set must lie in
the space, because the study always evaluates it first.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mislas.errors import UsageError
from mislas.las import FORMS, TARGETS
from study.records import Stage2Setting


def _space_dir() -> Path:
    """Return the folder of the shipped search-space files.

    The folder of the shipped space files: the ``search_spaces`` package (package data of the
    wheel, or the repository folder of that name when run from a checkout).
    """
    try:
        return Path(str(resources.files("search_spaces")))
    except ModuleNotFoundError:  # a partial copy of the code: the folder beside study/
        return Path(__file__).resolve().parent.parent / "search_spaces"


SPACE_DIR = _space_dir()
PARAM_KEYS = Stage2Setting.names()
ALLOWED_KEYS = ("dataset", "description", *PARAM_KEYS)
DEFAULT_P = {"low": 0.25, "high": 4.0, "log": True}


@dataclass(frozen=True)
class FloatParam:
    """A float searched in [low, high] (log scale if ``log``), or fixed when low == high and ``fixed``."""

    low: float
    high: float
    log: bool = False
    fixed: bool = False

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies in [low, high] (to within 1e-12)."""
        return self.low - 1e-12 <= value <= self.high + 1e-12

    def describe(self) -> str:
        """Describe the range (or the fixed value) in a few words."""
        if self.fixed:
            return f"fixed {self.low:g}"
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


@dataclass(frozen=True)
class ChoiceParam:
    """A categorical searched over ``choices`` (one choice = fixed)."""

    choices: tuple[Any, ...]

    @property
    def fixed(self) -> bool:
        """Whether there is only one choice."""
        return len(self.choices) == 1

    def contains(self, value: Any) -> bool:
        """Whether ``value`` is one of the choices, of the same type."""
        return any(value == c and type(value) is type(c) for c in self.choices)

    def describe(self) -> str:
        """Describe the choices (or the fixed one) in a few words."""
        return f"fixed {self.choices[0]!r}" if self.fixed else "{" + ", ".join(map(str, self.choices)) + "}"


@dataclass(frozen=True)
class SearchSpace:
    """A validated space for one data set; calling it on an Optuna trial samples a setting.

    Instances are picklable (Ray stores the searcher, and with it this define-by-run
    callable, in the experiment state).
    """

    dataset: str
    source: str
    eps_1: FloatParam
    eps_k: FloatParam
    form: ChoiceParam
    p: FloatParam
    dw_ratio: FloatParam
    shift_bn: ChoiceParam
    las_target: ChoiceParam

    # -- Optuna define-by-run ------------------------------------------------------------
    def __call__(self, trial: Any) -> dict[str, Any]:
        """Sample with ``trial.suggest_*``; returns the fixed and the derived values.

        ε_K's upper bound depends on the sampled ε_1 (a dynamic range, which Optuna supports);
        ``p`` is only suggested when the sampled form is ``exp`` and is None otherwise.
        """
        fixed: dict[str, Any] = {}
        eps_1 = self._float(trial, "eps_1", self.eps_1, fixed)
        if self.eps_k.fixed:
            fixed["eps_k"] = min(self.eps_k.low, eps_1)
        else:
            high = min(self.eps_k.high, eps_1)
            trial.suggest_float("eps_k", min(self.eps_k.low, high), high)
        form = self._choice(trial, "form", self.form, fixed)
        if Stage2Setting.uses_p(form):
            self._float(trial, "p", self.p, fixed)
        else:
            fixed["p"] = None
        self._float(trial, "dw_ratio", self.dw_ratio, fixed)
        self._choice(trial, "shift_bn", self.shift_bn, fixed)
        self._choice(trial, "las_target", self.las_target, fixed)
        return fixed

    @staticmethod
    def _float(trial: Any, name: str, param: FloatParam, fixed: dict[str, Any]) -> float:
        if param.fixed:
            fixed[name] = param.low
            return param.low
        return float(trial.suggest_float(name, param.low, param.high, log=param.log))

    @staticmethod
    def _choice(trial: Any, name: str, param: ChoiceParam, fixed: dict[str, Any]) -> Any:
        if param.fixed:
            fixed[name] = param.choices[0]
            return param.choices[0]
        return trial.suggest_categorical(name, list(param.choices))

    def searched_names(self, setting: Mapping[str, Any]) -> list[str]:
        """Names that Optuna suggests for ``setting`` (what ``points_to_evaluate`` may hold)."""
        names = [n for n in PARAM_KEYS if n != "p" and not getattr(self, n).fixed]
        if Stage2Setting.uses_p(setting.get("form", "")) and not self.p.fixed:
            names.append("p")
        return names

    def describe(self) -> dict[str, str]:
        """Describe each parameter's range or choices, by name."""
        return {name: getattr(self, name).describe() for name in PARAM_KEYS}


# --- loading and validation ---------------------------------------------------------------

def default_space_file(dataset: str) -> Path:
    """Return the shipped search-space file of ``dataset``."""
    return SPACE_DIR / f"{dataset}.yaml"


MAX_SPACE_BYTES = 1 << 20
"""The largest search-space file read (1 MiB): a real one is a few hundred bytes, and a larger
file (a data file given by mistake) is refused before YAML parses it into memory."""


def read_space_text(path: str | Path) -> str:
    """The file's text: UTF-8 and at most :data:`MAX_SPACE_BYTES`, else one :class:`UsageError` line."""
    where = str(path)
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_SPACE_BYTES + 1)
    except OSError as exc:
        raise UsageError(f"{where}: cannot read search space file ({exc.strerror or exc})") from None
    if len(data) > MAX_SPACE_BYTES:
        raise UsageError(f"{where}: search space file larger than {MAX_SPACE_BYTES >> 20} MiB; allowed: a small "
                         f"YAML file (search_spaces/*.yaml are under 2 KiB)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise UsageError(f"{where}: search space file is not UTF-8 text (byte {exc.start}: "
                         f"{data[exc.start:exc.start + 1]!r}); allowed: a UTF-8 YAML file") from None


def load_space(path: str | Path, *, dataset: str | None = None, table6: Stage2Setting | None = None) -> SearchSpace:
    """Read and validate a space file; every problem raises a one-line :class:`UsageError`.

    ``dataset`` (if given) must match the file's ``dataset``; ``table6`` (if given) must lie
    in the space.
    """
    path = Path(path)
    where = str(path)
    text = read_space_text(path)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"{where}: not valid YAML{at}") from None
    return parse_space(raw, where=where, dataset=dataset, table6=table6)


def parse_space(raw: Any, *, where: str, dataset: str | None = None,
                table6: Stage2Setting | None = None) -> SearchSpace:
    """Validate a parsed space file and build its SearchSpace; a problem is one UsageError line."""
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where}: must be a mapping of keys ({', '.join(ALLOWED_KEYS)}), got {type(raw).__name__}")
    for key in raw:
        if key not in ALLOWED_KEYS:
            raise UsageError(f"{where}: {key}: unknown key; allowed: {', '.join(ALLOWED_KEYS)}")
    file_dataset = raw.get("dataset")
    if not isinstance(file_dataset, str):
        raise UsageError(f"{where}: dataset: a data set name (string) is required, got {file_dataset!r}")
    if dataset is not None and file_dataset != dataset:
        raise UsageError(f"{where}: dataset: the file is for {file_dataset!r}, but it was given for {dataset!r}")
    missing = [k for k in PARAM_KEYS if k not in raw and k != "p"]
    if missing:
        raise UsageError(f"{where}: {missing[0]}: key is required (fixed value or search range)")

    eps_1 = _float_param(raw["eps_1"], where, "eps_1", lo=0.0, hi_open=1.0)
    eps_k = _float_param(raw["eps_k"], where, "eps_k", lo=0.0, hi_open=1.0)
    if eps_k.low > eps_1.low:
        raise UsageError(f"{where}: eps_k.low: eps_k.low <= eps_1.low must hold so that ε_K <= ε_1 can always be "
                         f"sampled, but got eps_k.low={eps_k.low:g}, eps_1.low={eps_1.low:g}")
    form = _choice_param(raw["form"], where, "form", allowed=FORMS)
    p = _float_param(raw.get("p", DEFAULT_P), where, "p", positive=True)
    dw_ratio = _float_param(raw["dw_ratio"], where, "dw_ratio", positive=True)
    shift_bn = _choice_param(raw["shift_bn"], where, "shift_bn", allowed=(True, False))
    las_target = _choice_param(raw["las_target"], where, "las_target", allowed=TARGETS)
    space = SearchSpace(file_dataset, where, eps_1, eps_k, form, p, dw_ratio, shift_bn, las_target)
    if table6 is not None:
        check_contains(space, table6)
    return space


def check_contains(space: SearchSpace, setting: Stage2Setting) -> None:
    """The Table 6 setting is evaluated first, so it must be a point of the space."""
    for name in Stage2Setting.names():
        value = getattr(setting, name)
        if name == "p" and value is None:
            continue  # p belongs to the exp form only
        param = getattr(space, name)
        if not param.contains(value):
            raise UsageError(
                f"{space.source}: {name}: the space ({param.describe()}) must contain the Table 6 value "
                f"{value!r} of {space.dataset}, which the study evaluates first"
            )


def _number(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where}: {key}: must be a number, got {value!r} ({type(value).__name__})")
    v = float(value)
    if not math.isfinite(v):
        raise UsageError(f"{where}: {key}: must be a finite number, got {value!r}")
    return v


def _float_range(value: Mapping[str, Any], where: str, key: str) -> FloatParam:
    """``{low, high[, log]}``: a searched float range."""
    for sub in value:
        if sub not in ("low", "high", "log"):
            raise UsageError(f"{where}: {key}.{sub}: unknown key; allowed: low, high, log")
    for sub in ("low", "high"):
        if sub not in value:
            raise UsageError(f"{where}: {key}.{sub}: key is required in a range")
    low = _number(value["low"], where, f"{key}.low")
    high = _number(value["high"], where, f"{key}.high")
    log = value.get("log", False)
    if not isinstance(log, bool):
        raise UsageError(f"{where}: {key}.log: must be true or false, got {log!r}")
    if low > high:
        raise UsageError(f"{where}: {key}: low <= high must hold, but got low={low:g}, high={high:g}")
    return FloatParam(low, high, log, fixed=False)


def _float_param(value: Any, where: str, key: str, *, lo: float | None = None, hi_open: float | None = None,
                 positive: bool = False) -> FloatParam:
    if isinstance(value, Mapping):
        param = _float_range(value, where, key)
        names = (f"{key}.low", f"{key}.high")
    else:
        v = _number(value, where, key)
        param = FloatParam(v, v, False, fixed=True)
        names = (key, key)
    for name, v in zip(names, (param.low, param.high)):
        if lo is not None and v < lo:
            raise UsageError(f"{where}: {name}: must lie in [{lo:g}, {hi_open:g}), got {v:g}")
        if hi_open is not None and v >= hi_open:
            raise UsageError(f"{where}: {name}: must lie in [{lo:g}, {hi_open:g}), got {v:g}")
        if positive and v <= 0:
            raise UsageError(f"{where}: {name}: must be > 0, got {v:g}")
    return param


def _choice_param(value: Any, where: str, key: str, *, allowed: Sequence[Any]) -> ChoiceParam:
    items = list(value) if isinstance(value, list) else [value]
    if not items:
        raise UsageError(f"{where}: {key}: must list at least one of {', '.join(map(str, allowed))}")
    for item in items:
        if not any(item == a and type(item) is type(a) for a in allowed):
            kind = "true or false" if isinstance(allowed[0], bool) else "one of " + ", ".join(map(str, allowed))
            raise UsageError(f"{where}: {key}: each value must be {kind}, got {item!r}")
    if len(set(items)) != len(items):
        raise UsageError(f"{where}: {key}: values must be distinct, got {items!r}")
    return ChoiceParam(tuple(items))
