"""So3krates: an SO(3)-equivariant transformer force field (full precision), after Frank et al. (2022).

Every atom carries invariant features ``x`` of shape (N, F) and one equivariant feature ``chi`` of shape
(N, M) with M = sum over ``degrees`` of (2l + 1): the degree-l block is ``chi[:, offset_l : offset_l + 2l+1]``
in e3nn's real basis (for degree 1 the block is an ordinary (x, y, z) vector), blocks ordered as ``degrees``.
``chi`` starts at zero and is written only from spherical harmonics of the edge directions, so it rotates as
``chi(R pos) = D(R) chi(pos)`` with D block-diagonal Wigner matrices.

Each :class:`So3kratesLayer` has two branches, kept in separate submodules so that quantizers can treat them
differently:

* ``feature_block`` (:class:`FeatureBlock`, invariant): multi-head attention over neighbours updating ``x``;
  attention weights of shape (E, num_heads).
* ``geometric_block`` (:class:`GeometricBlock`, equivariant): one attention head per degree, updating
  ``chi_i += sum_j alpha_ij^l Y_l(r_ij / |r_ij|)``; attention weights of shape (E, len(degrees)).
* ``exchange_block`` (:class:`ExchangeBlock`): mixes ``x`` with the per-degree invariants ``|chi_l|^2``.

Quantization hook points: ``layer.x_quant`` (applied to ``x``, shape (N, F)) and ``layer.chi_quant``
(applied to ``chi``, shape (N, M)) after the attention update and again after the exchange update of every
layer; both are ``nn.Identity`` in the full-precision model and can be replaced by a module of the same
call signature. All MLPs are ``nn.Sequential`` of plain ``nn.Linear`` and ``nn.SiLU``.

The network runs through the fast path of :mod:`spherequant.models.fast` by default (the same function in
far fewer tensor operations); the layer-by-layer module code is the eager reference, reachable through
:meth:`So3krates.reference_forward`, ``spherequant.models.fast.fast_path(False)`` or the environment variable
``SPHEREQUANT_FAST_PATH=0``.

Energies are measured from the isolated atoms: ``E = sum_i shift[z_i] + scale[z_i] * (u(x_i) - u(x_i^0))``
where ``u`` is the atomic-energy MLP and ``x_i^0`` the final features the same element would have with no
neighbours. Hence an atom without neighbours contributes exactly ``shift[z]`` (and zero force).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from e3nn import o3
from torch import nn

from spherequant._validation import check_int, check_positive

from . import compiled as _compiled
from . import fast as _fast
from .neighbors import edge_vectors, radius_graph

__all__ = [
    "Attention",
    "ExchangeBlock",
    "FeatureBlock",
    "FilterNet",
    "GeometricBlock",
    "RadialBasis",
    "So3krates",
    "So3kratesLayer",
    "cosine_cutoff",
    "mlp",
    "model_from_checkpoint",
    "scatter_softmax",
]

ATTENTION_MODES = ("so3krates", "cosine")


def mlp(sizes: Sequence[int], last_activation: bool = False) -> nn.Sequential:
    """Multilayer perceptron of ``nn.Linear`` layers with SiLU between them.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first (at least two entries).
    last_activation : bool
        Also apply SiLU after the last linear layer.

    Examples
    --------
    >>> mlp([4, 8, 2])
    Sequential(
      (0): Linear(in_features=4, out_features=8, bias=True)
      (1): SiLU()
      (2): Linear(in_features=8, out_features=2, bias=True)
    )
    """
    layers: list[nn.Module] = []
    for k in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[k], sizes[k + 1]))
        if k < len(sizes) - 2 or last_activation:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


def cosine_cutoff(d: torch.Tensor, cutoff: float) -> torch.Tensor:
    """Cosine cutoff ``0.5 (cos(pi d / r_c) + 1)`` for ``d < r_c``, 0 beyond (C1-smooth at ``r_c``).

    Parameters
    ----------
    d : torch.Tensor of any shape
        Distances (Angstrom).
    cutoff : float
        Cutoff radius ``r_c`` (Angstrom).

    Examples
    --------
    >>> cosine_cutoff(torch.tensor([0.0, 2.5, 5.0, 6.0], dtype=torch.float64), 5.0).tolist()
    [1.0, 0.5, 0.0, 0.0]
    """
    phi = 0.5 * (torch.cos(d * (math.pi / cutoff)) + 1.0)
    return torch.where(d < cutoff, phi, torch.zeros_like(phi))


def scatter_softmax(
    logits: torch.Tensor, index: torch.Tensor, num_nodes: int, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax of edge logits over the edges sharing a receiver, optionally weighted.

    ``out_e = w_e exp(l_e) / sum_{e': index[e'] = index[e]} w_e' exp(l_e')`` computed stably (the per-receiver
    maximum is subtracted first). Receivers whose weights all underflow get zeros, never NaN.

    Parameters
    ----------
    logits : torch.Tensor of shape (E, H)
    index : torch.Tensor of shape (E,), long
        Receiver of every edge.
    num_nodes : int
        Number of receivers N.
    weight : torch.Tensor of shape (E,) or (E, H), optional
        Non-negative weights (equivalent to adding ``log w`` to the logits).

    Returns
    -------
    torch.Tensor of shape (E, H)

    Examples
    --------
    >>> out = scatter_softmax(torch.tensor([[0.0], [0.0], [1.0]]), torch.tensor([0, 0, 1]), 2)
    >>> out.flatten().tolist()
    [0.5, 0.5, 1.0]
    """
    idx = index[:, None].expand_as(logits)
    m = logits.new_full((num_nodes, logits.shape[1]), -torch.inf)
    m = m.scatter_reduce(0, idx, logits.detach(), reduce="amax", include_self=True)
    e = torch.exp(logits - m.index_select(0, index))
    if weight is not None:
        e = e * (weight[:, None] if weight.ndim == 1 else weight)
    s = logits.new_zeros(num_nodes, logits.shape[1]).index_add_(0, index, e)
    return e / s.index_select(0, index).clamp_min(torch.finfo(logits.dtype).tiny)


class RadialBasis(nn.Module):
    """PhysNet exponential-normal radial basis times a cosine cutoff.

    ``rbf_k(d) = phi(d) exp(-beta (exp(-d) - mu_k)^2)`` with ``mu_k`` equally spaced in
    ``[exp(-r_c), 1]`` and ``beta = (2 (1 - exp(-r_c)) / K)^-2``.

    Parameters
    ----------
    num_rbf : int
        Number of basis functions K.
    cutoff : float
        Cutoff radius (Angstrom).

    Examples
    --------
    >>> rb = RadialBasis(8, 5.0)
    >>> rb(torch.tensor([1.0, 5.0])).shape
    torch.Size([2, 8])
    """

    def __init__(self, num_rbf: int, cutoff: float):
        super().__init__()
        self.cutoff = float(cutoff)
        start = math.exp(-self.cutoff)
        self.register_buffer("centers", torch.linspace(start, 1.0, num_rbf, dtype=torch.float64).float())
        beta = (2.0 / num_rbf * (1.0 - start)) ** -2
        self.register_buffer("beta", torch.full((num_rbf,), beta))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        """Basis values, shape (..., K), for distances ``d`` of shape (...)."""
        phi = cosine_cutoff(d, self.cutoff)[..., None]
        arg = -self.beta * (torch.exp(-d)[..., None] - self.centers) ** 2
        # Clamp the exponent: exp(-60) ~ 1e-26 keeps float32 away from (very slow) denormal arithmetic.
        return phi * torch.exp(arg.clamp_min(-60.0))


class FilterNet(nn.Module):
    """Edge filter ``w_ij = MLP_r(rbf(r_ij)) + MLP_s(|chi_j - chi_i|_l^2)`` (invariant).

    Parameters
    ----------
    num_rbf : int
        Radial basis size K.
    num_degrees : int
        Number of degrees L of ``chi``.
    out_features : int
        Filter width.

    Examples
    --------
    >>> FilterNet(8, 3, 16)(torch.rand(5, 8), torch.rand(5, 3)).shape
    torch.Size([5, 16])
    """

    def __init__(self, num_rbf: int, num_degrees: int, out_features: int):
        super().__init__()
        hidden = max(out_features // 4, 1)
        self.radial = mlp([num_rbf, hidden, out_features])
        self.spherical = mlp([num_degrees, hidden, out_features])

    def forward(self, rbf: torch.Tensor, chi_ij_inv: torch.Tensor) -> torch.Tensor:
        """Filter of shape (E, out_features) from ``rbf`` (E, K) and ``chi_ij_inv`` (E, L)."""
        return self.radial(rbf) + self.spherical(chi_ij_inv)


class Attention(nn.Module):
    """Edge attention weights shared by the feature and the geometric block (shape (E, heads)).

    Public so that the quantization harness (:func:`spherequant.models.gaq.quantize_`) can switch a
    block to cosine attention.

    Parameters
    ----------
    num_features, num_heads, head_dim, num_rbf, num_degrees : int
        Feature width, heads, width per head, radial basis size, number of degrees.
    attention : {"so3krates", "cosine"}
        The So3krates bilinear form or cosine attention (Eq. 10).
    tau : float
        Cosine-attention temperature.
    learnable_tau : bool
        Train ``log(tau)``.
    """

    def __init__(
        self, num_features, num_heads, head_dim, num_rbf, num_degrees, attention, tau, learnable_tau
    ):
        super().__init__()
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.attention = attention
        width = num_heads * head_dim
        self.filter = FilterNet(num_rbf, num_degrees, width)
        self.query = nn.Linear(num_features, width, bias=False)
        self.key = nn.Linear(num_features, width, bias=False)
        if attention == "cosine":
            self.bias = nn.Linear(width, num_heads)
            log_tau = torch.tensor(math.log(tau))
            if learnable_tau:
                self.log_tau = nn.Parameter(log_tau)
            else:
                self.register_buffer("log_tau", log_tau)
            self.eps = 1e-6

    @property
    def tau(self) -> torch.Tensor:
        """Cosine-attention temperature (a 0-d tensor)."""
        return self.log_tau.exp()

    def weights(self, x, rbf, chi_ij_inv, phi, i, j, num_nodes):
        """Attention weights (E, heads) of the edges ``(i, j)`` from node features ``x`` (N, F), radial
        basis ``rbf`` (E, K), invariants ``chi_ij_inv`` (E, L) and cutoff ``phi`` (E,)."""
        e = i.shape[0]
        w = self.filter(rbf, chi_ij_inv)
        q = self.query(x).index_select(0, i).view(e, self.num_heads, self.head_dim)
        k = self.key(x).index_select(0, j).view(e, self.num_heads, self.head_dim)
        if self.attention == "so3krates":
            w = w.view(e, self.num_heads, self.head_dim)
            return (q * w * k).sum(-1) * (phi[:, None] / math.sqrt(self.head_dim))
        # cosine (Eq. 10): filter-modulated key, both L2-normalised; cutoff-weighted softmax, then times the
        # cutoff again so a neighbour's weight goes continuously to 0 at r_c even when it is the only one.
        k = k * w.view(e, self.num_heads, self.head_dim)
        q_hat = q / (torch.linalg.vector_norm(q, dim=-1, keepdim=True) + self.eps)
        k_hat = k / (torch.linalg.vector_norm(k, dim=-1, keepdim=True) + self.eps)
        logits = self.tau * (q_hat * k_hat).sum(-1) + self.bias(w)
        return scatter_softmax(logits, i, num_nodes, weight=phi) * phi[:, None]


class FeatureBlock(nn.Module):
    """Invariant branch: multi-head attention ``dx_i = sum_j alpha_ij^h v_j^h``.

    Attention weights ``alpha`` have shape (E, num_heads). In mode ``"so3krates"``
    ``alpha_ij^h = phi(r_ij) <q_i^h, w_ij^h * k_j^h> / sqrt(d_h)`` (no softmax); in mode ``"cosine"``
    ``alpha_ij^h = phi(r_ij) softmax_j(tau <q_hat_i, k_hat_ij> + b_ij + log phi(r_ij))``.

    Examples
    --------
    >>> blk = FeatureBlock(8, 2, num_rbf=4, num_degrees=1)
    >>> i, j = torch.tensor([0, 1]), torch.tensor([1, 0])
    >>> dx, alpha = blk(torch.rand(2, 8), torch.rand(2, 4), torch.rand(2, 1), torch.ones(2), i, j)
    >>> dx.shape, alpha.shape
    (torch.Size([2, 8]), torch.Size([2, 2]))
    """

    def __init__(
        self,
        num_features,
        num_heads,
        num_rbf,
        num_degrees,
        attention="so3krates",
        tau=None,
        learnable_tau=False,
    ):
        super().__init__()
        head_dim = num_features // num_heads
        tau = math.sqrt(head_dim) if tau is None else tau
        self.attention = Attention(
            num_features, num_heads, head_dim, num_rbf, num_degrees, attention, tau, learnable_tau
        )
        self.value = nn.Linear(num_features, num_features, bias=False)
        self.num_heads = num_heads
        self.head_dim = head_dim

    def forward(self, x, rbf, chi_ij_inv, phi, i, j):
        """Return ``dx`` (N, F) and the attention weights (E, num_heads)."""
        n = x.shape[0]
        alpha = self.attention.weights(x, rbf, chi_ij_inv, phi, i, j, n)
        v = self.value(x).index_select(0, j).view(-1, self.num_heads, self.head_dim)
        msg = (alpha[..., None] * v).reshape(-1, self.num_heads * self.head_dim)
        return x.new_zeros(n, msg.shape[1]).index_add_(0, i, msg), alpha


class GeometricBlock(nn.Module):
    """Equivariant branch: ``dchi_i^l = sum_j alpha_ij^l Y_l(r_ij / |r_ij|)``, one head per degree.

    Attention weights have shape (E, L); same two modes as :class:`FeatureBlock`.

    Examples
    --------
    >>> blk = GeometricBlock(8, degrees=(1, 2), num_rbf=4)
    >>> i, j = torch.tensor([0, 1]), torch.tensor([1, 0])
    >>> sh = torch.rand(2, 8)
    >>> dchi, alpha = blk(torch.rand(2, 8), sh, torch.rand(2, 4), torch.rand(2, 2), torch.ones(2), i, j)
    >>> dchi.shape, alpha.shape
    (torch.Size([2, 8]), torch.Size([2, 2]))
    """

    def __init__(self, num_features, degrees, num_rbf, attention="so3krates", tau=None, learnable_tau=False):
        super().__init__()
        num_degrees = len(degrees)
        head_dim = max(num_features // num_degrees, 1)
        tau = math.sqrt(head_dim) if tau is None else tau
        self.attention = Attention(
            num_features, num_degrees, head_dim, num_rbf, num_degrees, attention, tau, learnable_tau
        )
        self.register_buffer(
            "degree_index",
            torch.cat([torch.full((2 * l + 1,), k, dtype=torch.long) for k, l in enumerate(degrees)]),
            persistent=False,
        )

    def forward(self, x, sh, rbf, chi_ij_inv, phi, i, j):
        """Return ``dchi`` (N, M) and the attention weights (E, L)."""
        n = x.shape[0]
        alpha = self.attention.weights(x, rbf, chi_ij_inv, phi, i, j, n)
        msg = alpha.index_select(1, self.degree_index) * sh
        return sh.new_zeros(n, sh.shape[1]).index_add_(0, i, msg), alpha


class ExchangeBlock(nn.Module):
    """Mixes the branches: ``(a, b) = MLP([x, |chi_l|^2])``; ``dx = a``, ``dchi_l = b_l chi_l``.

    Examples
    --------
    >>> blk = ExchangeBlock(8, degrees=(1,))
    >>> dx, dchi = blk(torch.rand(3, 8), torch.rand(3, 3), torch.rand(3, 1))
    >>> dx.shape, dchi.shape
    (torch.Size([3, 8]), torch.Size([3, 3]))
    """

    def __init__(self, num_features, degrees):
        super().__init__()
        self.num_features = num_features
        self.mlp = mlp([num_features + len(degrees), num_features, num_features + len(degrees)])
        self.register_buffer(
            "degree_index",
            torch.cat([torch.full((2 * l + 1,), k, dtype=torch.long) for k, l in enumerate(degrees)]),
            persistent=False,
        )

    def forward(self, x, chi, chi_inv):
        """``x`` (N, F), ``chi`` (N, M), ``chi_inv`` (N, L) -> ``dx`` (N, F), ``dchi`` (N, M)."""
        y = self.mlp(torch.cat([x, chi_inv], dim=-1))
        a, b = y[:, : self.num_features], y[:, self.num_features :]
        return a, b.index_select(1, self.degree_index) * chi


class So3kratesLayer(nn.Module):
    """One So3krates layer: feature + geometric attention (residual), then exchange (residual).

    Submodules: ``feature_block``, ``geometric_block``, ``exchange_block``, and the hook points ``x_quant``
    and ``chi_quant`` (``nn.Identity``), applied to ``x`` (N, F) and ``chi`` (N, M) after each residual
    update.
    The last attention weights are kept in ``last_attention`` (dict with ``"feature"`` (E, H) and
    ``"geometric"`` (E, L), detached) when ``record_attention`` is True.
    """

    def __init__(self, num_features, num_heads, degrees, num_rbf, attention, tau, learnable_tau):
        super().__init__()
        self.feature_block = FeatureBlock(
            num_features, num_heads, num_rbf, len(degrees), attention, tau, learnable_tau
        )
        self.geometric_block = GeometricBlock(num_features, degrees, num_rbf, attention, tau, learnable_tau)
        self.exchange_block = ExchangeBlock(num_features, degrees)
        self.x_quant = nn.Identity()
        self.chi_quant = nn.Identity()
        self.record_attention = False
        self.last_attention: dict[str, torch.Tensor] = {}
        self.register_buffer("degree_matrix", _degree_matrix(degrees), persistent=False)

    def forward(self, x, chi, sh, rbf, phi, i, j):
        """Update ``x`` (N, F) and ``chi`` (N, M) given edge data (E rows) and receivers/senders ``i, j``."""
        dm = self.degree_matrix.to(chi.dtype)
        diff = chi.index_select(0, j) - chi.index_select(0, i)
        chi_ij_inv = (diff * diff) @ dm  # (E, L) per-degree |chi_j - chi_i|^2
        dx, a_feat = self.feature_block(x, rbf, chi_ij_inv, phi, i, j)
        dchi, a_geo = self.geometric_block(x, sh, rbf, chi_ij_inv, phi, i, j)
        if self.record_attention:
            self.last_attention = {"feature": a_feat.detach(), "geometric": a_geo.detach()}
        x = self.x_quant(x + dx)
        chi = self.chi_quant(chi + dchi)
        dx, dchi = self.exchange_block(x, chi, (chi * chi) @ dm)
        return self.x_quant(x + dx), self.chi_quant(chi + dchi)


def _degree_matrix(degrees) -> torch.Tensor:
    m = sum(2 * l + 1 for l in degrees)
    out = torch.zeros(m, len(degrees))
    offset = 0
    for k, l in enumerate(degrees):
        out[offset : offset + 2 * l + 1, k] = 1.0
        offset += 2 * l + 1
    return out


class So3krates(nn.Module):
    """So3krates equivariant transformer: energies and conservative forces of molecules.

    Parameters
    ----------
    num_features : int
        Invariant feature width F (divisible by ``num_heads``).
    num_layers : int
        Number of :class:`So3kratesLayer`.
    num_heads : int
        Heads of the invariant (feature) attention.
    degrees : sequence of int
        Distinct degrees l >= 1 of the equivariant features, e.g. ``(1, 2, 3)`` (So3krates) or ``(1,)``.
    cutoff : float
        Neighbour cutoff radius (Angstrom).
    num_rbf : int
        Number of radial basis functions.
    max_z : int
        Largest atomic number the embedding accepts.
    attention : {"so3krates", "cosine"}
        Attention mode (see :class:`FeatureBlock`).
    tau : float, optional
        Cosine-attention temperature (default ``sqrt(head_dim)``); ignored in mode ``"so3krates"``.
    learnable_tau : bool
        Make ``tau`` a trainable parameter (cosine mode).

    Attributes
    ----------
    layers : nn.ModuleList of So3kratesLayer
    energy_shift, energy_scale : buffers of shape (max_z + 1,)
        Per-element shift (eV) and scale of the atomic energies; see :meth:`set_energy_statistics`.
    validate_inputs : bool
        Check ``z``, ``pos`` and ``batch`` on every call (costs a device sync; set False for benchmarks).

    Examples
    --------
    >>> model = So3krates(num_features=16, num_layers=1, num_heads=2, degrees=(1,), num_rbf=8, max_z=10)
    >>> z = torch.tensor([8, 1, 1])
    >>> pos = torch.tensor([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])
    >>> out = model(z, pos)
    >>> out["energy"].shape, out["forces"].shape
    (torch.Size([1]), torch.Size([3, 3]))
    """

    def __init__(
        self,
        num_features: int = 132,
        num_layers: int = 3,
        num_heads: int = 4,
        degrees: Sequence[int] = (1, 2, 3),
        cutoff: float = 5.0,
        num_rbf: int = 32,
        max_z: int = 100,
        attention: str = "so3krates",
        tau: float | None = None,
        learnable_tau: bool = False,
    ):
        super().__init__()
        num_features = check_int(num_features, "num_features", minimum=1)
        num_layers = check_int(num_layers, "num_layers", minimum=0)
        num_heads = check_int(num_heads, "num_heads", minimum=1)
        if num_features % num_heads:
            raise ValueError(f"num_features ({num_features}) must be divisible by num_heads ({num_heads})")
        if isinstance(degrees, (str, bytes)) or not isinstance(degrees, Sequence) or len(degrees) == 0:
            raise TypeError(f"degrees must be a non-empty sequence of ints, got {degrees!r}")
        degrees = tuple(check_int(l, "degrees entry", minimum=1) for l in degrees)
        if len(set(degrees)) != len(degrees):
            raise ValueError(f"degrees must be distinct, got {degrees}")
        cutoff = check_positive(cutoff, "cutoff")
        num_rbf = check_int(num_rbf, "num_rbf", minimum=1)
        max_z = check_int(max_z, "max_z", minimum=1)
        if attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {attention!r}")
        if tau is not None:
            tau = check_positive(tau, "tau")
        if not isinstance(learnable_tau, bool):
            raise TypeError(f"learnable_tau must be a bool, got {type(learnable_tau).__name__}")

        self.config = dict(
            num_features=num_features,
            num_layers=num_layers,
            num_heads=num_heads,
            degrees=list(degrees),
            cutoff=cutoff,
            num_rbf=num_rbf,
            max_z=max_z,
            attention=attention,
            tau=tau,
            learnable_tau=learnable_tau,
        )
        self.num_features = num_features
        self.degrees = degrees
        self.cutoff = cutoff
        self.max_z = max_z
        self.chi_dim = sum(2 * l + 1 for l in degrees)
        self.validate_inputs = True
        self._reference_mode = False
        #: sorted atomic numbers seen in training (None: unknown, no check); see :meth:`check_elements`
        self.trained_elements: tuple[int, ...] | None = None

        self.embedding = nn.Embedding(max_z + 1, num_features)
        self.radial_basis = RadialBasis(num_rbf, cutoff)
        self.layers = nn.ModuleList(
            So3kratesLayer(num_features, num_heads, degrees, num_rbf, attention, tau, learnable_tau)
            for _ in range(num_layers)
        )
        self.energy_mlp = mlp([num_features, num_features, 1])
        self.register_buffer("energy_shift", torch.zeros(max_z + 1))
        self.register_buffer("energy_scale", torch.ones(max_z + 1))

    # ------------------------------------------------------------------ helpers
    @property
    def dtype(self) -> torch.dtype:
        return self.embedding.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.embedding.weight.device

    def set_energy_statistics(self, shift_per_element, scale) -> None:
        """Set the per-element energy shift (eV) and the energy scale.

        Parameters
        ----------
        shift_per_element : array-like of shape (max_z + 1,) or dict {atomic number: shift}
            Energy of each element's isolated atom in the model (eV); missing elements get 0.
        scale : float or array-like of shape (max_z + 1,)
            Positive scale of the network's atomic energies (eV), e.g. the force RMS of the training set.
        """
        shift = torch.zeros(self.max_z + 1, dtype=torch.float64)
        if isinstance(shift_per_element, dict):
            for key, value in shift_per_element.items():
                k = int(key)
                if not 0 <= k <= self.max_z:
                    raise ValueError(f"shift_per_element has atomic number {k} outside [0, {self.max_z}]")
                shift[k] = float(value)
        else:
            s = torch.as_tensor(shift_per_element, dtype=torch.float64).flatten()
            if s.shape[0] > self.max_z + 1:
                raise ValueError(f"shift_per_element has {s.shape[0]} entries, more than max_z + 1")
            shift[: s.shape[0]] = s
        sc = torch.as_tensor(scale, dtype=torch.float64).flatten()
        if sc.numel() == 1:
            sc = sc.expand(self.max_z + 1)
        if sc.shape[0] != self.max_z + 1:
            raise ValueError(f"scale must be a scalar or have {self.max_z + 1} entries, got {sc.shape[0]}")
        if not bool(torch.isfinite(shift).all()):
            raise ValueError("shift_per_element must be finite")
        if not bool((torch.isfinite(sc) & (sc > 0)).all()):
            raise ValueError("scale must be positive and finite")
        self.energy_shift.copy_(shift.to(self.energy_shift))
        self.energy_scale.copy_(sc.to(self.energy_scale))

    def set_trained_elements(self, elements) -> None:
        """Record the atomic numbers the model was trained on (None: unknown); others are refused."""
        if elements is None:
            self.trained_elements = None
            return
        values = sorted({int(e) for e in elements})
        if not values or values[0] < 1 or values[-1] > self.max_z:
            raise ValueError(f"trained elements must be atomic numbers in [1, {self.max_z}], got {values}")
        self.trained_elements = tuple(values)

    def check_elements(self, z) -> None:
        """Raise ``ValueError`` naming the elements of ``z`` (atomic numbers) the model was not trained on."""
        if self.trained_elements is None:
            return
        unknown = sorted(set(torch.unique(torch.as_tensor(z)).tolist()) - set(self.trained_elements))
        if unknown:
            try:
                from ase.data import chemical_symbols as sym
            except ImportError:  # pragma: no cover - ASE ships with the models extra
                sym = [f"Z{k}" for k in range(119)]

            def name(ks):
                return ", ".join(f"{sym[k]} (Z={k})" if 0 < k < len(sym) else str(k) for k in ks)

            raise ValueError(
                f"z holds element(s) {name(unknown)} that the model was not trained on "
                f"(trained on {name(self.trained_elements)}); its energies and forces there are meaningless"
            )

    def check_inputs(self, z, pos, batch) -> None:
        """Refuse malformed inputs of :meth:`forward` (types, shapes, finiteness, elements) with a clear
        ``TypeError``/``ValueError`` (runs when ``validate_inputs`` is on; other engines call it too)."""
        if not isinstance(z, torch.Tensor) or not isinstance(pos, torch.Tensor):
            raise TypeError("z and pos must be torch tensors")
        if z.dtype not in (torch.int64, torch.int32) or z.ndim != 1:
            raise TypeError(f"z must be a 1-d integer tensor, got dtype {z.dtype} shape {tuple(z.shape)}")
        if pos.shape != (z.shape[0], 3):
            raise ValueError(f"pos must have shape ({z.shape[0]}, 3) to match z, got {tuple(pos.shape)}")
        if pos.dtype != self.dtype:
            raise TypeError(f"pos has dtype {pos.dtype} but the model is {self.dtype}; convert one of them")
        if pos.device != self.device or z.device != self.device:
            raise ValueError(f"z/pos are on {z.device}/{pos.device} but the model is on {self.device}")
        if z.numel() and not self._elements_ok(z):  # one lookup; the messages below name what is wrong
            if bool(((z < 1) | (z > self.max_z)).any()):
                raise ValueError(f"z must hold atomic numbers in [1, {self.max_z}], got {z.tolist()[:10]}...")
            self.check_elements(z)
        if batch is not None and (not isinstance(batch, torch.Tensor) or batch.shape != z.shape):
            raise ValueError(f"batch must be a tensor of shape {tuple(z.shape)}")

    def _elements_ok(self, z) -> bool:
        """True if every entry of ``z`` is an atomic number in [1, max_z] the model was trained on (a
        lookup table per device, rebuilt when the trained elements change)."""
        key = (self.trained_elements, self.max_z, z.device)
        lut = self.__dict__.get("_elements_lut")
        if lut is None or lut[0] != key:
            allowed = torch.zeros(self.max_z + 2, dtype=torch.bool, device=z.device)
            allowed[list(self.trained_elements or range(1, self.max_z + 1))] = True
            lut = (key, allowed)
            self.__dict__["_elements_lut"] = lut
        return bool(lut[1][z.clamp(0, self.max_z + 1)].all())

    # ------------------------------------------------------------------ forward
    def atomic_energies(self, z, pos, edge_index) -> torch.Tensor:
        """Atomic energies (N,) in eV for positions ``pos`` (N, 3) and edges ``edge_index`` (2, E).

        Runs the fast path (:mod:`spherequant.models.fast`) when it is switched on and supports the model,
        else :meth:`reference_atomic_energies`; both compute the same function.
        """
        return self._atomic_energies(z, pos, edge_index, cache=not torch.is_grad_enabled())

    def _atomic_energies(self, z, pos, edge_index, cache: bool) -> torch.Tensor:
        if _fast.fast_path_enabled() and not getattr(self, "_reference_mode", False):
            out = _fast.atomic_energies(self, z, pos, edge_index, cache=cache)
            if out is not None:
                return out
        return self.reference_atomic_energies(z, pos, edge_index)

    def reference_atomic_energies(self, z, pos, edge_index) -> torch.Tensor:
        """Atomic energies (N,) in eV, layer by layer through the submodules (the eager reference)."""
        n = z.shape[0]
        i, j = edge_index[0], edge_index[1]
        r = edge_vectors(pos, edge_index)
        d = torch.linalg.vector_norm(r, dim=-1)
        if self.validate_inputs and d.numel() and bool((d == 0).any()):
            raise ValueError("two atoms of one graph share a position (zero edge length)")
        sh = o3.spherical_harmonics(list(self.degrees), r, normalize=True, normalization="norm")
        rbf = self.radial_basis(d)
        phi = cosine_cutoff(d, self.cutoff)
        # Append one isolated reference atom (no edges) per element present, to measure energies from isolated
        # atoms: u_ref[k] is the network output of element elements[k] without neighbours.
        zl = z.long()
        elements, element_of_atom = torch.unique(zl, return_inverse=True)
        x = self.embedding(torch.cat([zl, elements]))
        chi = x.new_zeros(x.shape[0], self.chi_dim)
        for layer in self.layers:
            x, chi = layer(x, chi, sh, rbf, phi, i, j)
        u = self.energy_mlp(x).squeeze(-1)
        u_atoms, u_ref = u[:n], u[n:]
        return self.energy_shift[zl] + self.energy_scale[zl] * (u_atoms - u_ref[element_of_atom])

    def forward(
        self,
        z: torch.Tensor,
        pos: torch.Tensor,
        batch: torch.Tensor | None = None,
        *,
        compute_forces: bool = True,
        edge_index: torch.Tensor | None = None,
        num_graphs: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """Energies and forces (by the fast path of :mod:`spherequant.models.fast` unless switched off).

        Parameters
        ----------
        z : torch.Tensor of shape (N,), long
            Atomic numbers.
        pos : torch.Tensor of shape (N, 3)
            Positions (Angstrom), dtype of the model.
        batch : torch.Tensor of shape (N,), long, optional
            Non-decreasing graph index of each atom (default: one graph).
        compute_forces : bool
            Also return forces ``-dE/dpos`` by autograd. The outputs stay differentiable (``create_graph``)
            in training mode or when ``pos.requires_grad``; otherwise they are detached.
        edge_index : torch.Tensor of shape (2, E), optional
            Precomputed neighbour list (default :func:`~spherequant.models.neighbors.radius_graph` with the
            model cutoff).
        num_graphs : int, optional
            Number of graphs B (default ``batch[-1] + 1``).

        Returns
        -------
        dict
            ``"energy"`` (B,) in eV; ``"forces"`` (N, 3) in eV/Angstrom when ``compute_forces``.
        """
        if self.validate_inputs:
            self.check_inputs(z, pos, batch)
        n = z.shape[0]
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=pos.device)
            if num_graphs is None:
                num_graphs = 1
        batch = batch.long()
        if num_graphs is None:
            num_graphs = int(batch[-1]) + 1 if n else 0
        fast = _fast.fast_path_enabled() and not getattr(self, "_reference_mode", False)
        if edge_index is None:
            if fast and num_graphs <= 1 and n and bool(torch.isfinite(pos.detach()).all()):
                edge_index = _fast.radius_graph_single(pos, self.cutoff)
            else:
                edge_index = radius_graph(pos, self.cutoff, batch if num_graphs > 1 else None)
        # Keep a differentiable graph while training (force loss) or when the caller's pos requires grad.
        create_graph = self.training or pos.requires_grad
        # Without a parameter gradient in the outputs, the fast path may use its cached weights.
        cache = (compute_forces and not create_graph) or not torch.is_grad_enabled()
        with torch.set_grad_enabled(compute_forces or torch.is_grad_enabled()):
            if fast and compute_forces and not create_graph:
                res = _fast.energies_and_forces(self, z, pos, edge_index)  # no autograd graph needed
                if res is None and _fast.compile_enabled():  # fake-quant models, cosine attention
                    res = _compiled.inference_forward(self, z, pos, edge_index)
                if res is not None:
                    energy = res[0].new_zeros(num_graphs).index_add_(0, batch, res[0])
                    return {"energy": energy, "forces": res[1]}
            if compute_forces and not pos.requires_grad:
                pos = pos.detach().requires_grad_(True)
            e_atoms = self._atomic_energies(z, pos, edge_index, cache)
            energy = e_atoms.new_zeros(num_graphs).index_add_(0, batch, e_atoms)
            out = {"energy": energy}
            if compute_forces:
                (grad,) = torch.autograd.grad(
                    energy.sum(), pos, create_graph=create_graph, allow_unused=True, materialize_grads=True
                )
                out["forces"] = -grad
                if not create_graph:
                    out["energy"] = energy.detach()
        return out

    def reference_forward(self, *args, **kwargs) -> dict[str, torch.Tensor]:
        """:meth:`forward` through the eager reference (layer by layer), whatever the fast-path switch says.

        Same arguments and outputs as :meth:`forward`; the fast path computes the same function in fewer
        operations (:mod:`spherequant.models.fast`).
        """
        old = self._reference_mode
        self._reference_mode = True
        try:
            return self(*args, **kwargs)
        finally:
            self._reference_mode = old

    def forward_batch(self, batch, compute_forces: bool = True) -> dict[str, torch.Tensor]:
        """Run on a ``GraphBatch`` of :mod:`spherequant.models.data` (``z``, ``pos``, ``batch``)."""
        return self(
            batch.z,
            batch.pos,
            batch.batch,
            compute_forces=compute_forces,
            num_graphs=int(batch.n_atoms.shape[0]),
        )


def model_from_checkpoint(checkpoint, *, use_ema: bool = True, map_location="cpu") -> So3krates:
    """Rebuild a :class:`So3krates` from a checkpoint written by :mod:`spherequant.models.train`.

    Parameters
    ----------
    checkpoint : str, path-like or dict
        A ``.pt`` file or an already loaded dict with keys ``"model_config"`` (constructor keywords) and
        ``"model_state"`` (state dict), optionally ``"ema_state"`` (exponential moving average weights).
    use_ema : bool
        Load the EMA weights when present (they are the ones validated during training).
    map_location : str or torch.device
        Unused (files are read safely on the CPU by :func:`~spherequant.models.checkpoints.read_checkpoint`).

    Returns
    -------
    So3krates
        In eval mode, with the dtype stored in the checkpoint.

    Examples
    --------
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> ckpt = {"model_config": m.config, "model_state": m.state_dict()}
    >>> model_from_checkpoint(ckpt).config == m.config
    True
    """
    if not isinstance(checkpoint, dict):
        from .checkpoints import read_checkpoint  # safe load (weights_only); checkpoints imports this module

        checkpoint = read_checkpoint(checkpoint)
    for key in ("model_config", "model_state"):
        if key not in checkpoint:
            raise ValueError(f"checkpoint has no {key!r} entry (keys: {sorted(checkpoint)})")
    cfg = dict(checkpoint["model_config"])
    cfg["degrees"] = tuple(cfg["degrees"])
    model = So3krates(**cfg)
    state = (
        checkpoint.get("ema_state") if use_ema and checkpoint.get("ema_state") else checkpoint["model_state"]
    )
    dtype = next(iter(v for v in state.values() if torch.is_tensor(v) and v.is_floating_point())).dtype
    model.to(dtype)
    model.load_state_dict(state)
    return model.eval()
