"""The push-away auxiliary loss (§3.4): exact token-level dispersion of a batch in O(N·d).

For unit vectors u_1..u_N (the non-padding final-layer token states of a batch, flattened),

    single-domain  d = mean_{i≠j} (1 - u_i·u_j) = 1 - (||S||² - Σ||u_i||²) / (N (N - 1)),
    cross-domain   d = mean_{i∈A, j∈B} (1 - u_i·u_j) = 1 - (S_A·S_B) / (N_A N_B),

with S the sum of the unit vectors (Σ||u_i||² = N for unit vectors; subtracting the computed value
keeps the identity exact in floating point). The loss is L_aux = -d, added as λ·L_aux to the
cross-entropy. Only sums over tokens are formed, never an N×N matrix, and autograd through them
gives the exact gradient of the pairwise mean.

Under data parallelism the statistic is per process unless ``all_reduce=True``: then the sums
(S, Σ||u||², N) are summed across processes with a differentiable all-reduce, so every process
sees the dispersion of the global batch and, after DDP averages gradients, the update equals the
single-process one with the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..core.errors import RepdispError

MODES = ("single", "cross")


@dataclass
class PushAwayOutput:
    """``loss`` = -dispersion (differentiable); ``dispersion`` and ``n_tokens`` for logging."""

    loss: torch.Tensor
    dispersion: torch.Tensor
    n_tokens: int


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum over processes; its backward sums the incoming gradients too (the exact adjoint)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(t, op=dist.ReduceOp.SUM)


class PushAwayLoss(nn.Module):
    """-dispersion of final-layer token states: single-domain or between two domains (0 and 1).

    ``forward(hidden, attention_mask=None, domains=None)``: ``hidden`` (B, T, d); ``attention_mask``
    (B, T) with 0 at padding; ``domains`` (B,) labels in {0, 1}, required in cross mode. Vectors are
    normalised in float32 (float64 stays float64) with autocast disabled, so bf16 training does not
    degrade the statistic.

    Parameters
    ----------
    mode : {"single", "cross"}
        Dispersion among all tokens, or between the tokens of domain 0 and domain 1.
    all_reduce : bool
        Sum the statistics over processes (the global batch's dispersion under DDP).
    eps : float
        Floor of the norms when normalising.

    Examples
    --------
    >>> import torch
    >>> from repdisp.training import PushAwayLoss
    >>> h = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]], requires_grad=True)
    >>> out = PushAwayLoss("single")(h)
    >>> round(out.dispersion.item(), 4), round(out.loss.item(), 4), out.n_tokens
    (1.3333, -1.3333, 3)
    >>> out.loss.backward()
    >>> h.grad.shape
    torch.Size([1, 3, 2])
    """

    def __init__(self, mode: str = "single", all_reduce: bool = False, eps: float = 1e-12):
        super().__init__()
        if mode not in MODES:
            raise RepdispError(f"push-away mode must be one of {MODES}, got {mode!r}")
        self.mode, self.all_reduce, self.eps = mode, all_reduce, eps

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        domains: torch.Tensor | None = None,
    ) -> PushAwayOutput:
        if hidden.ndim != 3:
            raise RepdispError(f"hidden states must be (batch, seq, d), got {tuple(hidden.shape)}")
        dtype = torch.promote_types(hidden.dtype, torch.float32)
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            h = hidden.to(dtype)
            u = h / h.norm(dim=-1, keepdim=True).clamp_min(self.eps)
            keep = (
                torch.ones(h.shape[:2], dtype=dtype, device=h.device)
                if attention_mask is None
                else (attention_mask != 0).to(dtype)
            )
            if self.mode == "single":
                return self._single(u, keep)
            return self._cross(u, keep, domains)

    def _sums(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        """[S (d), Σ||u||², N] of the tokens with weight 1, reduced over processes if asked."""
        uw = u * w[..., None]
        s = uw.sum(dim=(0, 1))
        sq = (uw * u).sum()
        packed = torch.cat([s, sq[None], w.sum()[None]])
        return _all_reduce(packed) if self.all_reduce else packed

    def _single(self, u: torch.Tensor, keep: torch.Tensor) -> PushAwayOutput:
        sums = self._sums(u, keep)
        s, sq, n = sums[:-2], sums[-2], sums[-1]
        if n < 2:
            raise RepdispError(f"push-away needs at least 2 non-padding tokens, got {int(n)}")
        d = 1 - (s @ s - sq) / (n * (n - 1))
        return PushAwayOutput(-d, d.detach(), int(n))

    def _cross(
        self, u: torch.Tensor, keep: torch.Tensor, domains: torch.Tensor | None
    ) -> PushAwayOutput:
        if domains is None:
            raise RepdispError(
                "cross-domain push-away needs a per-example domain label (0/1) for the batch; "
                "got none"
            )
        domains = torch.as_tensor(domains, device=u.device).reshape(-1)
        if len(domains) != u.shape[0]:
            raise RepdispError(f"{len(domains)} domain labels for a batch of {u.shape[0]}")
        if not bool(((domains == 0) | (domains == 1)).all()):
            raise RepdispError("cross-domain labels must be 0 or 1")
        a = self._sums(u, keep * (domains == 0).to(keep.dtype)[:, None])
        b = self._sums(u, keep * (domains == 1).to(keep.dtype)[:, None])
        n_a, n_b = a[-1], b[-1]
        if n_a < 1 or n_b < 1:
            raise RepdispError(
                f"cross-domain push-away needs tokens of both domains in the batch; got "
                f"{int(n_a)} of domain 0 and {int(n_b)} of domain 1"
            )
        d = 1 - (a[:-2] @ b[:-2]) / (n_a * n_b)
        return PushAwayOutput(-d, d.detach(), int(n_a + n_b))


def naive_dispersion(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    domains: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference: the same statistic from the full N×N cosine matrix (O(N²) time and memory).

    For tests and the benchmark only."""
    keep = (
        torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        if attention_mask is None
        else attention_mask != 0
    )
    u = nn.functional.normalize(hidden[keep], dim=-1)
    cos = u @ u.T
    if domains is None:
        n = len(u)
        off = ~torch.eye(n, dtype=torch.bool, device=u.device)
        return (1 - cos[off]).mean()
    tok_dom = torch.as_tensor(domains, device=u.device)[:, None].expand(keep.shape)[keep]
    return (1 - cos[tok_dom == 0][:, tok_dom == 1]).mean()
