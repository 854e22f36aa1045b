"""Files are data, never code: a planted pickle is refused on every path that reads a file.

The hostile file's ``__reduce__`` runs ``touch <marker>``: each path must exit 2 (or raise
:class:`UnsafeFileError`) with one line naming the file and the global, and the marker must not
exist. The first test shows the file really is hostile (an unrestricted load creates the
marker), so the others can fail. Real files throughout: checkpoints a real ``mislas.train``
wrote, CIFAR pickles in the official layout, the reference's layout with NumPy scalars.
"""

from __future__ import annotations

import pickle
import shutil
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from mislas.__main__ import main as mislas_main
from mislas.data import load_dataset
from mislas.errors import UsageError
from mislas.models import build_model
from mislas.reference import load_reference_checkpoint, read_checkpoint_file
from mislas.safe_load import (
    CIFAR_GLOBALS,
    TORCH_SAFE_GLOBALS,
    UnsafeFileError,
    load_cifar_pickle,
    load_torch_file,
    pickled_globals,
)
from mislas.train import main as train_main
from tests.mislas.hostile import SYSTEM, Hostile, plant
from tests.mislas.reference_files import ref_resnet32_logits, ref_resnet32_state, save_reference

FM_ARGS = ["--dataset", "fashion_mnist_lt", "--imb-factor", "10", "--set", "data.n_max=40",
           "--set", "data.val_per_class=4"]
TRAIN_ARGS = ["--preset", "smoke", "--set", "stage1.epochs=1", "--set", "stage2.epochs=1",
              "--set", "stage2.batch_size=32", "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, make_fashion_mnist) -> tuple[Path, Path]:
    """(data root, run folder) of one real two-stage smoke run."""
    base = tmp_path_factory.mktemp("safe")
    root = make_fashion_mnist(base / "fm", per_class=50, test_per_class=4)
    run = base / "run"
    assert train_main([*FM_ARGS, "--data-root", str(root), "--out", str(run), *TRAIN_ARGS]) == 0
    return root, run


def _refused(capsys: pytest.CaptureFixture[str], rc: int, hostile: Path, marker: Path) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2, err
    assert len(err) == 1, err
    assert str(hostile) in err[0] and SYSTEM in err[0], err[0]
    assert not marker.exists()
    return err[0]


def test_the_planted_file_really_runs_code(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    path = plant(tmp_path / "evil.pt", marker)
    torch.load(path, weights_only=False)  # what mislas.checkpoint did before: the command runs
    assert marker.exists()
    assert SYSTEM in pickled_globals(zipfile.ZipFile(path).read("evil/data.pkl"))


@pytest.mark.parametrize("variant", ["torch.save", "raw pickle protocol 2", "raw pickle protocol 4"])
def test_loader_refuses_naming_file_and_global(tmp_path: Path, variant: str) -> None:
    marker = tmp_path / "marker"
    path = tmp_path / "evil.pt"
    if variant == "torch.save":
        plant(path, marker)
    else:
        path.write_bytes(pickle.dumps({"model": Hostile(marker)}, protocol=int(variant[-1])))
    with pytest.raises(UnsafeFileError) as exc:
        load_torch_file(path)
    assert exc.value.path == path and exc.value.global_name == SYSTEM
    assert isinstance(exc.value, UsageError) and str(path) in str(exc.value) and "\n" not in str(exc.value)
    assert not marker.exists()


def test_evaluate_refuses_a_hostile_stage1_checkpoint(tmp_path: Path, trained: tuple[Path, Path],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    root, run = trained
    marker = tmp_path / "marker"
    hostile = plant(tmp_path / "given" / "stage1.pt", marker)
    rc = mislas_main(["evaluate", "--checkpoint", str(run / "stage2-mislas" / "stage2.pt"), *FM_ARGS[:4],
                      "--data-root", str(root), "--stage1-checkpoint", str(hostile), "--out", str(tmp_path / "e")])
    _refused(capsys, rc, hostile, marker)


def test_evaluate_refuses_a_hostile_stage1_beside_stage2(tmp_path: Path, trained: tuple[Path, Path],
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    root, run = trained
    copy = shutil.copytree(run, tmp_path / "run")
    marker = tmp_path / "marker"
    hostile = plant(copy / "stage1" / "stage1.pt", marker)
    rc = mislas_main(["evaluate", "--checkpoint", str(copy / "stage2-mislas" / "stage2.pt"), *FM_ARGS[:4],
                      "--data-root", str(root), "--out", str(tmp_path / "e")])
    _refused(capsys, rc, hostile, marker)


def test_evaluate_refuses_a_hostile_checkpoint(tmp_path: Path, trained: tuple[Path, Path],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root, _ = trained
    marker = tmp_path / "marker"
    hostile = plant(tmp_path / "model_best.pth.tar", marker)
    rc = mislas_main(["evaluate", "--checkpoint", str(hostile), *FM_ARGS[:4], "--data-root", str(root),
                      "--out", str(tmp_path / "e")])
    _refused(capsys, rc, hostile, marker)


@pytest.mark.parametrize("planted", ["stage1/stage1.pt", "stage1/stage1.partial.pt", "stage2-mislas/stage2.pt",
                                     "--stage1-checkpoint"])
def test_train_rerun_refuses_a_hostile_file_it_finds(tmp_path: Path, trained: tuple[Path, Path], planted: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    root, run = trained
    copy = shutil.copytree(run, tmp_path / "run")
    (copy / "metrics-mislas.json").unlink()
    marker = tmp_path / "marker"
    extra: list[str] = []
    if planted == "--stage1-checkpoint":
        hostile = plant(tmp_path / "downloaded.pt", marker)
        extra = ["--stage1-checkpoint", str(hostile)]
    else:
        if planted.endswith("partial.pt"):
            (copy / "stage1" / "stage1.pt").unlink()  # an interrupted Stage 1: only the partial is there
        hostile = plant(copy / planted, marker, kind="stage2" if "stage2" in planted else "stage1")
    rc = train_main([*FM_ARGS, "--data-root", str(root), "--out", str(copy), *TRAIN_ARGS, *extra])
    _refused(capsys, rc, hostile, marker)
    assert not (copy / "metrics-mislas.json").exists()


def test_pretrained_weights_are_read_weights_only(tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    hostile = plant(tmp_path / "resnet50.pth", marker)
    with pytest.raises(UnsafeFileError, match="resnet50.pth: refused, it holds " + SYSTEM):
        build_model("resnet50", 10, pretrained=str(hostile))
    assert not marker.exists()


# --- CIFAR python pickles ---------------------------------------------------------------------

def py2_cifar_batch(data: np.ndarray, labels: list[int], key: bytes = b"labels") -> bytes:
    """A batch as the official archives hold it: Python 2 cPickle protocol 2, NumPy 1.x names,
    byte strings as SHORT_BINSTRING / BINSTRING (written opcode by opcode)."""
    def string(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b if len(b) < 256 else b"T" + struct.pack("<I", len(b)) + b

    n, width = data.shape
    array = (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + string(b"b") + b"\x87R("
             b"K\x01J" + struct.pack("<i", n) + b"J" + struct.pack("<i", width) + b"\x86"
             b"cnumpy\ndtype\n" + string(b"u1") + b"K\x00K\x01\x87R(K\x03" + string(b"|") +
             b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89" + string(data.tobytes()) + b"tb")
    label_list = b"](" + b"".join(b"K" + bytes([c]) for c in labels) + b"e"
    names = b"](" + b"".join(string(f"img_{i}.png".encode()) for i in range(n)) + b"e"
    return (b"\x80\x02}(" + string(b"batch_label") + string(b"training batch 1 of 5") + string(b"data") + array
            + string(key) + label_list + string(b"filenames") + names + b"u.")


def test_the_official_python2_batch_format_loads(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    data = rng.integers(0, 256, size=(7, 3072), dtype=np.uint8)
    labels = [int(c) for c in rng.integers(0, 10, size=7)]
    path = tmp_path / "data_batch_1"
    path.write_bytes(py2_cifar_batch(data, labels))
    assert pickle.loads(path.read_bytes(), encoding="bytes")[b"labels"] == labels  # the bytes are a real pickle
    entry = load_cifar_pickle(path)
    assert sorted(entry) == [b"batch_label", b"data", b"filenames", b"labels"]
    assert np.array_equal(entry[b"data"], data) and entry[b"data"].dtype == np.uint8 and entry[b"labels"] == labels
    assert entry[b"filenames"][6] == b"img_6.png"
    assert set(pickled_globals(path.read_bytes())) == {"numpy.core.multiarray._reconstruct", "numpy.ndarray",
                                                        "numpy.dtype"}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_python3_repickled_batches_load(tmp_path: Path, protocol: int) -> None:
    data = np.arange(3 * 3072, dtype=np.uint8).reshape(3, 3072) % 251
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": data, b"labels": [0, 1, 2], b"batch_label": b"x"}, protocol=protocol))
    assert set(pickled_globals(path.read_bytes())) <= {f"{m}.{n}" for m, n in CIFAR_GLOBALS}
    entry = load_cifar_pickle(path)
    assert np.array_equal(entry[b"data"], data) and entry[b"labels"] == [0, 1, 2] and entry[b"batch_label"] == b"x"


def test_cifar_loader_refuses_a_hostile_batch(tmp_path: Path, make_cifar, capsys: pytest.CaptureFixture[str]) -> None:
    root = make_cifar(tmp_path / "cifar", num_classes=10, per_class=30, test_per_class=3)
    marker = tmp_path / "marker"
    hostile = root / "cifar-10-batches-py" / "data_batch_3"
    hostile.write_bytes(pickle.dumps({b"data": Hostile(marker), b"labels": [0]}, protocol=2))
    with pytest.raises(UnsafeFileError) as exc:
        load_dataset("cifar10_lt", root, imb_factor=10, n_max=20, val_per_class=2)
    assert exc.value.path == hostile and exc.value.global_name == SYSTEM and not marker.exists()
    rc = train_main(["--dataset", "cifar10_lt", "--imb-factor", "10", "--data-root", str(root),
                     "--out", str(tmp_path / "out"), *TRAIN_ARGS])
    _refused(capsys, rc, hostile, marker)


def test_cifar_loader_refuses_object_arrays(tmp_path: Path) -> None:
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": np.array([1, "x"], dtype=object)}, protocol=2))
    with pytest.raises(UsageError, match=r"batch: cannot read a CIFAR python pickle .*numpy.dtype '\|O'"):
        load_cifar_pickle(path)


# --- the reference's files: NumPy scalars stay allowed ------------------------------------------

def as_numpy1_file(src: Path, dst: Path) -> Path:
    """``src`` as a NumPy 1.x process would have written it: ``numpy.core.multiarray.scalar``."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            blob = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in blob  # this NumPy (2.x) names the new module
                blob = blob.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            zout.writestr(info.filename, blob)
    return dst


def test_numpy_scalars_are_the_only_extra_globals(tmp_path: Path) -> None:
    path = tmp_path / "scalars.pt"
    values = {"f8": np.float64(47.25), "f4": np.float32(1.5), "i8": np.int64(7), "i4": np.int32(-3)}
    torch.save(values, path)
    with pytest.raises(pickle.UnpicklingError):  # torch alone refuses them: the list is what allows them
        torch.load(path, weights_only=True)
    for p in (path, as_numpy1_file(path, tmp_path / "numpy1.pt")):
        got = load_torch_file(p)
        assert got == values and all(type(got[k]) is type(v) for k, v in values.items())
    names = {n for obj in TORCH_SAFE_GLOBALS for n in ([obj[1]] if isinstance(obj, tuple) else [obj.__name__])}
    assert names == {"numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar", "dtype", "Float64DType",
                     "Float32DType", "Int64DType", "Int32DType"}
    torch.save({"a": np.array([1.0, 2.0])}, tmp_path / "array.pt")  # an array is not among them
    with pytest.raises(UnsafeFileError, match=r"array.pt: refused, it holds numpy\._core\.multiarray\._reconstruct"):
        load_torch_file(tmp_path / "array.pt")


def test_reference_file_with_numpy_best_acc1_still_loads(tmp_path: Path) -> None:
    """As the reference's ``save_checkpoint`` writes it (torch.save of a dict) with ``best_acc1``
    and ``its_ece`` NumPy float64, by NumPy 1.x: the model still gives the reference logits."""
    model, classifier = ref_resnet32_state(10, seed=30)
    scale = 0.5 + torch.rand(10, generator=torch.Generator().manual_seed(31))
    src = save_reference(tmp_path / "src.pth.tar", model, classifier, scale=scale)
    payload = load_torch_file(src) | {"best_acc1": np.float64(47.25)}
    torch.save(payload, src)
    path = as_numpy1_file(src, tmp_path / "model_best.pth.tar")
    top = read_checkpoint_file(path)
    assert type(top["best_acc1"]) is np.float64 and top["best_acc1"] == 47.25 and top["its_ece"] == np.float64(4.83)
    net = load_reference_checkpoint(path, "resnet32", 10)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(32))
    with torch.no_grad():
        assert torch.allclose(net(x), ref_resnet32_logits(model, classifier, x, scale), atol=1e-4, rtol=1e-4)


def test_our_files_hold_only_allowed_globals(trained: tuple[Path, Path]) -> None:
    """What mislas.train writes needs nothing beyond torch's weights-only set."""
    _, run = trained
    files = sorted(run.rglob("*.pt"))
    assert {f.name for f in files} == {"stage1.pt", "stage2.pt"}
    for f in files:
        with zipfile.ZipFile(f) as zf:
            blob = zf.read(next(n for n in zf.namelist() if n.endswith("data.pkl")))
        assert not any(n.startswith("numpy") for n in pickled_globals(blob)), f
        assert load_torch_file(f)["format_version"] == 1
