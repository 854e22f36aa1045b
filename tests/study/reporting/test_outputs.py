"""The report's files, figures, CLI contract, partial studies and import hygiene."""

from __future__ import annotations

import base64
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from study.reporting import FORMATS, NoStudyError, UnknownFormatError, build_report
from study.reporting.load import TRIAL_COLUMNS
from tests.study.reporting.report_fixture import DEFAULT_GROUPS, distinct_colours, full_report, make_study, parse_html

REPO = Path(__file__).resolve().parents[3]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SMALL = (DEFAULT_GROUPS[2],)  # fashion_mnist_lt, one seed: quick to build


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "study.report", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def assert_real_png(data: bytes, name: str) -> None:
    """Non-empty, a PNG, and not a single colour."""
    assert len(data) > 0 and data.startswith(PNG_MAGIC), name
    assert distinct_colours(data) > 8, f"{name} is (nearly) one colour"


def test_all_formats_written():
    result = full_report()
    names = {p.name for p in result.files}
    assert {"report.html", "report.md", "tables.tex"} <= names
    for path in result.files:
        assert path.is_file() and path.stat().st_size > 0


def test_figures_exist_and_are_not_blank():
    result = full_report()
    pngs = [p for p in result.files if p.suffix == ".png"]
    assert len(pngs) == len(result.document.figures) >= 20
    for path in pngs:
        assert_real_png(path.read_bytes(), path.name)
    kinds = {p.stem.split("resnet32-")[-1] for p in pngs}
    assert {"eps-heatmaps", "related-functions", "effects", "importances", "pareto", "history", "reliability",
            "weight-norms", "confidence"} <= kinds


def test_html_is_self_contained_and_every_image_decodes():
    result = full_report()
    text = (result.out_dir / "report.html").read_text()
    parsed = parse_html(text)
    assert len(parsed.images) == len(result.document.figures)
    for src in parsed.images:
        assert src.startswith("data:image/png;base64,")
        assert_real_png(base64.b64decode(src.split(",", 1)[1]), "html image")
    assert "<script" not in text and "http://" not in text and "https://" not in text


def test_markdown_links_point_to_written_pngs():
    result = full_report()
    md = (result.out_dir / "report.md").read_text()
    for art in result.document.figures:
        assert f"](figures/{art.name}.png)" in md
        assert (result.out_dir / "figures" / f"{art.name}.png").is_file()


def test_default_out_dir_and_formats_subset(tmp_path):
    study = make_study(tmp_path, groups=SMALL, running=0)
    run = _cli(str(study), "--formats", "html,tex")
    assert run.returncode == 0, run.stderr
    out = study / "report"
    assert (out / "report.html").is_file() and (out / "tables.tex").is_file()
    assert not (out / "report.md").exists() and not (out / "figures").exists()


def test_empty_dir_exits_2_and_says_what_it_expected(tmp_path):
    run = _cli(str(tmp_path))
    assert run.returncode == 2
    assert "trials.parquet" in run.stderr and str(tmp_path) in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1
    with pytest.raises(NoStudyError):
        build_report(tmp_path, tmp_path / "out", FORMATS)
    assert _cli(str(tmp_path / "missing")).returncode == 2


def test_unknown_format_exits_2_naming_it(tmp_path):
    study = make_study(tmp_path, groups=SMALL, running=0)
    run = _cli(str(study), "--formats", "html,pdf")
    assert run.returncode == 2 and "'pdf'" in run.stderr
    assert not (study / "report").exists()
    with pytest.raises(UnknownFormatError, match="docx"):
        build_report(study, tmp_path / "out", ["docx"])


def test_partial_study_without_optional_files(tmp_path):
    """Only trials.parquet and study.json: no classes, reliability, epochs or Optuna journal."""
    study = make_study(tmp_path, groups=SMALL, with_optuna=False, running=0, stop_rate=0.3, fail_rate=0.3,
                       drop=("classes.parquet", "reliability.parquet", "epochs.parquet"))
    result = build_report(study, tmp_path / "out", FORMATS)
    html = (tmp_path / "out" / "report.html").read_text()
    assert "classes.parquet not found" in html and "optuna.log not found" in html
    g = result.tables.groups[0]
    assert g.importances.table is None and not g.reliability and not g.norms and g.forms is None
    trials = pd.read_parquet(study / "trials.parquet")
    assert result.tables.status.counts.loc["all", "total"] == len(trials)
    assert {"stopped_early", "failed"} <= set(trials["status"])


def test_partial_study_mid_run(tmp_path):
    """A study still running: Optuna RUNNING trials, many stopped/failed ones, listed apart."""
    study = make_study(tmp_path, groups=SMALL, running=3, stop_rate=0.4, fail_rate=0.3)
    result = build_report(study, tmp_path / "out", ["html"])
    status = result.tables.status
    assert status.n_running == 3
    parsed = parse_html((tmp_path / "out" / "report.html").read_text())
    trials = pd.read_parquet(study / "trials.parquet")
    assert len(parsed.tables["running"]) == 3
    assert len(parsed.tables.get("failed", [])) == (trials["status"] == "failed").sum()
    assert len(parsed.tables.get("stopped", [])) == (trials["status"] == "stopped_early").sum()


def test_study_with_no_finished_trial(tmp_path):
    study = tmp_path / "fresh"
    study.mkdir()
    pd.DataFrame({c: pd.Series(dtype=object) for c in TRIAL_COLUMNS}).to_parquet(study / "trials.parquet")
    result = build_report(study, tmp_path / "out", FORMATS)
    assert result.tables.groups == ()
    assert "none finished yet" in (tmp_path / "out" / "report.html").read_text()


_HEAVY = "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'ray')); assert not bad, bad"


def _fresh(code: str) -> subprocess.CompletedProcess[str]:
    """``code`` in a fresh interpreter (nothing imported yet), from the repository root."""
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_no_torch_or_ray_imported(tmp_path):
    """The report's rule: no torch, no Ray, from importing study.reporting to a built report."""
    study = make_study(tmp_path, groups=SMALL, running=0)
    code = ("import sys, study.reporting, study.report; from pathlib import Path; "
            f"{_HEAVY}; "
            f"study.report.build_report(Path({str(study)!r}), Path({str(tmp_path / 'o')!r}), ['html', 'md', 'tex']); "
            f"{_HEAVY}; assert 'mislas.spec' in sys.modules")  # the report's one copy of the shared names
    run = _fresh(code)
    assert run.returncode == 0, run.stderr


def test_report_cli_module_imports_no_torch_or_ray(tmp_path):
    """``python -m study.report`` as a module run (``__main__``), then the same check."""
    study = make_study(tmp_path, groups=SMALL, running=0)
    code = ("import runpy, sys; "
            f"sys.argv = ['study.report', {str(study)!r}, '--out', {str(tmp_path / 'o')!r}, '--formats', 'md']; "
            "rc = None\n"
            "try:\n    runpy.run_module('study.report', run_name='__main__')\n"
            "except SystemExit as exc:\n    rc = exc.code\n"
            f"assert rc == 0, rc\n{_HEAVY}")
    run = _fresh(code)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "o" / "report.md").is_file()


@pytest.mark.parametrize("module", ["mislas.spec", "mislas.atomic", "study.storage"])
def test_shared_modules_import_no_torch(module):
    """What the report imports of mislas (and storage, which imports mislas.atomic) is torch-free."""
    run = _fresh(f"import sys, importlib; importlib.import_module({module!r}); {_HEAVY}")
    assert run.returncode == 0, run.stderr
