"""The names and rules the library and the study's report share, free of torch.

Why one module: the report (``study.reporting``) may import neither torch nor Ray, so it used
to restate the related-function forms, the related function itself, the Many / Medium / Few
rule and the trial row ids; copies drift. Everything here imports only the standard library
and numpy, so both sides import it. ``mislas.config``, ``mislas.las`` and ``mislas.splits``
re-export these names where they lived before.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np

Method = Literal["mislas", "ce", "crt", "lws", "tau_norm"]
Form = Literal["concave", "linear", "convex", "exp"]
LasTarget = Literal["paper", "reference"]
SplitName = Literal["many", "medium", "few"]

METHODS: tuple[str, ...] = get_args(Method)
TRAINED_METHODS: tuple[str, ...] = ("mislas", "crt", "lws")
"""Methods that train in Stage 2 (the others, ``ce`` and ``tau_norm``, have no Stage-2 epochs)."""
FORMS: tuple[str, ...] = get_args(Form)
TARGETS: tuple[str, ...] = get_args(LasTarget)
SPLIT_NAMES: tuple[str, ...] = get_args(SplitName)
DEFAULT_N_BINS = 15
"""Equal-width confidence bins of ECE / MCE / reliability by default (``eval.n_bins``; the paper's 15)."""
# Quantile levels of the top-label confidence per split (mislas.metrics.confidence_by_split),
# with their keys: the columns of confidence.parquet and the report's boxes.
CONFIDENCE_QUANTILES: tuple[tuple[str, float], ...] = (
    ("q05", 0.05),
    ("q25", 0.25),
    ("q50", 0.50),
    ("q75", 0.75),
    ("q95", 0.95),
)


# --- the related function ε_y = f(N_y) -----------------------------------------------------

def related_function(counts: Sequence[float] | np.ndarray, eps_1: float, eps_k: float, form: str = "concave",
                     p: float | None = None) -> np.ndarray:
    """ε per class (float64) for class counts ``counts``: seed Eq. 3.a (concave), 3.b, 3.c and 7 (exp).

    x = (N_y − N_K) / (N_1 − N_K) with N_1 the largest and N_K the smallest count, so every form
    gives f(N_1) = ε_1 and f(N_K) = ε_K. Balanced counts (N_1 = N_K) leave x undefined; every
    class then gets ε_1 (the reference code gives NaN). ``p`` is read by ``exp`` only. The
    caller checks ε and the counts (:func:`mislas.las.related_function` does, with one-line
    errors); this checks the form and ``p``.

    >>> related_function(np.array([100, 10]), 0.4, 0.1, "linear").round(3).tolist()
    [0.4, 0.1]
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
    if form == "exp" and (p is None or not p > 0):
        raise ValueError(f"p > 0 must hold for form='exp', got p={p!r}")
    n = np.asarray(counts, dtype=np.float64)
    n_1, n_k = n.max(), n.min()
    if n_1 == n_k:
        return np.full(n.shape, float(eps_1))
    x = (n - n_k) / (n_1 - n_k)
    if form == "concave":  # Eq. 3.a
        eps = eps_k + (eps_1 - eps_k) * np.sin(np.pi / 2 * x)
    elif form == "linear":  # Eq. 3.b
        eps = eps_k + (eps_1 - eps_k) * x
    elif form == "convex":  # Eq. 3.c
        eps = eps_1 + (eps_1 - eps_k) * np.sin(3 * np.pi / 2 + np.pi / 2 * x)
    else:  # Eq. 7
        eps = eps_k + (eps_1 - eps_k) * np.power(x, float(p))  # type: ignore[arg-type]
    return np.asarray(eps, dtype=np.float64)


# --- Many / Medium / Few ---------------------------------------------------------------------

def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclass(frozen=True)
class SplitRule:
    """Which classes are Many, Medium and Few, from their training counts.

    The documented definition (seed, Sec. A) uses thresholds: Many > ``many_above`` (100),
    Medium ``few_below``..``many_above``, Few < ``few_below`` (20). ``index_ranges=(n_many,
    n_medium)`` is the reference code's rule instead: classes sorted by descending count, the
    first ``n_many`` Many, the next ``n_medium`` Medium, the rest Few. ``eval.many_above``,
    ``eval.few_below`` and ``eval.index_ranges`` of a run config build one
    (:attr:`mislas.config.EvalConfig.split_rule`).
    """

    many_above: int = 100
    few_below: int = 20
    index_ranges: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        for name in ("many_above", "few_below"):
            value = getattr(self, name)
            if not _is_int(value) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.few_below > self.many_above + 1:
            raise ValueError(f"few_below <= many_above + 1 must hold, got few_below={self.few_below}, "
                             f"many_above={self.many_above}")
        r = self.index_ranges
        if r is not None and not (isinstance(r, tuple) and len(r) == 2 and all(_is_int(v) and v >= 0 for v in r)):
            raise ValueError(f"index_ranges must be None or two integers >= 0 (n_many, n_medium), got {r!r}")

    def classes(self, counts: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
        """Sorted class indices of each split (keys :data:`SPLIT_NAMES`); a split may be empty.

        >>> {k: v.tolist() for k, v in SplitRule().classes([500, 50, 10, 101]).items()}
        {'many': [0, 3], 'medium': [1], 'few': [2]}
        """
        counts_arr = np.asarray(counts, dtype=np.int64)
        if counts_arr.ndim != 1 or counts_arr.size == 0:
            raise ValueError(f"counts must be a non-empty 1-D sequence, got shape {counts_arr.shape}")
        if self.index_ranges is not None:
            n_many, n_medium = self.index_ranges
            if n_many + n_medium > counts_arr.size:
                raise ValueError(f"index_ranges must be non-negative and sum to at most {counts_arr.size}, "
                                 f"got {self.index_ranges}")
            order = np.argsort(-counts_arr, kind="stable")
            return {"many": np.sort(order[:n_many]), "medium": np.sort(order[n_many:n_many + n_medium]),
                    "few": np.sort(order[n_many + n_medium:])}
        idx = np.arange(counts_arr.size)
        return {"many": idx[counts_arr > self.many_above],
                "medium": idx[(counts_arr >= self.few_below) & (counts_arr <= self.many_above)],
                "few": idx[counts_arr < self.few_below]}

    def describe(self) -> str:
        """The rule in words, for captions.

        >>> SplitRule().describe()
        '> 100, 20–100, < 20 training images'
        >>> SplitRule(index_ranges=(36, 35)).describe()
        'the 36 / next 35 / other classes by training count'
        """
        if self.index_ranges is not None:
            n_many, n_medium = self.index_ranges
            return f"the {n_many} / next {n_medium} / other classes by training count"
        return f"> {self.many_above}, {self.few_below}–{self.many_above}, < {self.few_below} training images"


DEFAULT_SPLIT_RULE = SplitRule()


# --- rows and devices ------------------------------------------------------------------------

def member_row_ids(trial_id: str, n_members: int) -> list[str]:
    """The trials rows (and Optuna trials) of a Tune trial with ``n_members`` Stage-2 members.

    One member keeps the trial's id; a group numbers its members ``<trial>-g<k>``.

    >>> member_row_ids("t1", 1), member_row_ids("t1", 2)
    (['t1'], ['t1-g0', 't1-g1'])
    """
    if n_members < 1:
        raise ValueError(f"n_members must be >= 1, got {n_members}")
    return [trial_id] if n_members == 1 else [f"{trial_id}-g{k}" for k in range(n_members)]


def device_name(device: object) -> str:
    """A device as runs record it (``device_name`` column, metrics.json): the GPU's name, or the CPU's.

    ``device`` is a ``torch.device`` (read by its ``type``). torch is imported when this is
    called, not when this module is, so the report imports the module without torch.
    """
    import torch

    if getattr(device, "type", None) == "cuda":
        return str(torch.cuda.get_device_name(device))  # type: ignore[arg-type]
    return f"cpu ({torch.get_num_threads()} threads, {platform.machine()})"
