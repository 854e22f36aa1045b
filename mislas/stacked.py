"""G Stage-2 heads as stacked tensors: one batched matmul, one vmapped loss, one SGD update.

Why: in a Stage-2 group (:func:`mislas.stage2.train_stage2_group`) the backbone pass is
shared, and G small heads stepped one by one cost G x (about 30 tiny kernels) per batch,
which then dominates (on a GPU each launch costs more than the head's arithmetic; on a busy
CPU each small op can stall on a descheduled thread): stacked, the op count no longer grows
with G (30x on CPU for 32 trials).

The math is each member's own: logits = (x Wᵀ + b) ⊙ s, the member's loss module applied
through ``torch.func.vmap`` (its ε as the batched buffer), and the update of the member's
own ``torch.optim.SGD`` with its own learning rates (read from its param groups, which its
scheduler sets each epoch), momentum and weight decay. ``torch.optim.SGD`` takes one scalar
lr per param group, so the stacked update is written out (:func:`sgd_step_`, checked against
``torch.optim.SGD`` in ``tests/mislas/test_stacked.py``), in place. The weight's gradient is
never formed: the backward hands over its factors (∂loss/∂z, x) and
:func:`sgd_matmul_step_` multiplies them straight into the momentum buffer, so stepping holds
W, its momentum and small scratch, about 2.6 copies of G×K×D at peak (measured,
docs/performance.md; 5.5 before, with the transposed-gradient copy and three temporaries). State goes back and forth with the
members' own modules and optimizers (:meth:`StackedHeads.store` / :meth:`StackedHeads.load`),
so a checkpoint does not depend on whether the heads were stacked.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, vmap

from mislas.las import LabelAwareSmoothing
from mislas.models import ScaledClassifier

NAMES = ("weight", "bias", "scale")
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def head_tensors(head: nn.Module) -> dict[str, torch.Tensor | None]:
    """W, b and the scale (None for a plain Linear) of a Stage-2 head (MiSLAS, LWS, cRT)."""
    if isinstance(head, ScaledClassifier):
        return {"weight": head.linear.weight, "bias": head.linear.bias, "scale": head.scale}
    if isinstance(head, nn.Linear):
        return {"weight": head.weight, "bias": head.bias, "scale": None}
    raise TypeError(f"a Stage-2 head is a ScaledClassifier or Linear, got {type(head).__name__}")


@torch.no_grad()
def sgd_step_(p: torch.Tensor, grad: torch.Tensor, buf: torch.Tensor, *, lr: torch.Tensor, momentum: torch.Tensor,
              weight_decay: torch.Tensor) -> None:
    """``torch.optim.SGD``'s update (no dampening, no Nesterov), member by member along dim 0, in place.

    d = g + wd·p; buf = m·buf + d; p -= lr·buf. ``lr``, ``momentum`` and ``weight_decay`` are
    [G]. A zero ``buf`` gives buf = d, which is SGD's first step (it copies d into a missing
    buffer); with m = 0 the update is p -= lr·d, as SGD's. ``grad`` is overwritten with d:
    every op is in place (``addcmul_`` with the [G] factors broadcast), so the update
    allocates nothing of p's size (it made three temporaries of it before, issue 16).
    """
    shape = (-1,) + (1,) * (p.dim() - 1)
    d = grad.addcmul_(p, weight_decay.view(shape))
    buf.mul_(momentum.view(shape)).add_(d)
    p.addcmul_(buf, lr.view(shape), value=-1.0)


def _group_of(optimizer: torch.optim.Optimizer, t: torch.Tensor | None) -> dict[str, Any] | None:
    if t is None:
        return None
    for group in optimizer.param_groups:
        if any(p is t for p in group["params"]):
            return group
    return None


class StackedHeads:
    """The heads of a Stage-2 group stacked along dim 0, trained as their own optimizers would.

    ``heads[i]``, ``optimizers[i]`` (a ``torch.optim.SGD`` over that head's trained tensors)
    and ``losses[i]`` are member i's. A tensor trains if it is in its member's optimizer; all
    members must train the same tensors (they share the method).
    """

    def __init__(self, heads: Sequence[nn.Module], optimizers: Sequence[torch.optim.Optimizer],
                 losses: Sequence[nn.Module]) -> None:
        if not (len(heads) == len(optimizers) == len(losses)) or not heads:
            raise ValueError(f"one optimizer and loss per head must be given, got {len(heads)} heads, "
                             f"{len(optimizers)} optimizers, {len(losses)} losses")
        for opt in optimizers:
            if not isinstance(opt, torch.optim.SGD):
                raise TypeError(f"StackedHeads steps as torch.optim.SGD does, got {type(opt).__name__}")
            for g in opt.param_groups:
                if g["dampening"] != 0 or g["nesterov"] or g["maximize"]:
                    raise ValueError("StackedHeads implements SGD without dampening, Nesterov or maximize")
        self.heads, self.optimizers = list(heads), list(optimizers)
        self.tensors = [head_tensors(h) for h in self.heads]
        self.groups: dict[str, list[dict[str, Any]]] = {}
        for name in NAMES:
            found = [_group_of(o, t[name]) for o, t in zip(self.optimizers, self.tensors)]
            if any(g is not None for g in found):
                if any(g is None for g in found):
                    raise ValueError(f"members of a stacked group must all train {name!r} or none")
                self.groups[name] = [g for g in found if g is not None]
        first = self.tensors[0]["weight"]
        assert first is not None
        self.device = first.device
        self.params: dict[str, torch.Tensor] = {}
        self.bufs: dict[str, torch.Tensor] = {}
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # W's gradient factors (see logits)
        self.load()
        self._losses = self._stack_losses(list(losses))
        self.lr: dict[str, torch.Tensor] = {}
        self.momentum: dict[str, torch.Tensor] = {}
        self.weight_decay: dict[str, torch.Tensor] = {}
        self.begin_epoch()

    def __len__(self) -> int:
        return len(self.heads)

    def _stack_losses(self, losses: list[nn.Module]) -> list[tuple[torch.Tensor, LossFn]]:
        """One vmapped call per kind of loss (LAS by target, or a plain loss type), with member indices."""
        kinds: dict[Any, list[int]] = {}
        for i, fn in enumerate(losses):
            key = ("las", fn.target) if isinstance(fn, LabelAwareSmoothing) else type(fn)
            kinds.setdefault(key, []).append(i)
        out: list[tuple[torch.Tensor, LossFn]] = []
        order: list[int] = []
        for idx in kinds.values():
            order.extend(idx)
            module = losses[idx[0]]
            index = torch.tensor(idx, device=self.device)
            if isinstance(module, LabelAwareSmoothing):
                eps = torch.stack([_as_las(losses[i]).epsilon for i in idx])

                def las(logits: torch.Tensor, y: torch.Tensor, module: nn.Module = module,
                        eps: torch.Tensor = eps) -> torch.Tensor:
                    out: torch.Tensor = vmap(lambda e, lg: functional_call(module, {"epsilon": e}, (lg, y)))(eps, logits)
                    return out

                out.append((index, las))
            else:
                def plain(logits: torch.Tensor, y: torch.Tensor, module: nn.Module = module) -> torch.Tensor:
                    out: torch.Tensor = vmap(lambda lg: module(lg, y))(logits)
                    return out

                out.append((index, plain))
        self._inverse = torch.argsort(torch.tensor(order, device=self.device))
        return out

    # --- state shared with the members' own modules and optimizers --------------------------
    @torch.no_grad()
    def load(self) -> None:
        """Take the heads' values and the optimizers' momentum buffers (after a resume)."""
        for name in NAMES:
            ts = [t[name] for t in self.tensors]
            if all(t is None for t in ts):
                ref = self.tensors[0]["bias"]
                assert ref is not None
                stacked = torch.ones((len(ts), *ref.shape), dtype=ref.dtype, device=ref.device)
            else:
                stacked = torch.stack([t.detach() for t in ts if t is not None])  # a new tensor: no clone
            self.params[name] = stacked.requires_grad_(name in self.groups)
        self.bufs = {}
        for name in self.groups:
            bufs = torch.zeros_like(self.params[name])  # filled in place: one copy at peak
            for i, (opt, t) in enumerate(zip(self.optimizers, self.tensors)):
                tensor = t[name]
                assert tensor is not None
                buf = opt.state.get(tensor, {}).get("momentum_buffer")
                if buf is not None:
                    bufs[i].copy_(buf)
            self.bufs[name] = bufs

    @torch.no_grad()
    def store(self) -> None:
        """Write the stacked values into each head and the momentum into each optimizer's state."""
        for i, (opt, t) in enumerate(zip(self.optimizers, self.tensors)):
            for name in NAMES:
                tensor = t[name]
                if tensor is not None:
                    tensor.copy_(self.params[name][i])
                if name in self.groups and tensor is not None and self.groups[name][i]["momentum"] != 0:
                    state = opt.state[tensor]
                    have = state.get("momentum_buffer")
                    if isinstance(have, torch.Tensor) and have.shape == tensor.shape:
                        have.copy_(self.bufs[name][i])  # into the member's own buffer: no new allocation
                    else:
                        state["momentum_buffer"] = self.bufs[name][i].clone()

    def begin_epoch(self) -> None:
        """Read this epoch's learning rates (set by the members' schedulers) and SGD settings."""
        for name, groups in self.groups.items():
            self.lr[name] = torch.tensor([g["lr"] for g in groups], device=self.device)
            self.momentum[name] = torch.tensor([g["momentum"] for g in groups], device=self.device)
            self.weight_decay[name] = torch.tensor([g["weight_decay"] for g in groups], device=self.device)

    # --- one step ---------------------------------------------------------------------------
    def logits(self, feats: torch.Tensor) -> torch.Tensor:
        """[G, B, K] logits of every head on the shared features [B, D].

        Through :class:`_ScaledLinear`, whose backward hands the weight's gradient to
        :meth:`step` as the per-member factors (∂loss/∂z, x) instead of a G×K×D tensor: the step
        multiplies them straight into the momentum buffer (issue 16: no gradient copy, no
        transposed-gradient copy, no temporaries of G×K×D).
        """
        p = self.params
        self._pending.clear()
        out: torch.Tensor = _ScaledLinear.apply(feats, p["weight"], p["bias"], p["scale"], self._pending)
        return out.float()

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each member's loss [G] on its logits [G, B, K] for labels ``y``."""
        parts = [fn(logits.index_select(0, index), y) for index, fn in self._losses]
        return torch.cat(parts).index_select(0, self._inverse)

    @torch.no_grad()
    def step(self) -> None:
        """Every member's SGD update from the gradients of the last backward (then cleared)."""
        for name in self.groups:
            p = self.params[name]
            if name == "weight":
                if self._pending:
                    (gz, x), = self._pending
                    sgd_matmul_step_(p, gz, x, self.bufs[name], lr=self.lr[name], momentum=self.momentum[name],
                                     weight_decay=self.weight_decay[name])
                    self._pending.clear()
                continue
            if p.grad is None:
                continue
            sgd_step_(p, p.grad, self.bufs[name], lr=self.lr[name], momentum=self.momentum[name],
                      weight_decay=self.weight_decay[name])
            p.grad = None


class _ScaledLinear(torch.autograd.Function):
    """logits = (x Wᵢᵀ + bᵢ) ⊙ sᵢ for every member i; W's gradient goes to ``sink`` as (∂loss/∂z, x).

    ∂loss/∂Wᵢ = (∂loss/∂zᵢ)ᵀ x with z the pre-scale logits: the backward appends that pair to
    ``sink`` (for :func:`sgd_matmul_step_`) and returns no gradient for W, so autograd never
    allocates one; b's and s's gradients (G×K) are returned as usual.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, s: torch.Tensor,
                sink: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
        z = torch.baddbmm(b.unsqueeze(1), x.expand(w.shape[0], -1, -1), w.transpose(1, 2))
        ctx.save_for_backward(x, z, s)
        ctx.sink = sink
        return z * s.unsqueeze(1)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        (gout,) = grads
        x, z, s = ctx.saved_tensors
        gz = gout * s.unsqueeze(1)
        if ctx.needs_input_grad[1]:
            if ctx.sink:
                raise RuntimeError("StackedHeads: a second backward before step(); accumulation is not supported")
            ctx.sink.append((gz.float(), x.float()))
        grad_b = gz.sum(1) if ctx.needs_input_grad[2] else None
        grad_s = (gout * z).sum(1) if ctx.needs_input_grad[3] else None
        return None, None, grad_b, grad_s, None


@torch.no_grad()
def sgd_matmul_step_(p: torch.Tensor, gz: torch.Tensor, x: torch.Tensor, buf: torch.Tensor, *, lr: torch.Tensor,
                     momentum: torch.Tensor, weight_decay: torch.Tensor) -> None:
    """:func:`sgd_step_` for p [G, K, D] whose gradient is gzᵢᵀ x (gz [G, B, K], x [B, D]), in place.

    buf = m·buf + wd·p + gzᵀx; p -= lr·buf: the gradient's matmul accumulates straight into the
    momentum buffer (``baddbmm_``), so no G×K×D gradient or temporary exists. Same sums as
    ``torch.optim.SGD`` (d = g + wd·p; buf = m·buf + d), added in another order (float rounding).
    """
    shape = (-1,) + (1,) * (p.dim() - 1)
    buf.mul_(momentum.view(shape)).addcmul_(p, weight_decay.view(shape))
    buf.baddbmm_(gz.transpose(1, 2), x.expand(p.shape[0], -1, -1))
    p.addcmul_(buf, lr.view(shape), value=-1.0)


def _as_las(module: nn.Module) -> LabelAwareSmoothing:
    """``module`` as the LAS loss it is (for its ε buffer)."""
    if not isinstance(module, LabelAwareSmoothing):
        raise TypeError(f"expected LabelAwareSmoothing, got {type(module).__name__}")
    return module
