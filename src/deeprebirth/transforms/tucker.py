"""Tucker-2 decomposition of convolutions (Kim et al., ICLR 2016), as plan entries.

A kxk conv C_in -> C_out becomes 1x1 (C_in -> R_in) -> kxk (R_in -> R_out) -> 1x1
(R_out -> C_out), with factors from tensorly's partial Tucker (HOSVD-initialised HOOI) on
the output and input channel modes. For a 1x1 conv the same decomposition is a low-rank
matrix product, so its core is folded into one factor: two 1x1 layers through
min(R_out, R_in) channels. Ranks come from empirical variational Bayesian matrix
factorisation (EVBMF) of the two mode unfoldings, or from a fixed ratio of the channels.
The layers are learned afterwards like any learned merge (full rank is exact).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import numpy as np
import tensorly as tl
import torch
from scipy.optimize import minimize_scalar
from tensorly.decomposition import partial_tucker
from torch import nn

from ..errors import DeepRebirthError
from .base import Merge, finish, module_node, modules_of, pair, set_module, shape_of

#: A decomposition is proposed only if it keeps at most this share of the conv's MACs.
MAX_COST_SHARE = 0.8


def _evb_free_energy(
    sigma2: float, L: int, M: int, s: np.ndarray, residual: float, x_bar: float
) -> float:
    """The EVB free energy as a function of the noise variance (Nakajima et al., 2013)."""
    alpha = L / M
    x = s**2 / (M * sigma2)
    big, small = x[x > x_bar], x[x <= x_bar]
    # tau: the positive root of tau^2 - (x - 1 - alpha) tau + alpha = 0 for kept components
    tau = 0.5 * (big - (1 + alpha) + np.sqrt((big - (1 + alpha)) ** 2 - 4 * alpha))
    energy = np.sum(small - np.log(small))
    energy += (
        np.sum(big - tau)
        + np.sum(np.log((tau + 1) / big))
        + alpha * np.sum(np.log(tau / alpha + 1))
    )
    return energy + residual / (M * sigma2) + (L - len(s)) * np.log(sigma2)


def evbmf_rank(matrix: np.ndarray | torch.Tensor) -> int:
    """The rank EVBMF keeps for ``matrix``: components above the analytic EVB threshold.

    The noise variance is estimated by minimising the free energy (no tuning knobs).
    """
    y = np.asarray(matrix, dtype=np.float64)
    if y.shape[0] > y.shape[1]:
        y = y.T
    L, M = y.shape  # L <= M
    s = np.linalg.svd(y, compute_uv=False)
    alpha = L / M
    tau_bar = 2.5129 * np.sqrt(alpha)
    x_bar = (1 + tau_bar) * (1 + alpha / tau_bar)
    residual = max(0.0, float(np.sum(y**2) - np.sum(s**2)))
    # bounds for sigma2: the largest possible (all noise) and a floor from the tail
    h_ub = int(min(np.ceil(L / (1 + alpha)) - 1, L)) - 1
    upper = (np.sum(s**2) + residual) / (L * M)
    lower = (
        max(s[h_ub + 1] ** 2 / (M * x_bar), np.mean(s[h_ub + 1 :] ** 2) / M)
        if h_ub + 1 < L
        else upper * 1e-6
    )
    lower = min(lower, upper * (1 - 1e-9))
    sigma2 = minimize_scalar(
        _evb_free_energy, args=(L, M, s, residual, x_bar), bounds=(lower, upper), method="bounded"
    ).x
    threshold = np.sqrt(M * sigma2 * x_bar)
    return int(np.sum(s > threshold))


def tucker_ranks(weight: torch.Tensor, rank_ratio: float | None = None) -> tuple[int, int]:
    """(R_out, R_in) for a conv weight (C_out, C_in, k, k): EVBMF, or a ratio of the channels."""
    c_out, c_in = weight.shape[:2]
    if rank_ratio is not None:
        if not 0 < rank_ratio <= 1:
            raise DeepRebirthError(f"rank ratio must be in (0, 1], not {rank_ratio}")
        k = weight[0, 0].numel()  # an unfolding's rank is at most its shorter side
        return (
            max(1, min(round(c_out * rank_ratio), c_in * k)),
            max(1, min(round(c_in * rank_ratio), c_out * k)),
        )
    w = weight.detach().cpu().numpy()
    r_out = evbmf_rank(w.reshape(c_out, -1))  # mode-0 unfolding
    r_in = evbmf_rank(np.moveaxis(w, 1, 0).reshape(c_in, -1))  # mode-1 unfolding
    return max(1, r_out), max(1, r_in)


#: Decompositions computed in this process, by weight, shape and ranks (oldest first), at
#: most :data:`FACTORS_KEPT_BYTES` of them: a latency-budget selection applies each Tucker
#: option several times (finding its group, measuring it, the chosen plan), and the
#: decomposition is most of the time applying it takes. Computed on the CPU.
_FACTORS: OrderedDict[tuple, tuple[torch.Tensor, ...]] = OrderedDict()
FACTORS_KEPT_BYTES = 512 * 2**20
#: HOOI iterations after the HOSVD start, at most. Each runs a full SVD per channel mode;
#: past three the factors barely move (benchmarks/results/tucker_iterations.md: the trained
#: GoogLeNet's error 0.01% above its converged value; ResNet-50's random weights 0.3% above
#: it, in 0.42 of the time).
HOOI_ITERATIONS = 3


def _factors(weight: torch.Tensor, ranks: tuple[int, int]) -> tuple[torch.Tensor, ...]:
    """(core, U_out, U_in) of ``weight``'s partial Tucker at ``ranks`` on the output and
    input channel modes, in float32 (float64 took twice as long: 52 s of a ResNet-50
    selection at 224x224, against 31); from :data:`_FACTORS` when computed before (the
    decomposition is deterministic: HOSVD-initialised)."""
    weight = weight.detach().cpu().contiguous()
    digest = hashlib.sha256(weight.view(torch.uint8).numpy()).hexdigest()
    key = (digest, str(weight.dtype), tuple(weight.shape), tuple(ranks))
    if key in _FACTORS:
        _FACTORS.move_to_end(key)
        return _FACTORS[key]
    tl.set_backend("pytorch")
    (core, (u_out, u_in)), _ = partial_tucker(
        weight.float(),
        rank=list(ranks),
        modes=[0, 1],
        init="svd",
        n_iter_max=HOOI_ITERATIONS,
        svd=_gram_svd,
    )
    _FACTORS[key] = factors = (core, u_out, u_in)
    while sum(t.nbytes for f in _FACTORS.values() for t in f) > FACTORS_KEPT_BYTES:
        _FACTORS.popitem(last=False)
    return factors


def _gram_svd(matrix: torch.Tensor, n_eigenvecs: int | None = None, **kwargs):
    """A truncated SVD (tensorly's ``svd`` interface: U, S, V) from the eigendecomposition
    of the smaller Gram matrix, in float64. A channel mode's unfolding is short and wide
    (512 x 4608 for a 3x3 conv of 512 channels): its full SVD took 0.67 s in float64 on 2
    cores, the eigendecomposition of its 512 x 512 Gram matrix 0.07 s (tensorly's
    ``symeig_svd`` takes the larger one). Tensorly uses it for the HOSVD that starts the
    iterations (they call its default SVD). The signs are made deterministic by tensorly
    (``flip_sign``)."""
    wide = matrix.shape[0] <= matrix.shape[1]
    m = (matrix if wide else matrix.T).double()
    s2, u = torch.linalg.eigh(m @ m.T)  # ascending
    s = s2.flip(0).clamp_min(0).sqrt()
    u = u.flip(1)
    k = min(n_eigenvecs or len(s), len(s))
    u, s = u[:, :k], s[:k]
    v = (u.T @ m) / s.clamp_min(torch.finfo(m.dtype).tiny)[:, None]
    u, s, v = (t.to(matrix.dtype) for t in (u, s, v))
    return (u, s, v) if wide else (v.T, s, u.T)


def tucker2_layers(conv: nn.Conv2d, ranks: tuple[int, int]) -> nn.Sequential:
    """The layers replacing ``conv`` at ranks (R_out, R_in): three, or two for a 1x1 conv."""
    r_out, r_in = ranks
    if not (1 <= r_out <= conv.out_channels and 1 <= r_in <= conv.in_channels):
        raise DeepRebirthError(
            f"ranks {ranks} do not fit a conv with {conv.out_channels} outputs and "
            f"{conv.in_channels} inputs (1 <= R_out <= {conv.out_channels}, 1 <= R_in <= {conv.in_channels})"
        )
    if pair(conv.kernel_size) == (1, 1):  # W = U_out G U_in^T has rank min(R_out, R_in) at most
        r_out = r_in = min(r_out, r_in)
    core, u_out, u_in = _factors(conv.weight, (r_out, r_in))
    if pair(conv.kernel_size) == (1, 1):
        return _low_rank_layers(conv, core[:, :, 0, 0], u_out, u_in)
    first = nn.Conv2d(conv.in_channels, r_in, 1, bias=False)
    middle = nn.Conv2d(
        r_in, r_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False
    )
    last = nn.Conv2d(r_out, conv.out_channels, 1, bias=conv.bias is not None)
    dtype = conv.weight.dtype
    with torch.no_grad():
        first.weight.copy_(u_in.t()[:, :, None, None].to(dtype))  # (R_in, C_in, 1, 1)
        middle.weight.copy_(core.to(dtype))  # (R_out, R_in, k, k)
        last.weight.copy_(u_out[:, :, None, None].to(dtype))  # (C_out, R_out, 1, 1)
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, middle, last)


def _low_rank_layers(conv: nn.Conv2d, core, u_out, u_in) -> nn.Sequential:
    """W = U_out G U_in^T as two 1x1 layers, G folded into the factor on its narrower side."""
    if core.shape[0] <= core.shape[1]:  # R_out <= R_in: C_in -> R_out -> C_out
        a, b = core @ u_in.t(), u_out
    else:  # C_in -> R_in -> C_out
        a, b = u_in.t(), u_out @ core
    first = nn.Conv2d(conv.in_channels, a.shape[0], 1, conv.stride, conv.padding, bias=False)
    last = nn.Conv2d(a.shape[0], conv.out_channels, 1, bias=conv.bias is not None)
    dtype = conv.weight.dtype
    with torch.no_grad():
        first.weight.copy_(a[:, :, None, None].to(dtype))
        last.weight.copy_(b[:, :, None, None].to(dtype))
        if conv.bias is not None:
            last.bias.copy_(conv.bias)
    return nn.Sequential(first, last)


def decomposed_macs(conv: nn.Conv2d, ranks: tuple[int, int], hw_in: int, hw_out: int) -> int:
    """MACs of :func:`tucker2_layers` for ``conv`` at ``ranks`` and these output sizes."""
    r_out, r_in = ranks
    if pair(conv.kernel_size) == (1, 1):
        return min(r_out, r_in) * (conv.in_channels + conv.out_channels) * hw_out
    k = conv.kernel_size[0] * conv.kernel_size[1]
    return (
        conv.in_channels * r_in * hw_in
        + r_in * r_out * k * hw_out
        + r_out * conv.out_channels * hw_out
    )


class Tucker(Merge):
    kind, exact = "tucker", False

    def __init__(self, rank_ratio: float | None = None, pointwise_rank_ratio: float | None = None):
        self.rank_ratio = rank_ratio
        #: 1x1 convs are decomposed only when this is set, at this share of their channels.
        self.pointwise_rank_ratio = pointwise_rank_ratio

    def find(self, gm):
        modules = modules_of(gm)
        entries = []
        for n in gm.graph.nodes:
            conv = modules.get(n.target) if n.op == "call_module" else None
            if type(conv) is not nn.Conv2d or conv.groups != 1:
                continue
            pointwise = pair(conv.kernel_size) == (1, 1)
            if pointwise and self.pointwise_rank_ratio is None:
                continue
            ratio = self.pointwise_rank_ratio if pointwise else self.rank_ratio
            out = shape_of(n)
            if out is None:
                continue
            hw_out = out[2] * out[3]
            size_in = shape_of(n.args[0])
            hw_in = size_in[2] * size_in[3]
            k = conv.kernel_size[0] * conv.kernel_size[1]
            r_out, r_in = tucker_ranks(conv.weight, ratio)
            before = conv.in_channels * conv.out_channels * k * hw_out
            after = decomposed_macs(conv, (r_out, r_in), hw_in, hw_out)
            if after > MAX_COST_SHARE * before:
                continue  # not worth the extra layers
            layers = 2 if pointwise else 3
            method = f"ratio {ratio}" if ratio else "evbmf"
            entries.append(
                self.entry(
                    n.target,
                    [n.target],
                    {"ranks": [r_out, r_in], "method": method, "layers": layers},
                    note=f"{100 * after / before:.0f}% of the MACs",
                )
            )
        return entries

    def apply(self, gm, entry):
        node = module_node(gm, entry.nodes[0], entry)
        conv = modules_of(gm)[entry.nodes[0]]
        layers = tucker2_layers(conv, tuple(entry.geometry["ranks"]))
        set_module(gm, entry.nodes[0], layers)
        with gm.graph.inserting_before(node):  # one graph node per layer, as everywhere
            x = node.args[0]
            for i in range(len(layers)):
                x = gm.graph.call_module(f"{entry.nodes[0]}.{i}", (x,))
        node.replace_all_uses_with(x)
        gm.graph.erase_node(node)
        finish(gm)
