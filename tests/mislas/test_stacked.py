"""mislas.stacked: the hand-written stacked SGD step against torch.optim.SGD, head by head."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from mislas.las import LabelAwareSmoothing
from mislas.models import ScaledClassifier
from mislas.stacked import StackedHeads, sgd_matmul_step_, sgd_step_

pytestmark = pytest.mark.usefixtures("one_thread")
K, D, B = 5, 7, 12
COUNTS = [40, 20, 9, 4, 2]


@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_sgd_step_equals_torch_sgd(momentum: float) -> None:
    g = torch.Generator().manual_seed(0)
    p0 = torch.randn(3, 4, 2, generator=g)
    grads = [torch.randn(3, 4, 2, generator=g) for _ in range(4)]
    lr, wd = torch.tensor([0.1, 0.02, 0.5]), torch.tensor([0.0, 1e-3, 5e-2])
    mom = torch.full((3,), momentum)
    p, buf = p0.clone(), torch.zeros_like(p0)
    for grad in grads:
        before, given = p.clone(), grad.clone()
        sgd_step_(p, given, buf, lr=lr, momentum=mom, weight_decay=wd)  # overwrites the gradient it is given
        assert torch.allclose(given, grad + wd.view(-1, 1, 1) * before, rtol=1e-6, atol=1e-7)
    for i in range(3):  # each slice as its own tensor under torch.optim.SGD
        q = p0[i].clone().requires_grad_(True)
        opt = torch.optim.SGD([q], lr=float(lr[i]), momentum=momentum, weight_decay=float(wd[i]))
        for grad in grads:
            q.grad = grad[i].clone()
            opt.step()
        assert torch.allclose(p[i], q.detach(), rtol=1e-6, atol=1e-7), i


def test_sgd_matmul_step_equals_torch_sgd_on_the_product_gradient() -> None:
    """The fused update (gradient gzᵢᵀ x multiplied into the momentum) against torch.optim.SGD given that gradient."""
    g = torch.Generator().manual_seed(3)
    p0 = torch.randn(3, 4, 6, generator=g)
    factors = [(torch.randn(3, 5, 4, generator=g), torch.randn(5, 6, generator=g)) for _ in range(4)]
    lr, wd, mom = torch.tensor([0.1, 0.02, 0.5]), torch.tensor([0.0, 1e-3, 5e-2]), torch.tensor([0.9, 0.0, 0.5])
    p, buf = p0.clone(), torch.zeros_like(p0)
    for gz, x in factors:
        sgd_matmul_step_(p, gz, x, buf, lr=lr, momentum=mom, weight_decay=wd)
    for i in range(3):
        q = p0[i].clone().requires_grad_(True)
        opt = torch.optim.SGD([q], lr=float(lr[i]), momentum=float(mom[i]), weight_decay=float(wd[i]))
        for gz, x in factors:
            q.grad = gz[i].t() @ x
            opt.step()
        assert torch.allclose(p[i], q.detach(), rtol=1e-6, atol=1e-6), i


def _members(method: str) -> tuple[list[nn.Module], list[torch.optim.SGD], list[nn.Module]]:
    torch.manual_seed(1)
    base = nn.Linear(D, K)
    heads: list[nn.Module] = []
    opts: list[torch.optim.SGD] = []
    losses: list[nn.Module] = []
    settings = [(0.1, 0.5, 0.9, 2e-4, 0.3, "paper"), (0.05, 0.2, 0.0, 1e-3, 0.1, "reference"),
                (0.2, 0.1, 0.5, 0.0, 0.4, "paper")]
    for lr, ratio, momentum, wd, eps, target in settings:
        linear = copy.deepcopy(base)
        if method == "crt":
            linear.requires_grad_(True)
            head: nn.Module = linear
            groups = [{"params": list(linear.parameters()), "lr": lr}]
            loss: nn.Module = nn.CrossEntropyLoss()
        else:
            scaled = ScaledClassifier(linear, train_weight=method == "mislas", train_scale=True)
            head = scaled
            groups = [{"params": [scaled.scale], "lr": lr}]
            if method == "mislas":
                groups.append({"params": list(linear.parameters()), "lr": lr * ratio})
                loss = LabelAwareSmoothing(COUNTS, eps, 0.0, target=target)
            else:
                loss = nn.CrossEntropyLoss()
        heads.append(head)
        opts.append(torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=wd))
        losses.append(loss)
    return heads, opts, losses


@pytest.mark.parametrize("method", ["mislas", "crt", "lws"])
def test_stacked_heads_train_as_their_own_optimizers(method: str) -> None:
    """Stacked: one batched forward, vmapped losses, one update; alone: each head's torch.optim.SGD."""
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(B, D, generator=g), torch.randint(0, K, (B,), generator=g)) for _ in range(5)]
    heads, opts, losses = _members(method)
    alone = copy.deepcopy((heads, opts, losses))
    # deepcopy of (modules, optimizers) keeps each optimizer pointing at its copied module's tensors
    stacked = StackedHeads(heads, opts, losses)
    for epoch in range(2):
        stacked.begin_epoch()
        for x, y in batches:
            per_member = stacked.loss(stacked.logits(x), y)
            torch.autograd.backward(per_member.sum())
            assert stacked.params["weight"].grad is None  # no G×K×D gradient: step multiplies it in
            stacked.step()
            for head, opt, loss_fn, got in zip(*alone, per_member.detach()):
                loss = loss_fn(head(x), y)
                assert torch.allclose(got, loss.detach(), rtol=1e-5), epoch
                opt.zero_grad()
                torch.autograd.backward(loss)
                opt.step()
        stacked.store()
        for opt in (*opts, *alone[1]):  # a schedule: lr halves each epoch
            for group in opt.param_groups:
                group["lr"] *= 0.5
    for (h, o), (ha, oa) in zip(zip(heads, opts), zip(alone[0], alone[1])):
        for (name, a), b in zip(h.state_dict().items(), ha.state_dict().values()):
            assert torch.allclose(a, b, rtol=1e-5, atol=1e-7), name
        sa, sb = o.state_dict()["state"], oa.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for k in sa:  # the momentum buffers went back into each member's own optimizer
            assert torch.allclose(sa[k]["momentum_buffer"], sb[k]["momentum_buffer"], rtol=1e-5, atol=1e-7)
    # and a fresh stack reads them back (what a resume does); member 1 has momentum 0, no buffer to keep
    again = StackedHeads(heads, opts, losses)
    for name in stacked.bufs:
        assert torch.equal(again.bufs[name][[0, 2]], stacked.bufs[name][[0, 2]])
        assert torch.equal(again.bufs[name][1], torch.zeros_like(again.bufs[name][1]))


def test_stacked_heads_refuse_mixed_members_and_other_optimizers() -> None:
    heads, opts, losses = _members("mislas")
    lws_heads, lws_opts, lws_losses = _members("lws")
    with pytest.raises(ValueError, match="all train 'weight' or none"):
        StackedHeads([heads[0], lws_heads[0]], [opts[0], lws_opts[0]], [losses[0], lws_losses[0]])
    with pytest.raises(TypeError, match="SGD"):
        StackedHeads(heads[:1], [torch.optim.Adam(heads[0].parameters())], losses[:1])
    nesterov = torch.optim.SGD(heads[0].parameters(), lr=0.1, momentum=0.9, nesterov=True)
    with pytest.raises(ValueError, match="Nesterov"):
        StackedHeads(heads[:1], [nesterov], losses[:1])
