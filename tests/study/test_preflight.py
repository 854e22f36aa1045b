"""The checks before Ray starts: data sets load, and pretrained weights exist without a download."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from mislas.errors import UsageError
from mislas.models import pretrained_problem
from study import cli
from study.preflight import check_data

PLACES_WEIGHTS = "resnet152-394f9c45.pth"  # torchvision's ResNet152_Weights.IMAGENET1K_V1 file name


@pytest.fixture()
def hub(tmp_path: Path) -> Iterator[Path]:
    old = torch.hub.get_dir()
    torch.hub.set_dir(str(tmp_path / "hub"))
    try:
        yield tmp_path / "hub" / "checkpoints"
    finally:
        torch.hub.set_dir(old)


def test_pretrained_problem_reads_and_downloads_nothing(hub: Path, tmp_path: Path) -> None:
    assert pretrained_problem("resnet32", None) is None and pretrained_problem("resnet50", None) is None
    assert "no such file /nope.pth" in (pretrained_problem("resnet152_places", "/nope.pth") or "")
    missing = pretrained_problem("resnet152_places", None) or ""
    assert str(hub / PLACES_WEIGHTS) in missing and "--set stage1.pretrained=PATH" in missing
    hub.mkdir(parents=True)
    (hub / PLACES_WEIGHTS).write_bytes(b"weights")  # present: nothing is opened
    assert pretrained_problem("resnet152_places", None) is None
    assert not list(tmp_path.glob("hub/checkpoints/*.partial"))  # no download started


def test_places_study_without_weights_stops_before_ray(hub: Path, image_tree: Path, tmp_path: Path) -> None:
    base = ["--dataset", "places_lt", "--budget", "smoke", "--data-root", str(image_tree)]
    with pytest.raises(UsageError, match=r"^--dataset places_lt: resnet152_places needs torchvision's ImageNet"):
        check_data(cli.parse(base))
    weights = tmp_path / "r152.pth"
    weights.write_bytes(b"x")
    fingerprints = check_data(cli.parse([*base, "--set", f"stage1.pretrained={weights}"]))
    assert set(fingerprints) == {"places_lt"} and len(fingerprints["places_lt"]) >= 8
    given = tmp_path / "stage1.pt"
    given.write_bytes(b"x")
    # a given Stage 1 needs no pretrained weights, and is itself read before Ray starts (weights-only)
    with pytest.raises(UsageError) as exc:
        check_data(cli.parse([*base, "--stage1-checkpoint", str(given), "--baseline-mixup", "on"]))
    assert str(exc.value).startswith(f"--stage1-checkpoint: checkpoint {given} cannot be read as a weights-only "
                                     "torch file"), exc.value
    assert "ImageNet" not in str(exc.value)


def test_a_broken_listed_image_stops_the_study_before_ray(image_tree: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "places"
    shutil.copytree(image_tree, root)
    weights = tmp_path / "r152.pth"
    weights.write_bytes(b"x")
    base = ["--dataset", "places_lt", "--budget", "smoke", "--data-root", str(root), "--set",
            f"stage1.pretrained={weights}"]
    listed = (root / "Places_LT_train.txt").read_text().splitlines()[-1].rsplit(" ", 1)[0]  # "path label"
    (root / listed).write_bytes(b"not an image")
    with pytest.raises(UsageError, match=rf"^--dataset places_lt: 1 of \d+ sampled listed images are missing or do "
                                         rf"not decode \(first: {root / listed}: cannot identify image file\)"):
        check_data(cli.parse(base))
