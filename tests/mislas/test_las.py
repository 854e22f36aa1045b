"""Contract tests for the related functions and label-aware smoothing.

Every expected value is derived here from the paper's equations (seed Eq. 7, 9, 12 and
Eq. 3.a–c), never read back from the code under test.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mislas.errors import UsageError
from mislas.las import FORMS, TARGETS, LabelAwareSmoothing, related_function

CIFAR100_B100 = [int(500 * 0.01 ** (i / 99)) for i in range(100)]
CIFAR10_B100 = [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]


def _form_kwargs(form: str) -> dict[str, float]:
    return {"p": 0.5} if form == "exp" else {}


def _minimise_logits(crit: torch.nn.Module, k: int, label: int) -> torch.Tensor:
    """Free K-vector of logits minimising the criterion for one sample, in float64."""
    z = torch.zeros(k, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [z], lr=1.0, max_iter=500, tolerance_grad=1e-13, tolerance_change=1e-16, line_search_fn="strong_wolfe"
    )
    y = torch.tensor([label])

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = crit(z.unsqueeze(0), y)
        loss.backward()
        return loss

    for _ in range(5):
        opt.step(closure)
    return z.detach()


# ---------------------------------------------------------------- optimum (Eq. 12)


@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3, 0.6, 0.9])
def test_paper_target_reaches_eq12_gap(eps: float) -> None:
    k = 10
    crit = LabelAwareSmoothing([100] * k, eps_1=eps, eps_k=0.0, target="paper").to(torch.float64)
    z = _minimise_logits(crit, k, label=3)
    gap = math.log((k - 1) * (1 - eps) / eps)  # Eq. 12
    others = torch.cat([z[:3], z[4:]])
    assert torch.allclose(z[3] - others, torch.full_like(others, gap), atol=1e-3, rtol=0)


@pytest.mark.parametrize("eps", [0.02, 0.1, 0.3, 0.6, 0.9])
def test_reference_target_reaches_its_own_gap(eps: float) -> None:
    """Reference loss (1−ε)·NLL + ε·mean_k(−log p_k) = −Σ_k q_k log p_k with
    q_y = 1 − ε + ε/K and q_i = ε/K (Σ q = 1). By Gibbs' inequality the minimum over the
    simplex is p = q, so z_y − z_i = log(q_y / q_i) = log((1 − ε + ε/K) / (ε/K))."""
    k = 10
    crit = LabelAwareSmoothing([100] * k, eps_1=eps, eps_k=0.0, target="reference").to(torch.float64)
    z = _minimise_logits(crit, k, label=7)
    gap = math.log((1 - eps + eps / k) / (eps / k))
    others = z[:7]
    assert torch.allclose(z[7] - others, torch.full_like(others, gap), atol=1e-3, rtol=0)
    assert torch.allclose(z[8:], z[:1].expand(2), atol=1e-3)


def test_paper_gap_uses_the_class_own_epsilon() -> None:
    """On imbalanced counts the optimum of a tail sample uses ε_K, a head sample ε_1."""
    counts = CIFAR10_B100
    k = len(counts)
    crit = LabelAwareSmoothing(counts, eps_1=0.3, eps_k=0.05, form="linear").to(torch.float64)
    for label, eps in ((0, 0.3), (k - 1, 0.05)):
        z = _minimise_logits(crit, k, label)
        gap = math.log((k - 1) * (1 - eps) / eps)
        others = torch.cat([z[:label], z[label + 1 :]])
        assert torch.allclose(z[label] - others, torch.full_like(others, gap), atol=1e-3, rtol=0)


# ---------------------------------------------------------------- related functions


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize(("eps_1", "eps_k"), [(0.4, 0.1), (0.3, 0.0), (0.05, 0.2)])
def test_endpoints(form: str, eps_1: float, eps_k: float) -> None:
    rng = np.random.default_rng(0)
    counts = rng.permutation(CIFAR100_B100)  # endpoints found by count, not by index
    eps = related_function(counts, eps_1, eps_k, form=form, **_form_kwargs(form))
    assert eps.dtype == torch.float32 and eps.shape == (100,)
    assert eps[int(np.argmax(counts))].item() == pytest.approx(eps_1, abs=1e-7)
    assert eps[int(np.argmin(counts))].item() == pytest.approx(eps_k, abs=1e-7)


@pytest.mark.parametrize("form", FORMS)
def test_forms_match_equations(form: str) -> None:
    """Eq. 3.a–c and Eq. 7, written in an equivalent form (convex via 1 − cos)."""
    n = np.array(CIFAR100_B100, dtype=np.float64)
    e1, ek, p = 0.4, 0.1, 0.5
    x = (n - 5.0) / (500.0 - 5.0)
    expected = {
        "concave": ek + (e1 - ek) * np.sin(np.pi * x / 2),
        "linear": ek + (e1 - ek) * x,
        "convex": ek + (e1 - ek) * (1.0 - np.cos(np.pi * x / 2)),
        "exp": ek + (e1 - ek) * np.sqrt(x),
    }[form]
    got = related_function(CIFAR100_B100, e1, ek, form=form, p=p).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6, rtol=0)


def test_exp_with_p_one_is_linear() -> None:
    a = related_function(CIFAR100_B100, 0.4, 0.1, form="exp", p=1.0)
    b = related_function(CIFAR100_B100, 0.4, 0.1, form="linear")
    torch.testing.assert_close(a, b, atol=1e-7, rtol=0)


def test_concave_linear_convex_order_on_cifar100_lt() -> None:
    cc = related_function(CIFAR100_B100, 0.4, 0.1, form="concave")
    li = related_function(CIFAR100_B100, 0.4, 0.1, form="linear")
    cv = related_function(CIFAR100_B100, 0.4, 0.1, form="convex")
    tol = 1e-7
    assert torch.all(cc >= li - tol) and torch.all(li >= cv - tol)
    interior = (torch.tensor(CIFAR100_B100) > 5) & (torch.tensor(CIFAR100_B100) < 500)
    assert torch.all(cc[interior] > li[interior]) and torch.all(li[interior] > cv[interior])


def test_exp_p_orders_around_linear() -> None:
    lo = related_function(CIFAR100_B100, 0.4, 0.1, form="exp", p=0.5)
    li = related_function(CIFAR100_B100, 0.4, 0.1, form="linear")
    hi = related_function(CIFAR100_B100, 0.4, 0.1, form="exp", p=2.0)
    assert torch.all(lo >= li - 1e-7) and torch.all(li >= hi - 1e-7)
    assert torch.sum(lo > li + 1e-3) > 50 and torch.sum(li > hi + 1e-3) > 50


@pytest.mark.parametrize("form", FORMS)
def test_balanced_counts_give_eps_1(form: str) -> None:
    eps = related_function([250] * 7, 0.3, 0.1, form=form, **_form_kwargs(form))
    assert not torch.isnan(eps).any()
    assert torch.equal(eps, torch.full((7,), 0.3, dtype=torch.float32))


def test_p_is_ignored_by_non_exp_forms() -> None:
    a = related_function(CIFAR10_B100, 0.3, 0.0, form="concave", p=3.0)
    b = related_function(CIFAR10_B100, 0.3, 0.0, form="concave")
    assert torch.equal(a, b)
    assert LabelAwareSmoothing(CIFAR10_B100, 0.3, 0.0, form="linear", p=3.0).p is None


INVALID = [
    ({"eps_1": 1.0}, "eps_1"),
    ({"eps_1": 1.2}, "eps_1"),
    ({"eps_1": -0.1}, "eps_1"),
    ({"eps_1": float("nan")}, "eps_1"),
    ({"eps_k": 1.0}, "eps_k"),
    ({"eps_k": -0.01}, "eps_k"),
    ({"form": "exp"}, "p"),
    ({"form": "exp", "p": 0.0}, "p"),
    ({"form": "exp", "p": -1.0}, "p"),
    ({"form": "quadratic"}, "form"),
    ({"counts": []}, "counts"),
    ({"counts": [10, 0, 3]}, "counts"),
    ({"counts": [10, -3]}, "counts"),
    ({"counts": [10, 2.5]}, "counts"),
    ({"counts": [[10, 3]]}, "counts"),
]


@pytest.mark.parametrize(("overrides", "arg"), INVALID)
def test_invalid_values_name_the_argument(overrides: dict[str, object], arg: str) -> None:
    kwargs: dict[str, object] = {"counts": CIFAR10_B100, "eps_1": 0.3, "eps_k": 0.0, "form": "concave"}
    kwargs.update(overrides)
    for make in (related_function, LabelAwareSmoothing):
        with pytest.raises(ValueError, match=rf"^{arg} ") as info:
            make(**kwargs)  # type: ignore[arg-type]
        assert isinstance(info.value, UsageError)


def test_messages_give_rule_and_value() -> None:
    with pytest.raises(ValueError, match=r"eps_1 must lie in \[0, 1\), got 1\.2"):
        related_function(CIFAR10_B100, 1.2, 0.0)
    with pytest.raises(ValueError, match="concave, linear, convex, exp"):
        related_function(CIFAR10_B100, 0.3, 0.0, form="quadratic")


def test_unknown_target_names_it() -> None:
    with pytest.raises(ValueError, match=r"^target .*paper, reference.*'paperr'"):
        LabelAwareSmoothing(CIFAR10_B100, 0.3, 0.0, target="paperr")


# ---------------------------------------------------------------- the loss


@pytest.mark.parametrize("target", TARGETS)
def test_zero_epsilon_is_cross_entropy(target: str) -> None:
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 10, generator=g, dtype=torch.float64) * 3
    labels = torch.randint(0, 10, (64,), generator=g)
    crit = LabelAwareSmoothing(CIFAR10_B100, 0.0, 0.0, target=target).to(torch.float64)
    torch.testing.assert_close(crit(logits, labels), F.cross_entropy(logits, labels))


@pytest.mark.parametrize("target", TARGETS)
def test_tail_rows_with_zero_epsilon_are_plain_ce(target: str) -> None:
    """eps_k = 0: rows of the smallest class get plain CE, finite even for extreme logits."""
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(16, 10, generator=g) * 1e4
    labels = torch.full((16,), 9)
    crit = LabelAwareSmoothing(CIFAR10_B100, 0.3, 0.0, target=target)
    loss = crit(logits, labels)
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, F.cross_entropy(logits, labels))


def _explicit_targets(eps_per_class: torch.Tensor, labels: torch.Tensor, k: int, target: str) -> torch.Tensor:
    q = torch.empty(labels.shape[0], k, dtype=torch.float64)
    for row, y in enumerate(labels.tolist()):
        e = float(eps_per_class[y])
        for i in range(k):
            if target == "paper":  # Eq. 9
                q[row, i] = 1 - e if i == y else e / (k - 1)
            else:
                q[row, i] = 1 - e + e / k if i == y else e / k
    return q


@pytest.mark.parametrize("target", TARGETS)
def test_loss_equals_explicit_soft_target_cross_entropy(target: str) -> None:
    g = torch.Generator().manual_seed(3)
    k = len(CIFAR10_B100)
    logits = torch.randn(32, k, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, k, (32,), generator=g)
    n = torch.tensor(CIFAR10_B100, dtype=torch.float64)
    x = (n - 50) / (5000 - 50)
    eps = 0.05 + (0.4 - 0.05) * torch.sin(math.pi / 2 * x)  # concave, computed here
    q = _explicit_targets(eps, labels, k, target)
    assert torch.allclose(q.sum(1), torch.ones(32, dtype=torch.float64))
    expected = -(q * torch.log(torch.softmax(logits, dim=1))).sum(1).mean()
    crit = LabelAwareSmoothing(CIFAR10_B100, 0.4, 0.05, target=target).to(torch.float64)
    torch.testing.assert_close(crit(logits, labels), expected, atol=1e-6, rtol=1e-6)


def test_buffer_follows_module_moves() -> None:
    crit = LabelAwareSmoothing(CIFAR10_B100, 0.3, 0.0)
    assert any(b is crit.epsilon for b in crit.buffers())
    assert crit.epsilon.dtype == torch.float32
    crit = crit.to(torch.float64)
    assert crit.epsilon.dtype == torch.float64
    out = crit(torch.zeros(2, 10, dtype=torch.float64), torch.tensor([0, 1]))
    assert out.dtype == torch.float64


def test_gradient_flows_and_shapes_are_checked() -> None:
    crit = LabelAwareSmoothing(CIFAR10_B100, 0.3, 0.0)
    logits = torch.zeros(4, 10, requires_grad=True)
    crit(logits, torch.tensor([0, 1, 2, 9])).backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="logits"):
        crit(torch.zeros(4, 9), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="labels"):
        crit(torch.zeros(4, 10), torch.tensor([0, 1, 2]))


def test_repr_shows_settings() -> None:
    r = repr(LabelAwareSmoothing(CIFAR10_B100, 0.3, 0.05, form="exp", p=2.0, target="reference"))
    for part in ("form='exp'", "eps_1=0.3", "eps_k=0.05", "p=2.0", "target='reference'"):
        assert part in r
