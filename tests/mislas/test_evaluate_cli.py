"""``python -m mislas evaluate``: reference files against a hand-computed forward, our files against
the metrics ``mislas.train`` wrote for them, and bad input exiting with 2 and one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mislas.__main__ import main as mislas_main
from mislas.data import load_dataset
from mislas.train import main as train_main
from tests.mislas.reference_files import ref_resnet32_logits, ref_resnet32_state, save_reference

REPO = Path(__file__).resolve().parents[2]
CIFAR_ARGS = ("--dataset", "cifar10_lt", "--imb-factor", "10", "--set", "data.n_max=20", "--set", "data.val_per_class=2")


def _cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mislas", *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def _one_line_error(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    assert mislas_main([str(a) for a in args]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    return lines[0]


def test_reference_stage2_file_is_scored_like_its_own_forward(tmp_path: Path, make_cifar) -> None:
    root = make_cifar(tmp_path / "cifar", num_classes=10, per_class=30, test_per_class=3)
    model, classifier = ref_resnet32_state(10, seed=20)
    scale = 0.5 + torch.rand(10, generator=torch.Generator().manual_seed(21))
    ckpt = save_reference(tmp_path / "model_best.pth.tar", model, classifier, scale=scale)
    out = tmp_path / "eval"
    proc = _cli("evaluate", "--checkpoint", ckpt, *CIFAR_ARGS, "--data-root", root, "--device", "cpu", "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["checkpoint_kind"] == "reference-stage2"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint_kind"] == "reference-stage2" and metrics["arch"] == "resnet32"

    data = load_dataset("cifar10_lt", root, imb_factor=10, n_max=20, val_per_class=2)
    mean, std = torch.tensor(data.mean)[:, None, None], torch.tensor(data.std)[:, None, None]
    for split in ("val", "test"):
        images = getattr(data, split).images.permute(0, 3, 1, 2).float() / 255
        labels = getattr(data, split).labels
        logits = ref_resnet32_logits(model, classifier, (images - mean) / std, scale)
        acc = 100 * float((logits.argmax(1) == labels).float().mean())
        nll = float(F.cross_entropy(logits, labels))
        assert metrics[split]["acc"] == pytest.approx(acc, abs=1e-6)
        assert metrics[split]["nll"] == pytest.approx(nll, rel=1e-4)


def test_our_checkpoints_reproduce_the_train_metrics(tmp_path: Path, make_fashion_mnist,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root = make_fashion_mnist(tmp_path / "fm", per_class=50, test_per_class=4)
    run = tmp_path / "run"
    common = ["--dataset", "fashion_mnist_lt", "--data-root", str(root), "--imb-factor", "10",
              "--set", "data.n_max=40", "--set", "data.val_per_class=4"]
    assert train_main([*common, "--out", str(run), "--preset", "smoke", "--set", "stage1.epochs=1",
                       "--set", "stage2.epochs=1", "--set", "stage2.batch_size=32", "--device", "cpu", "--quiet"]) == 0
    trained = json.loads((run / "metrics-mislas.json").read_text())
    capsys.readouterr()

    for ckpt, expected in ((run / "stage1" / "stage1.pt", trained["stage1"]),
                           (run / "stage2-mislas" / "stage2.pt", trained)):
        out = tmp_path / f"eval-{ckpt.stem}"
        assert mislas_main(["evaluate", "--checkpoint", str(ckpt), *common[:4], "--out", str(out)]) == 0, \
            capsys.readouterr().err
        metrics = json.loads((out / "metrics.json").read_text())
        for split in ("val", "test"):
            for key in ("acc", "ece", "nll", "acc_medium", "acc_few"):
                assert metrics[split][key] == pytest.approx(expected[split][key], rel=1e-6, abs=1e-9), (ckpt, key)
    assert metrics["checkpoint_kind"] == "mislas-stage2" and metrics["method"] == "mislas"
    assert metrics["stage1_checkpoint"] == str(run / "stage1" / "stage1.pt")


def test_bad_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], make_cifar) -> None:
    out = ("--out", tmp_path / "o")
    missing = tmp_path / "missing.pth"
    assert str(missing) in _one_line_error(capsys, "evaluate", "--checkpoint", missing, "--dataset", "cifar10_lt", *out)
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    assert "junk.pth" in _one_line_error(capsys, "evaluate", "--checkpoint", junk, "--dataset", "cifar10_lt", *out)
    other = tmp_path / "other.pth"
    torch.save({"weights": torch.zeros(2)}, other)
    assert "neither" in _one_line_error(capsys, "evaluate", "--checkpoint", other, "--dataset", "cifar10_lt", *out)

    root = make_cifar(tmp_path / "cifar", num_classes=10, per_class=30, test_per_class=3)
    model, classifier = ref_resnet32_state(10, seed=22)
    ckpt = save_reference(tmp_path / "r32.pth.tar", model, classifier)
    line = _one_line_error(capsys, "evaluate", "--checkpoint", ckpt, *CIFAR_ARGS, "--data-root", root, "--arch",
                           "resnet50", *out)
    assert "r32.pth.tar" in line and "state_dict_model/" in line
    assert "mnist_lt" in _one_line_error(capsys, "evaluate", "--checkpoint", ckpt, "--dataset", "mnist_lt", *out)

    stage2 = tmp_path / "lonely" / "stage2-lws" / "stage2.pt"
    stage2.parent.mkdir(parents=True)
    torch.save({"format_version": 1, "kind": "stage2", "members": [{"head": {}}],
                "config": {"data": {"dataset": "cifar10_lt", "imb_factor": 10.0, "n_max": 20, "val_per_class": 2},
                           "stage2": {"method": "lws"}}, "data_fingerprint": "x"}, stage2)
    line = _one_line_error(capsys, "evaluate", "--checkpoint", stage2, "--dataset", "cifar10_lt", "--data-root", root,
                           *out)
    assert "stage2.pt" in line and "--stage1-checkpoint" in line
    with pytest.raises(SystemExit) as exc:  # argparse's own errors: exit 2, one line too
        mislas_main(["evaluate", "--dataset", "cifar10_lt", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and "--checkpoint" in err[0]
