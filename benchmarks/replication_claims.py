"""The paper's claims, checked on a finished replication study's Parquet results (docs/replication.md).

Reads only the study folder (trials.parquet, classes.parquet) and prints, per claim, the numbers
it rests on (mean ± std over seeds, test split) and a verdict. Usage:

    python -m benchmarks.replication_claims runs/replication
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd


def _ms(values: pd.Series) -> str:
    v = values.astype(float)
    return f"{v.mean():.2f} ± {v.std(ddof=1):.2f} (n={len(v)})" if len(v) > 1 else f"{v.mean():.2f} (n={len(v)})"


def _rows(trials: pd.DataFrame, method: str, mixup: bool) -> pd.DataFrame:
    t = trials[(trials["method"] == method) & (trials["mixup"] == mixup) & trials["variant"].isna()]
    return t[t["status"] == "complete"]


def mixup_claim(trials: pd.DataFrame, classes: pd.DataFrame) -> list[str]:
    """Mixup raises the tail classes' weight norms and accuracy (CE vs CE+mixup, Few split)."""
    out = ["Claim 1: mixup raises tail (Few) classifier weight norms and accuracy (CE vs CE+mixup)."]
    for label, mixup in (("CE", False), ("CE+mixup", True)):
        ids = _rows(trials, "ce", mixup)["trial_id"]
        few = classes[classes["trial_id"].isin(ids) & (classes["split"] == "few")]
        norm = few.groupby("trial_id")["weight_norm"].mean()
        many = classes[classes["trial_id"].isin(ids) & (classes["split"] == "many")].groupby("trial_id")["weight_norm"].mean()
        out.append(f"  {label}: Few acc {_ms(_rows(trials, 'ce', mixup)['test_acc_few'])}; Few/Many mean weight-norm "
                   f"ratio {_ms(norm / many)}")
    return out


def calibration_claim(trials: pd.DataFrame) -> list[str]:
    """MiSLAS lowers ECE against cRT/LWS + mixup at equal or better accuracy."""
    out = ["Claim 2: MiSLAS lowers ECE vs cRT+mixup and LWS+mixup at equal or better accuracy."]
    mislas = trials[(trials["variant"] == "best_on_val") & (trials["status"] == "complete")]
    paper = trials[(trials["method"] == "mislas") & trials["is_paper_setting"] & (trials["status"] == "complete")]
    for label, rows in (("MiSLAS (best tuned, rerun per seed)", mislas), ("MiSLAS (Table 6)", paper),
                        ("cRT+mixup", _rows(trials, "crt", True)), ("LWS+mixup", _rows(trials, "lws", True))):
        out.append(f"  {label}: acc {_ms(rows['test_acc'])}, ECE {_ms(rows['test_ece'])}, NLL {_ms(rows['test_nll'])}")
    return out


def components_claim(trials: pd.DataFrame) -> list[str]:
    """Shift BN and LAS each help (component ablation on the mixup Stage 1)."""
    out = ["Claim 3: shift BN and LAS each help (component ablation, mixup Stage 1)."]
    rows = trials[trials["variant"].notna() & (trials["variant"] != "best_on_val") & (trials["status"] == "complete")]
    for name, grp in rows.groupby("variant"):
        out.append(f"  {name}: acc {_ms(grp['test_acc'])}, ECE {_ms(grp['test_ece'])}")
    return out


def forms_claim(trials: pd.DataFrame) -> list[str]:
    """The related-function form matters little (searched settings, validation accuracy)."""
    out = ["Claim 4: the related-function form matters little (searched settings, val acc by form)."]
    search = trials[(trials["method"] == "mislas") & trials["variant"].isna() & (trials["status"] == "complete")]
    for form, grp in search.groupby("form"):
        out.append(f"  {form}: val acc {_ms(grp['val_acc'])}, best {grp['val_acc'].max():.2f}")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("study", type=Path, help="a finished study folder (trials.parquet, classes.parquet)")
    args = p.parse_args(argv)
    try:
        trials = pd.read_parquet(args.study / "trials.parquet")
        classes = pd.read_parquet(args.study / "classes.parquet")
    except (OSError, ValueError) as exc:
        print(f"replication_claims: cannot read the study in {args.study}: {exc}", file=sys.stderr)
        return 2
    for block in (mixup_claim(trials, classes), calibration_claim(trials), components_claim(trials),
                  forms_claim(trials)):
        print("\n".join(block))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
