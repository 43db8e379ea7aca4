r"""Real low-bit inference of a converted GAQ model, and memory accounting.

:func:`convert_to_integer` turns a So3krates after ``quantize_(model, cfg, step="convert")`` into an
:class:`IntegerSo3krates` whose stored state is integer:

* weights of every :class:`~spherequant.models.gaq.QuantLinear` are packed two signed 4-bit codes per byte
  (:func:`pack_int4`, ``bits <= 4``) or kept as int8 codes (``5 <= bits <= 8``), with one float scale per
  output channel (:class:`IntegerLinear`); the embedding table likewise (:class:`IntegerEmbedding`);
* a linear layer whose input is a calibrated 8-bit scalar activation (the output of a layer's ``x_quant``:
  query, key and value projections of the next layer, and the first layer of the energy readout) runs
  ``int8 x int8 -> int32`` (:func:`int_matmul`) and rescales the accumulator by ``s_x * s_w`` per output
  channel; every other linear layer (its input is an unquantized float: radial filters, the exchange MLP
  whose input concatenates ``|chi|^2``, hidden layers after a SiLU) is weight-only quantized: the codes are
  unpacked and dequantized, then a float GEMM runs;
* the degree-1 block of ``chi`` is stored as MDDQ codes (magnitude ``uint8``, direction index
  ``code_dtype(K)``: ``int16`` up to 32767 codewords) and decoded by two table gathers
  (:class:`IntegerVectorQuantizer`).

Integer GEMM: kernels and exact reference
-----------------------------------------
:func:`int_matmul` computes the exact int32 accumulators of ``int8 x int8`` with one of three CPU kernels,
chosen once per process by :func:`int_gemm_cpu_kernel` (``INT_GEMM_CPU`` forces one):

* ``"int_mm"``: ``torch._int_mm``, when this torch has it on the CPU and it passes a one-time probe against
  the reference (:func:`int_mm_cpu_available`; awkward shapes and a saturation test). torch 2.13's CPU
  kernel is wrong for an inner size of 1, which is padded with a zero column;
* ``"float32"``: the int8 codes multiplied as float32, the inner dimension in blocks of at most 1024. Every
  product is an integer with ``|a b| <= 2^14`` and every partial sum of a block an integer of magnitude
  ``<= 1024 * 2^14 = 2^24``, which float32 holds exactly, so the block sums are exact whatever the BLAS
  kernel's summation order, FMA use or blocking; blocks are added in int32. torch's CPU ``_int_mm`` is fast
  where oneDNN has int8 instructions for the CPU (AVX-512 VNNI, AMX) but a slow reference loop elsewhere
  (measured 20-30x slower than a float32 GEMM on an AVX2-only CPU), so the choice is made by timing both
  once on a mid-sized GEMM (a few milliseconds);
* ``"float64"``: the reference below (a torch without a working ``_int_mm``, or forced).

All three give the same integers bit for bit (tested), so the choice changes speed only. On CUDA the
operands of ``torch._int_mm`` are padded to its shape rules (rows > 16, inner and output sizes multiples
of 8).

The reference (:func:`int_matmul_reference`, the fallback and the tests' oracle) multiplies the int8
operands as float64. Every product is an integer with ``|a b| <= 128 * 128 = 2^14`` and every partial sum
of ``K`` products an integer of magnitude ``<= K 2^14``; a float64 holds every integer below ``2^53``
exactly, so for ``K < 2^39`` every addition is exact *whatever the summation order or blocking of the BLAS
kernel*, and the result equals the int32 accumulation of an integer GEMM bit for bit (``K 2^14 < 2^31`` is
checked so the int32 result cannot overflow).

int4 weights are unpacked to int8 once (cached, not per call) and multiplied by the integer GEMM: exact for
W4A8. torch's packed int4 CPU kernel (``_weight_int4pack_mm_for_cpu``) is weight-only (float activations,
group scales; N a multiple of 16, K of the group size) and, measured on the development machine, slower
than a float32 GEMM with the dequantized weight (bf16 activations) or much slower (float32 activations).

The fused forward
-----------------
:meth:`IntegerSo3krates.integer_energy` runs, for degrees ``(1,)`` (the paper's GAQ architecture; others
run module by module), a fused forward computing the same function as the module path: the five
projections of a layer in one ``int8`` GEMM (one float GEMM in the first layer, whose input is the
embedding), the two attention blocks' filters, logits and per-head sums stacked, each edge pair
``(i, j), (j, i)`` of a symmetric neighbour list filtered once (the filter depends on ``|r_ij|`` and
``|chi_j - chi_i|^2``, bitwise symmetric), the edges processed in blocks whose temporaries stay in the CPU
cache. On the CPU (with numba; ``USE_COMPILED_QUANT = False`` selects the torch chains instead) compiled
loops replace chains of small torch operations: activation quantization and MDDQ encode/decode, the
pairing of edges, the attention logits of a block of edges (gather, filter product and per-head sums in one
pass, no ``(E, channels)`` temporaries), the weighted softmax and the message sums; layer 1's projections
are rows of a precomputed ``embedding @ W``. The quantizer, pairing and message loops are bit-identical to
the chains they replace; the logits loop sums each head's channels in another order (vectorised) and the
softmax uses another ``exp``, so those differ by float round-off. The integer state after every quantizer is
exact, so the fused and module paths agree unless a round-off difference moves a value across a
quantizer's rounding boundary (see below): in float32 a few molecules in a hundred differ by the effect of
one code, in float64 practically none.

Agreement with the fake-quant model, and why it is not bit-exact
----------------------------------------------------------------
The fake-quant model computes ``F.linear(s_x q, s_w W)`` in floating point, the integer model
``(q W^T) * (s_x s_w)``: the same real number, rounded differently (the integer sum is exact, the float one is
not). Outputs therefore differ by float round-off (relative ``~1e-15`` in float64, ``~1e-6`` in float32),
unless a round-off difference moves a downstream activation across a quantizer's rounding boundary (an
8-bit level of ``x`` or an MDDQ Voronoi boundary); then one code changes and the energy moves by the
effect of one quantization step. In float64 that has probability ``~1e-12`` per value and the test
suite checks energies to ``1e-9`` eV; float32 models are checked to a relative ``1e-4``.

Forces (``force_mode`` of :mod:`~spherequant.models.gaq`)
----------------------------------------------------------
The integer path has no gradient. :meth:`IntegerSo3krates.forward` follows gaq's semantics:

``"smooth"``
    ``energy`` and ``forces = -dE/dR`` come from the weight-only path (weights unpacked and dequantized
    from the stored codes, activation quantizers their saturation, no rounding): a conservative, exactly
    equivariant force field, equal to the fake-quant model's. ``energy_quantized`` is the energy of the
    integer path (int8 activations, MDDQ codes), which matches the fake-quant model's
    ``energy_quantized``.
``"ste"``
    ``energy`` is the integer path's; ``forces`` are the straight-through forces of the fake-quant model,
    obtained by autograd through the dequantized network with the fake activation quantizers (their STE
    backward). As in gaq these forces are not the gradient of the reported energy.

Memory
------
:func:`memory_report` counts bytes of weights (per branch, FP32 versus packed) and of the activations
stored per atom (``x``, ``chi`` blocks) from the model's modules and shapes; :func:`format_memory_table`
renders it as Markdown.
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from spherequant._backend import cached_tensors
from spherequant.scalar import SymmetricQuantizer

from ._quant_spec import to_spec
from .gaq import (
    ActivationQuantizer,
    QuantEmbedding,
    QuantizationSpec,
    QuantLinear,
    StorageFormat,
    VectorFeatureQuantizer,
    branch_of,
    quantization_spec,
    quantization_state,
)
from .neighbors import radius_graph
from .so3krates import So3krates, cosine_cutoff, scatter_softmax

__all__ = [
    "IntegerEmbedding",
    "IntegerLinear",
    "IntegerScalarQuantizer",
    "IntegerSo3krates",
    "IntegerVectorQuantizer",
    "convert_to_integer",
    "format_memory_table",
    "int_gemm_cpu_kernel",
    "int_matmul",
    "int_matmul_reference",
    "int_mm_cpu_available",
    "memory_report",
    "pack_int4",
    "unpack_int4",
]

# Optional section timer used by benchmarks/latency.py: a callable name -> context manager, or None.
_SECTION = None


def _section(name: str):
    return _SECTION(name) if _SECTION is not None else contextlib.nullcontext()


# ----------------------------------------------------------------------------------------------------------
# int4 packing
# ----------------------------------------------------------------------------------------------------------
def _as_int_tensor(x, name):
    if isinstance(x, np.ndarray):
        if not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
        return torch.from_numpy(x if x.dtype == np.uint8 else x.astype(np.int64)), True
    if not torch.is_tensor(x):
        raise TypeError(f"{name} must be a numpy array or torch tensor, got {type(x).__name__}")
    if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    return x, False


def pack_int4(codes):
    """Pack signed 4-bit codes (values -8..7) two per byte, two's-complement nibbles.

    Element ``2k`` of the flattened input goes to the low nibble of byte ``k``, element ``2k + 1`` to the
    high nibble; an odd count leaves the last high nibble 0.

    Parameters
    ----------
    codes : numpy.ndarray or torch.Tensor of integers, any shape
        Values in ``[-8, 7]``.

    Returns
    -------
    numpy.ndarray or torch.Tensor, shape (ceil(n / 2),), uint8
        Same kind as ``codes``; ``n = codes.size``. Keep ``codes.shape`` to unpack.

    Examples
    --------
    >>> import torch
    >>> p = pack_int4(torch.tensor([-8, 7, -1]))
    >>> p.tolist()
    [120, 15]
    >>> unpack_int4(p, 3).tolist()
    [-8, 7, -1]
    """
    t, was_numpy = _as_int_tensor(codes, "codes")
    flat = t.reshape(-1).to(torch.int16)
    if flat.numel() and (int(flat.min()) < -8 or int(flat.max()) > 7):
        raise ValueError(
            f"codes must lie in [-8, 7] for int4 packing, got range [{int(flat.min())}, {int(flat.max())}]"
        )
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    nib = flat & 0xF  # two's complement low nibble
    out = (nib[0::2] | (nib[1::2] << 4)).to(torch.uint8)
    return out.numpy() if was_numpy else out


def unpack_int4(packed, shape):
    """Inverse of :func:`pack_int4`: int8 codes of shape ``shape``.

    Parameters
    ----------
    packed : numpy.ndarray or torch.Tensor, uint8, shape (ceil(n / 2),)
    shape : int or tuple of int
        Shape of the codes (``n = prod(shape)``).

    Returns
    -------
    numpy.ndarray or torch.Tensor of int8, shape ``shape``

    Examples
    --------
    >>> import numpy as np
    >>> unpack_int4(pack_int4(np.array([[1, -2], [3, -4]])), (2, 2)).tolist()
    [[1, -2], [3, -4]]
    """
    t, was_numpy = _as_int_tensor(packed, "packed")
    if t.dtype != torch.uint8:
        raise TypeError(f"packed must have dtype uint8, got {t.dtype}")
    if isinstance(shape, numbers.Integral) and not isinstance(shape, bool):
        shape = (int(shape),)
    if not isinstance(shape, (tuple, list, torch.Size)) or not all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 0 for s in shape
    ):
        raise ValueError(f"shape must be a non-negative int or a tuple of them, got {shape!r}")
    n = math.prod(shape)
    if t.ndim != 1 or t.numel() != (n + 1) // 2:
        raise ValueError(
            f"packed must be 1-D with ceil(n/2) = {(n + 1) // 2} bytes for shape {tuple(shape)}, "
            f"got shape {tuple(t.shape)}"
        )
    b = t.to(torch.int16)
    lo, hi = b & 0xF, (b >> 4) & 0xF
    both = torch.stack([lo, hi], dim=1).reshape(-1)[:n]
    vals = (both - ((both >= 8).to(torch.int16) << 4)).to(torch.int8).reshape(tuple(shape))
    return vals.numpy() if was_numpy else vals


# ----------------------------------------------------------------------------------------------------------
# integer GEMM
# ----------------------------------------------------------------------------------------------------------
def _pad_to(t, rows, cols):
    r, c = t.shape
    if r == rows and c == cols:
        return t
    return F.pad(t, (0, cols - c, 0, rows - r))


#: Integer GEMM kernel on the CPU: None = choose once per process (:func:`int_gemm_cpu_kernel`), or force
#: one of ``"int_mm"`` (``torch._int_mm``), ``"float32"`` (exact blocked float32 GEMM), ``"float64"`` (the
#: reference). Every kernel gives the same integers; the choice changes speed only.
INT_GEMM_CPU: str | None = None
INT_GEMM_CPU_KERNELS = ("int_mm", "float32", "float64")
_INT_MM_CPU_PROBE: bool | None = None
_INT_GEMM_CPU_CHOICE: str | None = None
#: inner-dimension block of the float32 kernel: partial sums stay integers of magnitude <= 2^24 (exact)
_F32_EXACT_K = 1024
#: the GEMM timed to choose the kernel (rows, inner, output): a layer's projections at ~10 molecules
_CHOICE_SHAPE = (256, 128, 640)

# probe shapes: rows <= 16, inner and output sizes not multiples of 8, a large inner size (int32 range)
_PROBE_SHAPES = ((1, 3, 5), (17, 9, 13), (33, 4096, 24))


def int_mm_cpu_available() -> bool:
    """Whether ``torch._int_mm`` runs on the CPU in this torch build *and* agrees with the float64 reference.

    Probed once per process on operands of awkward shapes (1 row, sizes not multiples of 8) and on extreme
    values (every entry -128, inner size 4096: products of ``2^14`` summing to ``2^26``, where a kernel that
    saturates 16-bit partial sums would fail). Any error or mismatch disables it.
    """
    global _INT_MM_CPU_PROBE
    if _INT_MM_CPU_PROBE is None:
        ok = hasattr(torch, "_int_mm")
        g = torch.Generator().manual_seed(0)
        for m, k, n in _PROBE_SHAPES if ok else ():
            a = torch.randint(-128, 128, (m, k), generator=g, dtype=torch.int8)
            b = torch.randint(-128, 128, (n, k), generator=g, dtype=torch.int8)
            if k == 4096:
                a.fill_(-128)
                b.fill_(-128)
            try:
                out = torch._int_mm(a, b.t())
            except (RuntimeError, NotImplementedError, TypeError):
                ok = False
                break
            if out.dtype != torch.int32 or not torch.equal(out, int_matmul_reference(a, b)):
                ok = False
                break
        _INT_MM_CPU_PROBE = ok
    return _INT_MM_CPU_PROBE


def _median_seconds(fn, repeats: int = 5) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def int_gemm_cpu_kernel() -> str:
    """The CPU kernel of :func:`int_matmul`: ``"int_mm"``, ``"float32"`` or ``"float64"``.

    ``INT_GEMM_CPU`` when set; else chosen once per process: ``"int_mm"`` if ``torch._int_mm`` passes
    :func:`int_mm_cpu_available` and is faster than the exact float32 kernel on one GEMM of shape
    ``_CHOICE_SHAPE`` (median of 5 timings each), else ``"float32"``. All kernels give the same integers.
    """
    global _INT_GEMM_CPU_CHOICE
    if INT_GEMM_CPU is not None:
        if INT_GEMM_CPU not in INT_GEMM_CPU_KERNELS:
            raise ValueError(
                f"INT_GEMM_CPU must be None or one of {INT_GEMM_CPU_KERNELS}, got {INT_GEMM_CPU!r}"
            )
        if INT_GEMM_CPU == "int_mm" and not int_mm_cpu_available():
            raise ValueError(
                "INT_GEMM_CPU = 'int_mm', but this torch has no torch._int_mm on the CPU or it failed the "
                "probe against the exact reference (int_mm_cpu_available() is False)"
            )
        return INT_GEMM_CPU
    if _INT_GEMM_CPU_CHOICE is None:
        choice = "float32"
        if int_mm_cpu_available():
            m, k, n = _CHOICE_SHAPE
            g = torch.Generator().manual_seed(0)
            a = torch.randint(-127, 128, (m, k), generator=g, dtype=torch.int8)
            bt = torch.randint(-127, 128, (n, k), generator=g, dtype=torch.int8).t().contiguous()
            bt_f = bt.to(torch.float32)
            t_int = _median_seconds(lambda: torch._int_mm(a, bt))
            t_f32 = _median_seconds(lambda: _float32_exact_mm(a, bt_f))
            if t_int < t_f32:
                choice = "int_mm"
        _INT_GEMM_CPU_CHOICE = choice
    return _INT_GEMM_CPU_CHOICE


def _float32_exact_mm(a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
    """Exact int32 ``a @ bt`` of integer-valued operands with ``|entries| <= 128`` (int8, or float32 holding
    int8 codes) through float32 GEMMs over inner blocks of ``_F32_EXACT_K`` (module docstring)."""
    af = a.to(torch.float32)
    bf = bt.to(torch.float32)
    k = af.shape[1]
    if k <= _F32_EXACT_K:
        return (af @ bf).to(torch.int32)
    acc = (af[:, :_F32_EXACT_K] @ bf[:_F32_EXACT_K]).to(torch.int32)
    for s in range(_F32_EXACT_K, k, _F32_EXACT_K):
        acc += (af[:, s : s + _F32_EXACT_K] @ bf[s : s + _F32_EXACT_K]).to(torch.int32)
    return acc


def _gemm_operand(wt: torch.Tensor) -> torch.Tensor:
    """An int8 right operand (K, N) in the form the current CPU kernel reads fastest: float32 (exact copy of
    the codes) for ``"float32"``, else itself. :func:`_int_mm_t` accepts either form."""
    if wt.device.type == "cpu" and int_gemm_cpu_kernel() == "float32":
        return wt.to(torch.float32)
    return wt


def _check_int_operands(a, b):
    for name, t in (("a", a), ("b", b)):
        if not torch.is_tensor(t) or t.dtype != torch.int8 or t.ndim != 2:
            got = f"{t.dtype} of shape {tuple(t.shape)}" if torch.is_tensor(t) else type(t).__name__
            raise TypeError(f"{name} must be a 2-D int8 tensor, got {got}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"inner sizes differ: a has {a.shape[1]} columns, b has {b.shape[1]}")
    if a.device != b.device:
        raise ValueError(f"a and b must be on one device, got {a.device} and {b.device}")
    k = a.shape[1]
    if k * 2**14 >= 2**31:
        raise ValueError(f"inner size {k} too large for an exact int32 accumulator (needs K < 131072)")


def int_matmul_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` of int8 matrices through a float64 GEMM: the exact reference (module docstring).

    Parameters
    ----------
    a : torch.Tensor of shape (M, K), int8
    b : torch.Tensor of shape (N, K), int8

    Returns
    -------
    torch.Tensor of shape (M, N), int32

    Examples
    --------
    >>> a = torch.tensor([[127, -128], [1, 2]], dtype=torch.int8)
    >>> int_matmul_reference(a, a).tolist()
    [[32513, -129], [-129, 5]]
    """
    _check_int_operands(a, b)
    return (a.to(torch.float64) @ b.to(torch.float64).t()).to(torch.int32)


def _int_mm_t(a: torch.Tensor, bt: torch.Tensor) -> torch.Tensor:
    """``a @ bt`` (int8 (M, K) times int8 (K, N) -> int32), unchecked: the kernel of :func:`int_matmul`.
    ``bt`` may also be the float32 copy of int8 codes made by ``_gemm_operand``."""
    m, k = a.shape
    n = bt.shape[1]
    if m == 0 or n == 0 or k == 0:
        return torch.zeros(m, n, dtype=torch.int32, device=a.device)
    if a.is_cuda:
        bt = bt.to(torch.int8)
        mp = max(17, -(-m // 8) * 8)
        kp, np_ = -(-k // 8) * 8, -(-n // 8) * 8
        return torch._int_mm(_pad_to(a, mp, kp), _pad_to(bt.t(), np_, kp).t())[:m, :n]
    kernel = int_gemm_cpu_kernel()
    if kernel == "float32":
        return _float32_exact_mm(a, bt)
    if kernel == "int_mm":
        bt = bt.to(torch.int8)
        if k == 1:
            # torch 2.13's CPU kernel returns garbage for an inner size of 1 (found by the tests); a zero
            # column is exact
            return torch._int_mm(F.pad(a, (0, 1)), F.pad(bt, (0, 0, 0, 1)))
        return torch._int_mm(a, bt)
    return (a.to(torch.float64) @ bt.to(torch.float64)).to(torch.int32)


def int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b.T`` of int8 matrices with exact int32 accumulation.

    CPU: the kernel of :func:`int_gemm_cpu_kernel` (``torch._int_mm`` where it is correct and faster than
    the exact blocked float32 GEMM, else that; ``INT_GEMM_CPU = "float64"`` forces
    :func:`int_matmul_reference`), exact as argued in the module docstring. CUDA:
    ``torch._int_mm`` with the operands zero-padded to its shape rules (rows > 16, inner and output sizes
    multiples of 8; the padding adds zeros and is sliced off).

    Parameters
    ----------
    a : torch.Tensor of shape (M, K), int8
    b : torch.Tensor of shape (N, K), int8

    Returns
    -------
    torch.Tensor of shape (M, N), int32

    Examples
    --------
    >>> a = torch.tensor([[127, -128], [1, 2]], dtype=torch.int8)
    >>> int_matmul(a, a).tolist()
    [[32513, -129], [-129, 5]]
    """
    _check_int_operands(a, b)
    return _int_mm_t(a, b.t())


# ----------------------------------------------------------------------------------------------------------
# integer modules
# ----------------------------------------------------------------------------------------------------------
# bumped whenever any integer layer drops its cached weights (cast, move, state loading, clear_cache): a
# fused plan built before is stale
_WEIGHT_GENERATION = [0]


class _IntegerWeights(nn.Module):
    """Stored weight codes (packed int4 or int8) and per-row scales; shared by linear and embedding."""

    def _store(self, codes: torch.Tensor, scale: torch.Tensor, bits: int, branch: str) -> None:
        self.bits = int(bits)
        self.branch = branch
        self.weight_shape = tuple(int(s) for s in codes.shape)
        if self.bits <= 4:
            self.register_buffer("weight_packed", pack_int4(codes.to(torch.int8).cpu()).to(codes.device))
        else:
            self.register_buffer("weight_codes", codes.to(torch.int8).clone())
        self.register_buffer("weight_scale", scale.reshape(-1).clone())
        self.integer = False

    # Unpacked / dequantized weights are derived once and cached (not per call); the cache is dropped when
    # the module is moved or cast (``_apply``) or loads a state dict. After editing the stored codes or
    # scales in place, call :meth:`clear_cache`.
    def _cached(self, key, make):
        return cached_tensors(self.__dict__.setdefault("_weight_cache", {}), key, make)

    def clear_cache(self) -> None:
        """Drop the cached unpacked and dequantized weights (they are rebuilt on next use) and invalidate
        every fused plan built from them."""
        self.__dict__.pop("_weight_cache", None)
        _WEIGHT_GENERATION[0] += 1

    def _apply(self, fn, *args, **kwargs):
        self.clear_cache()
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.clear_cache()
        return super()._load_from_state_dict(*args, **kwargs)

    def int_weight(self) -> torch.Tensor:
        """Weight codes as an int8 tensor of the weight's shape (unpacked once for 4 bits, then cached)."""
        if self.bits <= 4:
            return self._cached("int8", lambda: unpack_int4(self.weight_packed, self.weight_shape))
        return self.weight_codes

    def int_weight_t(self) -> torch.Tensor:
        """``int_weight().T`` as a contiguous (in, out) int8 tensor: the GEMM's right operand (cached)."""
        return self._cached("int8_t", lambda: self.int_weight().t().contiguous())

    def gemm_weight_t(self) -> torch.Tensor:
        """:meth:`int_weight_t` in the form the integer GEMM kernel reads (``_gemm_operand``; cached)."""
        kernel = int_gemm_cpu_kernel() if self.weight_scale.device.type == "cpu" else "cuda"
        return self._cached(("gemm_t", kernel), lambda: _gemm_operand(self.int_weight_t()))

    def dequantized_weight(self, dtype=None) -> torch.Tensor:
        """``codes * scale`` (per output row) in the scale's dtype, then cast to ``dtype`` (cached)."""

        def make():
            w = self.int_weight().to(self.weight_scale.dtype) * self.weight_scale[:, None]
            return w if dtype is None else w.to(dtype)

        return self._cached(("float", dtype), make)

    @property
    def weight(self) -> torch.Tensor:
        """The dequantized weight (derived from the stored codes; cached, treat as read-only)."""
        return self.dequantized_weight()

    def packed_bytes(self) -> int:
        """Bytes of the stored codes, scales and bias."""
        codes = self.weight_packed if self.bits <= 4 else self.weight_codes
        bias = getattr(self, "bias", None)
        return codes.numel() + 4 * self.weight_scale.numel() + (0 if bias is None else 4 * bias.numel())


def _check_weight_module(mod, cls, name):
    if not isinstance(mod, cls):
        raise TypeError(f"{name} must be a {cls.__name__}, got {type(mod).__name__}")
    if not mod.converted:
        raise ValueError(f"{name} is not converted; run quantize_(model, cfg, step='convert') first")
    if mod.scheme == "minmax":
        raise ValueError(f"{name} uses scheme 'minmax' (asymmetric); integer export needs symmetric codes")
    codes = mod.weight_codes
    half = 2 ** (mod.bits - 1)
    if codes.numel() and (int(codes.min()) < -half or int(codes.max()) > half - 1):
        raise ValueError(f"{name} has codes outside the signed {mod.bits}-bit range")


class IntegerLinear(_IntegerWeights):
    """Linear layer with stored integer weights and an optional int8-activation integer GEMM.

    With ``act_scale`` set and ``integer`` True, the input (which must be on the 8-bit grid of that
    scale, e.g. the output of an 8-bit activation quantizer) is turned into int8 codes
    ``q = clip(round(x / s_x), -127, 127)``, multiplied by the int8 weight codes with exact int32
    accumulation (:func:`int_matmul`), and rescaled by ``s_x * s_w`` per output channel, plus the bias.
    Otherwise the weight codes are dequantized and a float GEMM runs (differentiable in ``x``).

    Parameters
    ----------
    codes : torch.Tensor of shape (out_features, in_features), integer
        Signed weight codes within ``bits`` bits.
    scale : torch.Tensor of shape (out_features,) or (out_features, 1)
        Per-output-channel scales.
    bias : torch.Tensor of shape (out_features,), optional
    bits : int
        2 to 8; ``bits <= 4`` is stored packed (:func:`pack_int4`).
    act_scale : float, optional
        Scale ``s_x`` of the 8-bit symmetric quantizer feeding the layer.
    branch : str

    Examples
    --------
    >>> lin = IntegerLinear(torch.tensor([[1, -2], [3, 7]]), torch.tensor([0.5, 0.25]), bits=4, act_scale=0.1)
    >>> lin.integer = True
    >>> [round(v, 6) for v in lin(torch.tensor([[1.0, 0.2]]))[0].tolist()]
    [0.3, 1.1]
    """

    def __init__(self, codes, scale, bias=None, *, bits=8, act_scale=None, branch="invariant"):
        super().__init__()
        if not torch.is_tensor(codes) or codes.ndim != 2:
            raise ValueError("codes must be a 2-D integer tensor (out_features, in_features)")
        if isinstance(bits, bool) or not isinstance(bits, numbers.Integral) or not 2 <= bits <= 8:
            raise ValueError(f"bits must be an int in [2, 8], got {bits!r}")
        scale = torch.as_tensor(scale)
        if scale.numel() != codes.shape[0]:
            raise ValueError(
                f"scale must have {codes.shape[0]} entries (one per output), got {scale.numel()}"
            )
        self.out_features, self.in_features = (int(s) for s in codes.shape)
        self._store(codes, scale, bits, branch)
        self.bias = None if bias is None else nn.Parameter(bias.detach().clone(), requires_grad=False)
        if act_scale is not None:
            act_scale = float(act_scale)
            if not math.isfinite(act_scale) or act_scale <= 0:
                raise ValueError(f"act_scale must be positive and finite, got {act_scale}")
        self.act_scale = act_scale

    @classmethod
    def from_quant_linear(cls, mod: QuantLinear, act_scale: float | None = None) -> IntegerLinear:
        """From a converted :class:`~spherequant.models.gaq.QuantLinear` (symmetric or LSQ codes)."""
        _check_weight_module(mod, QuantLinear, "mod")
        return cls(mod.weight_codes, mod.weight_scale, mod.bias, bits=mod.bits, act_scale=act_scale,
                   branch=mod.branch)  # fmt: skip

    def output_scale(self, dtype) -> torch.Tensor:
        """``s_x * s_w`` (out_features,) in ``dtype``: the rescale of the int32 accumulator (cached)."""
        if self.act_scale is None:
            raise ValueError("output_scale needs act_scale (an int8-activation layer)")
        return self._cached(
            ("out_scale", dtype),
            lambda: (
                torch.as_tensor(self.act_scale, dtype=dtype, device=self.weight_scale.device)
                * self.weight_scale.to(dtype)
            ),
        )

    def fast_linear_params(self):
        """``(weight, bias)`` of the equivalent float layer for :mod:`spherequant.models.fast`, or None in
        integer mode (the integer GEMM is then run module by module)."""
        if self.integer:
            return None
        return self.dequantized_weight(), self.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.integer and self.act_scale is not None:
            with _section("weights"):
                wt = self.gemm_weight_t()
            with _section("quant"):
                s_x = torch.as_tensor(self.act_scale, dtype=x.dtype, device=x.device)
                q = torch.clamp(torch.round(x.detach() / s_x), -127, 127).to(torch.int8)
            with _section("gemm"):
                lead = q.shape[:-1]
                acc = _int_mm_t(q.reshape(-1, self.in_features), wt)
                y = acc.to(x.dtype) * self.output_scale(x.dtype)
                if self.bias is not None:
                    y = y + self.bias
            return y.reshape(*lead, self.out_features)
        with _section("weights"):
            w = self.dequantized_weight(x.dtype)
        with _section("gemm"):
            return F.linear(x, w, self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}, "
                f"act_scale={self.act_scale}, branch={self.branch!r}")  # fmt: skip


class IntegerEmbedding(_IntegerWeights):
    """Embedding table stored as integer codes (packed int4 or int8) with one scale per row.

    Examples
    --------
    >>> emb = IntegerEmbedding(torch.tensor([[1, -1], [2, 0]]), torch.tensor([0.5, 1.0]), bits=8)
    >>> emb(torch.tensor([1, 0])).tolist()
    [[2.0, 0.0], [0.5, -0.5]]
    """

    def __init__(self, codes, scale, *, bits=8, branch="invariant"):
        super().__init__()
        if not torch.is_tensor(codes) or codes.ndim != 2:
            raise ValueError("codes must be a 2-D integer tensor (num_embeddings, embedding_dim)")
        self.num_embeddings, self.embedding_dim = (int(s) for s in codes.shape)
        self._store(codes, torch.as_tensor(scale), bits, branch)

    @classmethod
    def from_quant_embedding(cls, mod: QuantEmbedding) -> IntegerEmbedding:
        """From a converted :class:`~spherequant.models.gaq.QuantEmbedding`."""
        _check_weight_module(mod, QuantEmbedding, "mod")
        return cls(mod.weight_codes, mod.weight_scale, bits=mod.bits, branch=mod.branch)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        with _section("weights"):
            flat = idx.reshape(-1).long()
            out = self.dequantized_weight().index_select(0, flat)  # same products as codes[z] * scale[z]
        return out.reshape(*idx.shape, self.embedding_dim)


class IntegerScalarQuantizer(nn.Module):
    """Integer form of an 8-bit per-tensor symmetric activation quantizer (``x_quant``).

    Integer mode: ``x`` -> int8 codes ``clip(round(x / s), -q, q)`` (kept in ``last_codes``), returned
    decoded as ``codes * s`` (the next :class:`IntegerLinear` re-derives the codes exactly). Otherwise the
    wrapped fake quantizer runs (its STE / smooth switches apply).

    Parameters
    ----------
    fake : ActivationQuantizer
        Calibrated, with a per-tensor :class:`~spherequant.scalar.SymmetricQuantizer` of <= 8 bits.
    """

    def __init__(self, fake: ActivationQuantizer):
        super().__init__()
        if not isinstance(fake, ActivationQuantizer) or not isinstance(fake.quantizer, SymmetricQuantizer):
            raise TypeError("fake must be an ActivationQuantizer wrapping a SymmetricQuantizer")
        q = fake.quantizer
        if q.axis is not None or q.bits > 8:
            raise ValueError(
                f"x quantizer must be per-tensor with <= 8 bits, got axis={q.axis}, bits={q.bits}"
            )
        if not bool(q.initialized):
            raise ValueError("x quantizer is not calibrated; run calibrate_(model, batches) first")
        self.fake = fake
        self.bits = int(q.bits)
        self.scale = float(q.scale)
        self.integer = False
        self.last_codes = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.integer:
            return self.fake(x)
        with _section("quant"):
            qmax = 2 ** (self.bits - 1) - 1
            s = torch.as_tensor(self.scale, dtype=x.dtype, device=x.device)
            codes = torch.clamp(torch.round(x / s), -qmax, qmax).to(torch.int8)
            self.last_codes = codes
            return codes.to(x.dtype) * s


class IntegerVectorQuantizer(nn.Module):
    """Integer form of :class:`~spherequant.models.gaq.VectorFeatureQuantizer` (``chi_quant``).

    Integer mode: the degree-1 block is encoded to MDDQ codes (magnitude ``uint8`` for <= 8 bits, direction
    ``code_dtype(K, "torch")``), kept in ``last_codes``, and decoded by table lookup
    ``magnitude_levels[mag] * direction_table[dir]``; blocks of degree >= 2 use the wrapped per-tensor
    quantizers. Otherwise the wrapped fake quantizer runs.

    Parameters
    ----------
    fake : VectorFeatureQuantizer
        Calibrated (``r_max`` known, codebook fitted).
    """

    def __init__(self, fake: VectorFeatureQuantizer):
        super().__init__()
        if not isinstance(fake, VectorFeatureQuantizer):
            raise TypeError(f"fake must be a VectorFeatureQuantizer, got {type(fake).__name__}")
        if fake.mddq.r_max is None or (fake.kmeans and not fake.fitted):
            raise ValueError("chi quantizer is not calibrated; run calibrate_(model, batches) first")
        self.fake = fake
        mq = fake.mddq.magnitude_quantizer
        self.register_buffer("magnitude_levels", torch.as_tensor(mq.levels, dtype=torch.float64))
        pts = np.array(fake.mddq._points, dtype=np.float64)
        self.register_buffer("direction_table", torch.from_numpy(pts))
        self.magnitude_bits = int(fake.mddq.magnitude_bits)
        self.direction_bits = (fake.mddq.num_codewords - 1).bit_length()
        self.integer = False
        self.last_codes = None

    def lookup(self, mag_idx: torch.Tensor, dir_idx: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
        """Decode MDDQ codes by two table gathers: vectors of shape ``mag_idx.shape + (3,)``."""
        m = self.magnitude_levels.to(dtype).index_select(0, mag_idx.reshape(-1).long())
        c = self.direction_table.to(dtype).index_select(0, dir_idx.reshape(-1).long())
        return (m[:, None] * c).reshape(*mag_idx.shape, 3)

    def forward(self, chi: torch.Tensor) -> torch.Tensor:
        if not self.integer:
            return self.fake(chi)
        f = self.fake
        with _section("quant"):
            parts = []
            for l, off in zip(f.degrees, f.offsets):
                block = chi[:, off : off + 2 * l + 1]
                if l == 1:
                    mag, dire = f.mddq.encode(block.detach())
                    self.last_codes = (mag, dire)
                    parts.append(self.lookup(mag, dire, chi.dtype))
                else:
                    parts.append(f.blocks[str(l)](block))
            return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


# ----------------------------------------------------------------------------------------------------------
# the integer model
# ----------------------------------------------------------------------------------------------------------
def _x_consumers(layer_prefix: str) -> list[str]:
    return [f"{layer_prefix}.feature_block.attention.query", f"{layer_prefix}.feature_block.attention.key",
            f"{layer_prefix}.feature_block.value", f"{layer_prefix}.geometric_block.attention.query",
            f"{layer_prefix}.geometric_block.attention.key"]  # fmt: skip


class _NotFusable(Exception):
    """The integer network has a structure the fused forward does not cover (the module path runs)."""


#: Edge pairs (or edges) per block of the fused forward on the CPU: one block's temporaries stay in cache.
EDGE_BLOCK = 512
#: The same on a GPU, where every operation is a kernel launch: blocks as large as memory comfortably allows.
EDGE_BLOCK_GPU = 262144
#: Pair each edge with its reverse (one filter evaluation for both) from this many edges on (the filter
#: GEMMs dominate already at one azobenzene, 412 edges, so by default always).
PAIR_MIN_EDGES = 0


def _float_params(mod, dtype):
    """``(W^T, b)`` of a weight-only (float input) linear layer: W^T (in, out) contiguous, b or None."""
    if isinstance(mod, IntegerLinear):
        w = mod.dequantized_weight(dtype)
    elif type(mod) is nn.Linear:
        w = mod.weight.detach().to(dtype)
    else:
        raise _NotFusable(f"linear layer of type {type(mod).__name__}")
    return w.t().contiguous(), None if mod.bias is None else mod.bias.detach().to(dtype)


def _mlp2_params(seq, dtype):
    if type(seq) is not nn.Sequential or len(seq) != 3 or type(seq[1]) is not nn.SiLU:
        raise _NotFusable("an MLP is not Linear-SiLU-Linear")
    (w1, b1), (w2, b2) = _float_params(seq[0], dtype), _float_params(seq[2], dtype)
    if b1 is None or b2 is None:
        raise _NotFusable("an MLP layer has no bias")
    return w1, b1, w2, b2


def _projection(mods, act_scale, dtype):
    """Concatenated projections: ("int", W^T int8 (in, sum out), s_x s_w) when every module multiplies int8
    activations of scale ``act_scale``, else ("float", W^T, bias or None)."""
    if act_scale is not None and all(
        isinstance(m, IntegerLinear) and m.act_scale == act_scale and m.bias is None for m in mods
    ):
        wt = _gemm_operand(torch.cat([m.int_weight() for m in mods]).t().contiguous())
        return ("int", wt, torch.cat([m.output_scale(dtype) for m in mods]), None)
    params = [_float_params(m, dtype) for m in mods]
    if any(b is not None for _, b in params):
        raise _NotFusable("an attention projection has a bias")
    return ("float", torch.cat([w for w, _ in params], dim=1).contiguous(), None, None)


def _readout_first(mod, act_scale, dtype):
    if act_scale is not None and isinstance(mod, IntegerLinear) and mod.act_scale == act_scale:
        return ("int", mod.gemm_weight_t(), mod.output_scale(dtype), mod.bias.detach().to(dtype)
                if mod.bias is not None else None)  # fmt: skip
    w, b = _float_params(mod, dtype)
    return ("float", w, None, b)


def _apply_projection(proj, x, codes):
    kind, wt, scale, bias = proj
    if kind == "int":
        if wt.dtype == torch.float32 and wt.shape[0] <= _F32_EXACT_K and not codes.is_cuda:
            # the exact float32 kernel (_gemm_operand): integer accumulators as float32, no int32 round trip
            acc = codes.to(torch.float32) @ wt
            y = acc.mul_(scale) if x.dtype == torch.float32 else acc.to(x.dtype).mul_(scale)
        else:
            y = _int_mm_t(codes, wt).to(x.dtype).mul_(scale)
        return y if bias is None else y.add_(bias)
    return x @ wt if bias is None else torch.addmm(bias, x, wt)


def _build_fused_plan(net: So3krates, dtype, device) -> dict:
    """Weights and constants of the fused integer forward of ``net`` (raises :class:`_NotFusable`)."""
    if tuple(net.degrees) != (1,):
        raise _NotFusable(f"degrees {tuple(net.degrees)} (the fused forward covers degrees (1,))")
    if net._forward_hooks or net._forward_pre_hooks:
        raise _NotFusable("the network has forward hooks")
    if not isinstance(net.embedding, (IntegerEmbedding, nn.Embedding)):
        raise _NotFusable("embedding")
    emb = (net.embedding.dequantized_weight(dtype) if isinstance(net.embedding, IntegerEmbedding)
           else net.embedding.weight.detach().to(dtype))  # fmt: skip
    nf = int(net.num_features)
    layers = []
    prev_scale = None  # scale of the int8 codes entering the layer (None: float input, the embedding)
    for layer in net.layers:
        if layer._forward_hooks or layer._forward_pre_hooks or layer.record_attention:
            raise _NotFusable("a layer has hooks or records its attention")
        xq, cq = layer.x_quant, layer.chi_quant
        if not isinstance(xq, IntegerScalarQuantizer) or not isinstance(cq, IntegerVectorQuantizer):
            raise _NotFusable("a layer's activation quantizers are not integer quantizers")
        if cq.fake.degrees != (1,):
            raise _NotFusable("chi quantizer degrees")
        fb, gb = layer.feature_block, layer.geometric_block
        fa, ga = fb.attention, gb.attention
        if fa.attention != ga.attention:
            raise _NotFusable("feature and geometric blocks use different attention modes")
        # filters of both blocks: first layers stacked [radial f; spherical f; radial g; spherical g]
        rf, sf = _mlp2_params(fa.filter.radial, dtype), _mlp2_params(fa.filter.spherical, dtype)
        rg, sg = _mlp2_params(ga.filter.radial, dtype), _mlp2_params(ga.filter.spherical, dtype)
        hid = [rf[0].shape[1], sf[0].shape[1], rg[0].shape[1], sg[0].shape[1]]
        k_rbf = rf[0].shape[0]
        w1_rbf = torch.zeros(k_rbf, sum(hid), dtype=dtype, device=device)
        w1_chi = torch.zeros(1, sum(hid), dtype=dtype, device=device)
        o = np.cumsum([0, *hid])
        w1_rbf[:, o[0] : o[1]] = rf[0]
        w1_chi[:, o[1] : o[2]] = sf[0]
        w1_rbf[:, o[2] : o[3]] = rg[0]
        w1_chi[:, o[3] : o[4]] = sg[0]
        b1 = torch.cat([rf[1], sf[1], rg[1], sg[1]])
        entry = dict(
            mode=fa.attention, w1_rbf=w1_rbf, w1_chi=w1_chi, b1=b1, split=int(o[2]),
            w2_f=torch.cat([rf[2], sf[2]]).contiguous(), b2_f=rf[3] + sf[3],
            w2_g=torch.cat([rg[2], sg[2]]).contiguous(), b2_g=rg[3] + sg[3],
            heads=(fa.num_heads, fa.head_dim, ga.num_heads, ga.head_dim),
            proj=_projection([fa.query, ga.query, fa.key, ga.key, fb.value], prev_scale, dtype),
            exchange=_mlp2_params(layer.exchange_block.mlp, dtype),
            x_bits=xq.bits, x_scale=torch.as_tensor(xq.scale, dtype=dtype, device=device),
            mddq=cq.fake.mddq, levels=cq.magnitude_levels.to(dtype), points=cq.direction_table.to(dtype),
        )  # fmt: skip
        if (torch.device(device).type == "cpu" and dtype in (torch.float32, torch.float64)
                and hasattr(cq.fake.mddq.codebook, "nearest_unchecked")):  # fmt: skip
            # the compiled MDDQ encode reads numpy tables; the codebook is queried with a few vectors per
            # call, so its lookup table is built now
            thr = cq.fake.mddq.magnitude_quantizer.level_tensors(entry["levels"])[1].to(dtype)
            entry["np_tables"] = (thr.numpy(), entry["levels"].numpy(), entry["points"].numpy())
            if hasattr(cq.fake.mddq.codebook, "prepare_nearest"):
                cq.fake.mddq.codebook.prepare_nearest("float64" if dtype == torch.float64 else "float32")
        # per-head sums of the stacked [feature | geometric] channels: seg (wf + wg, hf + hg)
        heads = [(fa.head_dim, fa.num_heads), (ga.head_dim, ga.num_heads)]
        seg_of_col = torch.cat([torch.arange(nh).repeat_interleave(dh) + off
                                for (dh, nh), off in zip(heads, (0, fa.num_heads))]).to(device)  # fmt: skip
        seg = torch.zeros(seg_of_col.shape[0], fa.num_heads + ga.num_heads, dtype=dtype, device=device)
        seg[torch.arange(seg.shape[0], device=device), seg_of_col] = 1.0
        entry.update(
            seg=seg,
            seg_of_col=seg_of_col,
            inv_sqrt=torch.tensor(
                [1 / math.sqrt(dh) for dh, nh in heads for _ in range(nh)], dtype=dtype, device=device
            ),
        )
        if fa.attention == "cosine":
            (wbf, bbf), (wbg, bbg) = _float_params(fa.bias, dtype), _float_params(ga.bias, dtype)
            # the bias layer applied to the filter w = h W2 + b2, folded into one map of the hidden h
            # (float64 products): bias(w) = h (W2 Wb) + (b2 Wb + bb)
            f64 = torch.float64
            w2f, w2g = entry["w2_f"].to(f64), entry["w2_g"].to(f64)
            bias_h = torch.block_diag(w2f @ wbf.to(f64), w2g @ wbg.to(f64)).to(dtype)
            bias_hb = torch.cat([entry["b2_f"].to(f64) @ wbf.to(f64) + bbf.to(f64),
                                 entry["b2_g"].to(f64) @ wbg.to(f64) + bbg.to(f64)]).to(dtype)  # fmt: skip
            entry.update(bias_h=bias_h, bias_hb=bias_hb,
                         tau=torch.cat([fa.tau.detach().to(dtype).expand(fa.num_heads),
                                        ga.tau.detach().to(dtype).expand(ga.num_heads)]),
                         eps=torch.tensor([fa.eps] * fa.num_heads + [ga.eps] * ga.num_heads, dtype=dtype,
                                          device=device))  # fmt: skip
        on_cpu = torch.device(device).type == "cpu"
        if _numba is not None and on_cpu and dtype in (torch.float32, torch.float64):
            # the compiled logits kernel (_logits_impl): channel offsets of the heads and numpy constants
            sizes = [fa.head_dim] * fa.num_heads + [ga.head_dim] * ga.num_heads
            np_dtype = np.float32 if dtype == torch.float32 else np.float64
            unused = np.zeros(len(sizes), dtype=np_dtype)
            cos = fa.attention == "cosine"
            entry.update(
                hoff=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64), zero=np_dtype(0),
                scale_np=entry["inv_sqrt"].numpy(), no_bias=np.zeros((1, len(sizes)), dtype=np_dtype),
                tau_np=entry["tau"].numpy() if cos else unused,
                eps_np=entry["eps"].numpy() if cos else unused,
            )  # fmt: skip
        layers.append(entry)
        prev_scale = xq.scale
    readout = net.energy_mlp
    if type(readout) is not nn.Sequential or len(readout) != 3 or type(readout[1]) is not nn.SiLU:
        raise _NotFusable("energy MLP is not Linear-SiLU-Linear")
    plan = dict(
        emb=emb, layers=layers, num_features=nf,
        readout=(_readout_first(readout[0], prev_scale, dtype), _float_params(readout[2], dtype)),
    )  # fmt: skip
    kind, wt, _, bias = layers[0]["proj"] if layers else (None, None, None, None)
    if kind == "float" and bias is None:
        plan["emb_proj"] = emb @ wt  # (elements, projections): a gather instead of a GEMM per call
    return plan


def _edge_pairs(i: torch.Tensor, j: torch.Tensor, n: int):
    """``(fwd, rev)``: edges ``fwd`` with ``i < j`` and the index of each one's reverse edge ``(j, i)``, when
    every edge has exactly one reverse (a symmetric neighbour list such as a radius graph); else
    ``(arange(E), None)``. The filter of an edge depends on ``|r_ij|`` and ``|chi_j - chi_i|^2`` only, both
    bitwise symmetric, so one evaluation serves both directions."""
    e = i.shape[0]
    if _compiled(i) and e >= PAIR_MIN_EDGES and not e % 2:
        fwd, rev = np.empty(e // 2, dtype=np.int64), np.empty(e // 2, dtype=np.int64)
        ii, jj = i.numpy(), j.numpy()
        if _kernel("pairs")(np.ascontiguousarray(ii), np.ascontiguousarray(jj), n, fwd, rev):
            return torch.from_numpy(fwd), torch.from_numpy(rev)
        return torch.arange(e), None
    every = torch.arange(e, device=i.device)
    if e < PAIR_MIN_EDGES or e % 2:
        return every, None
    key = i * n + j
    sk, perm = torch.sort(key)
    rkey = j * n + i
    at = torch.searchsorted(sk, rkey).clamp_max_(e - 1)
    # every reverse present, no duplicate edge, no self edge: one check (one device sync)
    bad = (sk.index_select(0, at) != rkey).any() | (sk[1:] == sk[:-1]).any() | (i == j).any()
    if bool(bad):
        return every, None
    fwd = (i < j).nonzero().squeeze(1)
    return fwd, perm.index_select(0, at.index_select(0, fwd))


# ----------------------------------------------------------------------------------------------------------
# fused activation quantization and MDDQ encode (compiled; the torch chains below are the fallback)
# ----------------------------------------------------------------------------------------------------------
try:  # numba is a core dependency on CPython (see spherequant.lookup)
    import numba as _numba
except ImportError:  # pragma: no cover - PyPy / platforms without numba wheels
    _numba = None

#: Run the fused forward's compiled loops on the CPU (numba): activation quantization, MDDQ encode/decode,
#: edge pairing, attention logits, softmax and messages (module docstring); False: the equivalent chains of
#: torch operations (the same results, bit for bit or to float round-off as said there; tested).
USE_COMPILED_QUANT = _numba is not None
#: Smallest activation (elements) quantized by the compiled loop: below it the torch chain is faster (the
#: compiled call's fixed cost; measured crossover ~300 atoms x 132 features).
COMPILED_QUANT_MIN = 40_000


def _quant_x_impl(x, dx, s, qmax, dec, codes):
    """dec = clip(rint((x + dx) / s), -qmax, qmax) * s and its int8 codes, element by element."""
    n, f = x.shape
    for a in range(n):
        for b in range(f):
            q = np.rint((x[a, b] + dx[a, b]) / s)
            if q > qmax:
                q = qmax
            elif q < -qmax:
                q = -qmax
            codes[a, b] = np.int8(q)
            dec[a, b] = q * s


def _polar_codes_impl(v, dv, thr, w, u, mag):
    """w = v + dv; MDDQ polar split of w (as _polar_split) into u, magnitude codes into mag.

    Returns the number of non-finite rows (the caller raises)."""
    bad = 0
    for k in range(v.shape[0]):
        a = v[k, 0] + dv[k, 0]
        b = v[k, 1] + dv[k, 1]
        c = v[k, 2] + dv[k, 2]
        w[k, 0] = a
        w[k, 1] = b
        w[k, 2] = c
        if not (np.isfinite(a) and np.isfinite(b) and np.isfinite(c)):
            bad += 1
            mag[k] = 0
            u[k, 0] = 0
            u[k, 1] = 0
            u[k, 2] = 1
            continue
        m = max(abs(a), abs(b), abs(c))
        if m == 0:
            mag[k] = 0
            u[k, 0] = 0
            u[k, 1] = 0
            u[k, 2] = 1
            continue
        ya, yb, yc = a / m, b / m, c / m
        rs = np.sqrt(ya * ya + yb * yb + yc * yc)
        r = m * rs
        u[k, 0] = ya / rs
        u[k, 1] = yb / rs
        u[k, 2] = yc / rs
        lo, hi = 0, thr.shape[0]  # number of thresholds <= r (torch.bucketize(right=True))
        while lo < hi:
            mid = (lo + hi) // 2
            if thr[mid] <= r:
                lo = mid + 1
            else:
                hi = mid
        mag[k] = lo
    return bad


def _pairs_impl(i, j, n, fwd, rev):
    """The compiled :func:`_edge_pairs`: fills ``fwd`` (edges with i < j, ascending) and ``rev`` (the index
    of each one's reverse edge); False when some edge has no reverse, is duplicated or is a self edge."""
    e = i.shape[0]
    key = i * n + j
    perm = np.argsort(key, kind="mergesort")
    sk = key[perm]
    for a in range(1, e):
        if sk[a] == sk[a - 1]:
            return False
    c = 0
    for a in range(e):
        if i[a] == j[a]:
            return False
        if i[a] < j[a]:
            if c == fwd.shape[0]:
                return False
            r = j[a] * n + i[a]
            lo, hi = 0, e
            while lo < hi:
                mid = (lo + hi) // 2
                if sk[mid] < r:
                    lo = mid + 1
                else:
                    hi = mid
            if lo == e or sk[lo] != r:
                return False
            fwd[c] = a
            rev[c] = perm[lo]
            c += 1
    return 2 * c == e


def _softmax_impl(logits, index, phi, num_nodes, tiny, out):
    """``out = phi * scatter_softmax(logits, index, num_nodes, weight=phi)``, the operations of
    :func:`~spherequant.models.so3krates.scatter_softmax` in its order (per-receiver maximum, weighted
    exponentials summed in edge order, divided by the sum clamped at ``tiny``), then times ``phi``."""
    e, h = logits.shape
    m = np.full((num_nodes, h), -np.inf, dtype=logits.dtype)
    s = np.zeros((num_nodes, h), dtype=logits.dtype)
    for a in range(e):
        r = index[a]
        for b in range(h):
            if logits[a, b] > m[r, b]:
                m[r, b] = logits[a, b]
    for a in range(e):
        r = index[a]
        for b in range(h):
            v = np.exp(logits[a, b] - m[r, b]) * phi[a]
            out[a, b] = v
            s[r, b] += v
    for a in range(e):
        r = index[a]
        for b in range(h):
            out[a, b] = out[a, b] / max(s[r, b], tiny) * phi[a]


def _logits_impl(q, k, w, recv, send, eid, hoff, cosine, bias, tau, eps, phi, scale, zero, logits):
    """Attention logits of one block of edges, written to ``logits[eid]``: per row ``rho`` (receiver
    ``recv``, sender ``send``, filter row ``rho % c`` shared by both directions of a pair) and head ``h``
    (channels ``hoff[h]:hoff[h + 1]``), ``dot = <q_i, k_j w>`` and ``n2 = |k_j w|^2``; cosine:
    ``bias + tau dot / (sqrt(n2) + eps)``, else ``dot phi_e scale_h``. The channel sums are reassociated
    (vectorised), so they differ from the torch chain by round-off."""
    c = w.shape[0]
    for rho in range(recv.shape[0]):
        a, b, wr, e = recv[rho], send[rho], rho % c, eid[rho]
        for h in range(hoff.shape[0] - 1):
            dot = zero
            n2 = zero
            for ch in range(hoff[h], hoff[h + 1]):
                pk = k[b, ch] * w[wr, ch]
                dot += q[a, ch] * pk
                n2 += pk * pk
            if cosine:
                logits[e, h] = bias[wr, h] + tau[h] * (dot / (np.sqrt(n2) + eps[h]))
            else:
                logits[e, h] = dot * phi[e] * scale[h]


def _messages_impl(v, alpha, i, j, hf, dhf, dx):
    """``dx[i_e] += alpha[e, h] v[j_e]`` over the channels of each feature head ``h < hf``, edges in order
    (the products and the order of ``index_add_``)."""
    for e in range(i.shape[0]):
        a, b = i[e], j[e]
        for h in range(hf):
            al = alpha[e, h]
            for ch in range(h * dhf, (h + 1) * dhf):
                dx[a, ch] += v[b, ch] * al


def _decode_impl(levels, points, mag, dire, out):
    for k in range(mag.shape[0]):
        m = levels[mag[k]]
        for d in range(3):
            out[k, d] = m * points[dire[k], d]


_KERNELS: dict = {}


def _kernel(name):
    if name == "logits" and name not in _KERNELS:
        _KERNELS[name] = _numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})(_logits_impl)
    if name not in _KERNELS:
        impl = {"quant": _quant_x_impl, "polar": _polar_codes_impl, "decode": _decode_impl,
                "pairs": _pairs_impl, "softmax": _softmax_impl, "messages": _messages_impl}[name]  # fmt: skip
        _KERNELS[name] = _numba.njit(cache=True, nogil=True)(impl)
    return _KERNELS[name]


def _compiled(*tensors) -> bool:
    return USE_COMPILED_QUANT and all(t.device.type == "cpu" for t in tensors)


def _quantize_x(x: torch.Tensor, dx: torch.Tensor, entry: dict):
    """``x + dx`` -> decoded ``clip(round((x + dx) / s), -q, q) * s`` and its int8 codes (GAQ's per-tensor
    symmetric activation quantizer)."""
    qmax = 2 ** (entry["x_bits"] - 1) - 1
    s = entry["x_scale"]
    if x.numel() >= COMPILED_QUANT_MIN and _compiled(x):
        dec, codes = torch.empty_like(x), torch.empty(x.shape, dtype=torch.int8)
        _kernel("quant")(x.numpy(), dx.numpy(), s.numpy()[()], float(qmax), dec.numpy(), codes.numpy())
        return dec, codes
    t = (x + dx).div_(s).round_().clamp_(-qmax, qmax)
    codes = t.to(torch.int8)
    return t.mul_(s), codes


def _polar_split(chi: torch.Tensor):
    """``(r, u)``: the core's polar split (``spherequant._backend.polar``) op for op, with fewer operations.

    Dividing by the largest ``|component|`` m makes the largest entry exactly 1, so the core's overflow-safe
    norm (which rescales by the power of two of that entry, here 1) is the plain square root of the sum of
    squares: ``r = m |v / m|``, ``u = (v / m) / |v / m|``. Zero rows get ``r = 0`` and ``u = (0, 0, 1)``.
    """
    m = chi.abs().amax(dim=-1, keepdim=True)
    zero = m == 0
    vs = chi / m.masked_fill(zero, 1.0)
    rs = torch.sqrt(torch.sum(vs * vs, dim=-1, keepdim=True))
    r = (m * rs)[:, 0]
    u = vs.div_(rs.masked_fill_(zero, 1.0))
    u[:, 2].masked_fill_(zero[:, 0], 1.0)
    return r, u


def _mddq_codes(mddq, chi: torch.Tensor):
    """MDDQ codes ``(magnitude, direction)`` (int64) of vectors ``chi`` (N, 3): the same codes as
    ``mddq.encode(chi)`` (polar split, magnitude thresholds and nearest-codeword search of the core), with
    one finiteness check instead of one per stage and no decoding."""
    if chi.device.type != "cpu" or not hasattr(mddq.codebook, "nearest_unchecked"):
        mag, dire = mddq.encode(chi)
        return mag.long(), dire.long()
    if not bool(torch.isfinite(chi).all()):
        raise ValueError("chi contains NaN or infinite entries")
    r, u = _polar_split(chi)
    mag = torch.bucketize(r, mddq.magnitude_quantizer.level_tensors(r)[1], right=True)
    dt = np.float64 if chi.dtype == torch.float64 else np.float32
    flat = np.ascontiguousarray(u.numpy(), dtype=dt)
    dire = torch.from_numpy(np.asarray(mddq.codebook.nearest_unchecked(flat), dtype=np.int64))
    return mag, dire


def _mddq(chi: torch.Tensor, dchi: torch.Tensor, entry: dict) -> torch.Tensor:
    """MDDQ-quantized ``chi + dchi`` (N, 3): codes (:func:`_mddq_codes`) decoded by two table gathers."""
    mddq = entry["mddq"]
    tables = entry.get("np_tables")  # numpy views of (thresholds, levels, points): CPU plans with numba
    if tables is None or not USE_COMPILED_QUANT or chi.device.type != "cpu":
        mag, dire = _mddq_codes(mddq, chi + dchi)
        m = entry["levels"].index_select(0, mag)
        return m[:, None] * entry["points"].index_select(0, dire)
    thr, levels, points = tables
    n = chi.shape[0]
    w, u, out = np.empty((n, 3), dtype=thr.dtype), np.empty((n, 3), dtype=thr.dtype), torch.empty_like(chi)
    mag = np.empty(n, dtype=np.int64)
    if _kernel("polar")(chi.numpy(), dchi.numpy(), thr, w, u, mag):
        raise ValueError("chi contains NaN or infinite entries")
    dire = np.asarray(mddq.codebook.nearest_unchecked(u), dtype=np.int64)
    _kernel("decode")(levels, points, mag, dire, out.numpy())
    return out


def _edge_blocks(i, j, fwd, rev, block):
    """Per block of edge pairs: (pair slice, receivers, senders, edge ids) with both directions stacked."""
    i_p, j_p = i.index_select(0, fwd), j.index_select(0, fwd)
    out = []
    for s in range(0, fwd.shape[0], block):
        t = min(s + block, fwd.shape[0])
        if rev is None:
            out.append((s, t, i_p[s:t], j_p[s:t], fwd[s:t]))
        else:
            out.append((s, t, torch.cat([i_p[s:t], j_p[s:t]]), torch.cat([j_p[s:t], i_p[s:t]]),
                        torch.cat([fwd[s:t], rev[s:t]])))  # fmt: skip
    return i_p, j_p, out


def _head_sums(t: torch.Tensor, hf: int, dhf: int, hg: int, dhg: int) -> torch.Tensor:
    """Per-head sums (R, hf + hg) of stacked [feature | geometric] channels ``t`` (R, hf dhf + hg dhg)."""
    r, wf = t.shape[0], hf * dhf
    if dhf == dhg:  # one reduction (the same sums: each head's channels are contiguous either way)
        return t.view(r, hf + hg, dhf).sum(-1)
    return torch.cat([t[:, :wf].view(r, hf, dhf).sum(-1), t[:, wf:].view(r, hg, dhg).sum(-1)], dim=1)


def _fused_layer(entry, x, chi, codes, geo, block, proj=None):
    i, j, phi, sh, i_p, j_p, blocks, rbf_p = geo
    na, nf = x.shape
    hf, dhf, hg, dhg = entry["heads"]
    wf, wg = hf * dhf, hg * dhg
    cosine = entry["mode"] == "cosine"
    with _section("gemm"):
        if proj is None:  # columns [q_f | q_g | k_f | k_g | v]
            proj = _apply_projection(entry["proj"], x, codes)
    with _section("attention"):
        q = proj[:, : wf + wg]
        if cosine:  # normalise the queries per atom (the same numbers as per edge after the gather)
            n2 = (q * q) @ entry["seg"]
            q = q / torch.sqrt(n2).add_(entry["eps"]).index_select(1, entry["seg_of_col"])
        k = proj[:, wf + wg : 2 * (wf + wg)]
        v = proj[:, 2 * (wf + wg) :]
        diff = chi.index_select(0, j_p) - chi.index_select(0, i_p)
        chi_inv = (diff * diff).sum(-1, keepdim=True)  # (P, 1) |chi_j - chi_i|^2
        logits = x.new_empty(i.shape[0], hf + hg)
        split = entry["split"]
        # buffers reused by every block: a block's per-edge temporaries stay in the CPU cache
        most = max((t - s for s, t, *_ in blocks), default=0)
        rows = max((recv.shape[0] for _, _, recv, _, _ in blocks), default=0)
        fused_logits = _compiled(x) and "hoff" in entry
        wbuf = x.new_empty(most, wf + wg)
        if not fused_logits:  # the torch chain's gathered keys and queries
            pbuf, qbuf = x.new_empty(rows, wf + wg), x.new_empty(rows, wf + wg)
        else:
            np_args = (q.contiguous().numpy(), k.contiguous().numpy())
            heads_np = (entry["hoff"], cosine)
            tail_np = (entry["tau_np"], entry["eps_np"], phi.numpy(), entry["scale_np"], entry["zero"],
                       logits.numpy())  # fmt: skip
        for s, t, recv, send, eid in blocks:
            c, r = t - s, recv.shape[0]
            h = torch.addmm(entry["b1"], rbf_p[s:t], entry["w1_rbf"])
            h.addmm_(chi_inv[s:t], entry["w1_chi"])
            F.silu(h, inplace=True)
            w = wbuf[:c]
            torch.addmm(entry["b2_f"], h[:, :split], entry["w2_f"], out=w[:, :wf])
            torch.addmm(entry["b2_g"], h[:, split:], entry["w2_g"], out=w[:, wf:])
            if fused_logits:
                bias = entry["no_bias"]
                if cosine:
                    bias = torch.addmm(entry["bias_hb"], h, entry["bias_h"]).numpy()
                _kernel("logits")(*np_args, w.numpy(), recv.numpy(), send.numpy(), eid.numpy(), *heads_np,
                                  bias, *tail_np)  # fmt: skip
                continue
            p = torch.index_select(k, 0, send, out=pbuf[:r])
            p.view(-1, c, wf + wg).mul_(w)  # k_j * w_ij (both directions share w)
            qp = torch.index_select(q, 0, recv, out=qbuf[:r]).mul_(p)
            dot = _head_sums(qp, hf, dhf, hg, dhg)  # per-head <q_i, k_j w_ij>
            if cosine:
                nrm = torch.sqrt_(_head_sums(p.mul_(p), hf, dhf, hg, dhg))  # per-head |k_j w_ij|
                nrm.add_(entry["eps"])
                bias = torch.addmm(entry["bias_hb"], h, entry["bias_h"])
                lg = torch.addcmul(bias, dot.div_(nrm).view(-1, c, hf + hg), entry["tau"]).view(r, hf + hg)
            else:
                lg = dot.mul_(phi.index_select(0, eid)[:, None] * entry["inv_sqrt"])
            logits.index_copy_(0, eid, lg)
        if cosine and _compiled(logits):
            alpha = torch.empty_like(logits)
            _kernel("softmax")(logits.numpy(), i.numpy(), phi.numpy(), na, torch.finfo(x.dtype).tiny,
                               alpha.numpy())  # fmt: skip
        elif cosine:
            alpha = scatter_softmax(logits, i, na, weight=phi).mul_(phi[:, None])
        else:
            alpha = logits
        dx = x.new_zeros(na, wf)
        if fused_logits:  # the same products added in the same (edge) order as index_add_: bit for bit
            _kernel("messages")(v.numpy(), alpha.numpy(), i.numpy(), j.numpy(), hf, dhf, dx.numpy())
        else:
            for s in range(0, i.shape[0], 2 * block):
                t = min(s + 2 * block, i.shape[0])
                msg = v.index_select(0, j[s:t]).view(t - s, hf, dhf).mul_(alpha[s:t, :hf, None])
                dx.index_add_(0, i[s:t], msg.view(t - s, wf))
        dchi = x.new_zeros(na, 3).index_add_(0, i, alpha[:, hf:] * sh)
    with _section("quant"):
        x, _ = _quantize_x(x, dx, entry)
        chi = _mddq(chi, dchi, entry)
    with _section("gemm"):
        w1, b1, w2, b2 = entry["exchange"]
        hx = F.silu(torch.addmm(b1, torch.cat([x, (chi * chi).sum(-1, keepdim=True)], dim=1), w1))
        y = torch.addmm(b2, hx, w2)
    with _section("quant"):
        x, codes = _quantize_x(x, y[:, :nf], entry)
        chi = _mddq(chi, y[:, nf:] * chi, entry)
    return x, chi, codes


class IntegerSo3krates(nn.Module):
    """A converted GAQ So3krates with integer storage and integer GEMMs (build with
    :func:`convert_to_integer`).

    ``forward(z, pos, batch=None, *, compute_forces=True, edge_index=None, num_graphs=None)`` returns a dict
    like :class:`~spherequant.models.so3krates.So3krates` (``"energy"`` (B,) eV, ``"forces"`` (N, 3)
    eV/Angstrom); which path gives which output depends on ``force_mode`` (module docstring).
    :meth:`integer_energy` runs the integer path only: the fused forward (module docstring) when it covers
    the network (:meth:`fused_unsupported_reason`), else module by module.

    Attributes
    ----------
    net : So3krates
        The network with :class:`IntegerLinear`, :class:`IntegerEmbedding`, :class:`IntegerScalarQuantizer`
        and :class:`IntegerVectorQuantizer` modules in place of the fake-quant ones.
    force_mode : {"smooth", "ste"}
    """

    def __init__(self, net: So3krates, force_mode: str, spec: QuantizationSpec | None):
        super().__init__()
        self.net = net
        self.force_mode = force_mode
        self.spec = spec

    def _set_integer(self, flag: bool) -> None:
        for m in self.net.modules():
            if isinstance(m, (_IntegerWeights, IntegerScalarQuantizer, IntegerVectorQuantizer)):
                m.integer = flag

    # --- the fused plan: built once per (dtype, device), dropped on moves / casts / state loading ---------
    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_fused_plans", None)
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args, **kwargs):
        self.__dict__.pop("_fused_plans", None)
        return super()._load_from_state_dict(*args, **kwargs)

    def clear_cache(self) -> None:
        """Drop the fused plan and every layer's cached unpacked weights (after in-place edits of codes)."""
        self.__dict__.pop("_fused_plans", None)
        for m in self.net.modules():
            if isinstance(m, _IntegerWeights):
                m.clear_cache()

    def fused_plan(self):
        """The fused forward's weights for the network's dtype and device, or None when not supported
        (:meth:`fused_unsupported_reason` says why)."""
        dtype, device = self.net.dtype, self.net.device
        plans = self.__dict__.get("_fused_plans")
        if plans is None or plans.get("generation") != _WEIGHT_GENERATION[0]:
            plans = self.__dict__["_fused_plans"] = {"generation": _WEIGHT_GENERATION[0]}
        if (dtype, device) not in plans:
            with torch.no_grad():
                try:
                    plans[(dtype, device)] = _build_fused_plan(self.net, dtype, device)
                except _NotFusable as exc:
                    plans[(dtype, device)] = str(exc)
        plan = plans[(dtype, device)]
        return None if isinstance(plan, str) else plan

    def fused_unsupported_reason(self) -> str | None:
        """Why the fused integer forward does not cover this network (None when it does)."""
        self.fused_plan()
        plan = self.__dict__["_fused_plans"][(self.net.dtype, self.net.device)]
        return plan if isinstance(plan, str) else None

    def integer_energy(self, z, pos, batch=None, *, edge_index=None, num_graphs=None, fused=None):
        """Energy (B,) in eV of the integer path (int8 activations, int GEMMs, MDDQ codes); no gradient.

        Parameters
        ----------
        z, pos, batch, edge_index, num_graphs
            As :meth:`~spherequant.models.so3krates.So3krates.forward`.
        fused : bool, optional
            True: the fused forward (error when unsupported); False: module by module (the reference of
            the fused one); None (default): fused when supported (:meth:`fused_unsupported_reason`).

        Returns
        -------
        torch.Tensor of shape (B,)
        """
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"fused must be a bool or None, got {type(fused).__name__}")
        plan = None if fused is False else self.fused_plan()
        if fused and plan is None:
            raise ValueError(f"the fused integer forward does not cover this model: "
                             f"{self.fused_unsupported_reason()}")  # fmt: skip
        if plan is not None:
            with torch.no_grad():
                return self._fused_energy(plan, z, pos.detach(), batch, edge_index, num_graphs)
        self._set_integer(True)
        try:
            with torch.no_grad():
                out = self.net(z, pos.detach(), batch, compute_forces=False, edge_index=edge_index,
                               num_graphs=num_graphs)  # fmt: skip
        finally:
            self._set_integer(False)
        return out["energy"]

    def _fused_energy(self, plan, z, pos, batch, edge_index, num_graphs):
        net = self.net
        if net.validate_inputs:
            net.check_inputs(z, pos, batch)
        n = z.shape[0]
        if batch is None:
            batch = torch.zeros(n, dtype=torch.long, device=pos.device)
            num_graphs = 1 if num_graphs is None else num_graphs
        batch = batch.long()
        if num_graphs is None:
            num_graphs = int(batch[-1]) + 1 if n else 0
        if edge_index is None:
            edge_index = radius_graph(pos, net.cutoff, batch if num_graphs > 1 else None)
        with _section("other"):
            zl = z.long()
            elements, element_of_atom = torch.unique(zl, return_inverse=True)
            za = torch.cat([zl, elements])
        with _section("weights"):
            x = plan["emb"].index_select(0, za)
        with _section("other"):
            i, j = edge_index[0].long(), edge_index[1].long()
            r = pos.index_select(0, j) - pos.index_select(0, i)
            d = torch.linalg.vector_norm(r, dim=-1)
            if net.validate_inputs and d.numel() and bool((d == 0).any()):
                raise ValueError("two atoms of one graph share a position (zero edge length)")
            # degree-1 spherical harmonics, "norm" normalisation: the unit vector (x, y, z) (e3nn's value up
            # to rounding; as torch.nn.functional.normalize)
            sh = r / d.clamp_min(1e-12)[:, None]
            phi = cosine_cutoff(d, net.cutoff)
            fwd, rev = _edge_pairs(i, j, n)
            rbf_p = net.radial_basis(d.index_select(0, fwd))
            block = EDGE_BLOCK if pos.device.type == "cpu" else EDGE_BLOCK_GPU
            i_p, j_p, blocks = _edge_blocks(i, j, fwd, rev, block)
            geo = (i, j, phi, sh, i_p, j_p, blocks, rbf_p)
        chi = x.new_zeros(za.shape[0], 3)
        codes = None
        for k, entry in enumerate(plan["layers"]):
            # layer 1's input is an embedding row: its projections are rows of emb @ W (plan["emb_proj"])
            proj = plan["emb_proj"].index_select(0, za) if k == 0 and "emb_proj" in plan else None
            x, chi, codes = _fused_layer(entry, x, chi, codes, geo, block, proj)
        first, (w2, b2) = plan["readout"]
        with _section("gemm"):
            h = F.silu(_apply_projection(first, x, codes), inplace=True)
            u = torch.addmm(b2, h, w2).squeeze(-1)
        with _section("other"):
            e_atoms = net.energy_shift[zl] + net.energy_scale[zl] * (u[:n] - u[n:][element_of_atom])
            return e_atoms.new_zeros(num_graphs).index_add_(0, batch, e_atoms)

    def forward(self, z, pos, batch=None, *, compute_forces=True, edge_index=None, num_graphs=None):
        kw = dict(edge_index=edge_index, num_graphs=num_graphs)
        e_int = self.integer_energy(z, pos, batch, **kw)
        if self.force_mode == "ste":
            out = {"energy": e_int}
            if compute_forces:
                out["forces"] = self.net(z, pos, batch, compute_forces=True, **kw)["forces"]
            return out
        out = self.net(z, pos, batch, compute_forces=compute_forces, **kw)
        out["energy_quantized"] = e_int
        return out


def convert_to_integer(model: So3krates) -> IntegerSo3krates:
    """Integer model of a GAQ So3krates after ``quantize_(model, cfg, step="convert")`` (model untouched).

    Parameters
    ----------
    model : So3krates
        Converted, with calibrated activation quantizers (8-bit or narrower symmetric ``x_quant``).

    Returns
    -------
    IntegerSo3krates
        In eval mode, with the model's ``force_mode``.

    Examples
    --------
    >>> from spherequant.models.gaq import QuantizationSpec, quantize_, calibrate_
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9).double()
    >>> spec = QuantizationSpec.from_options("gaq", codebook_size=64)
    >>> _ = quantize_(m, spec)
    >>> b = {"z": torch.tensor([8, 1, 1]), "pos": torch.tensor([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]],
    ...      dtype=torch.float64)}
    >>> _ = calibrate_(m, [b]); _ = quantize_(m, spec, step="convert")
    >>> im = convert_to_integer(m)
    >>> e_fake = float(m.eval()(b["z"], b["pos"], compute_forces=False)["energy"].detach())
    >>> abs(float(im.integer_energy(b["z"], b["pos"])) - e_fake) < 1e-9
    True
    """
    if not isinstance(model, So3krates):
        raise TypeError(f"model must be a So3krates, got {type(model).__name__}")
    state = quantization_state(model)
    if state is None or state.step != "converted":
        raise ValueError("model must be converted first: quantize_(model, spec, step='convert')")
    net = copy.deepcopy(model)
    net._forward_hooks.clear()  # gaq's energy_quantized hook: the integer model reports it itself
    net._forward_hooks_with_kwargs.clear()
    st = quantization_state(net)
    st.hooks.pop("quantized_energy", None)
    act_scale_of: dict[str, float] = {}
    n_layers = len(net.layers)
    for k, layer in enumerate(net.layers):
        if isinstance(layer.x_quant, ActivationQuantizer):
            layer.x_quant = IntegerScalarQuantizer(layer.x_quant)
            consumers = _x_consumers(f"layers.{k + 1}") if k + 1 < n_layers else ["energy_mlp.0"]
            for name in consumers:
                act_scale_of[name] = layer.x_quant.scale
        if isinstance(layer.chi_quant, VectorFeatureQuantizer):
            layer.chi_quant = IntegerVectorQuantizer(layer.chi_quant)
    for name, mod in list(net.named_modules()):
        if isinstance(mod, QuantLinear):
            new = IntegerLinear.from_quant_linear(mod, act_scale_of.get(name))
        elif isinstance(mod, QuantEmbedding):
            new = IntegerEmbedding.from_quant_embedding(mod)
        else:
            continue
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, child, new)
    net.eval()
    return IntegerSo3krates(net, st.force_mode, st.spec).eval()


# ----------------------------------------------------------------------------------------------------------
# memory accounting
# ----------------------------------------------------------------------------------------------------------
def _weight_entries(model: nn.Module, fmt: StorageFormat):
    """(name, branch, numel, rows, bias_numel, bits) of every linear / embedding weight."""
    out = []
    for name, mod in model.named_modules():
        if isinstance(mod, _IntegerWeights):
            numel, rows, bits = math.prod(mod.weight_shape), mod.weight_shape[0], mod.bits
            bias = getattr(mod, "bias", None)
        elif isinstance(mod, (QuantLinear, QuantEmbedding)):
            shape = (mod.weight_codes if mod.converted else mod.weight).shape
            numel, rows, bits, bias = math.prod(shape), shape[0], mod.bits, getattr(mod, "bias", None)
        elif isinstance(mod, (nn.Linear, nn.Embedding)):
            branch = branch_of(name)
            is_emb = isinstance(mod, nn.Embedding)
            quantized = not is_emb or fmt.quantize_embedding
            bits = fmt.weight_bits("invariant" if is_emb else branch) if quantized else 32
            numel, rows, bias = mod.weight.numel(), mod.weight.shape[0], getattr(mod, "bias", None)
        else:
            continue
        out.append((name, branch_of(name), int(numel), int(rows), 0 if bias is None else bias.numel(), bits))
    return out


def memory_report(model: nn.Module, n_atoms: int, n_edges: int | None = None, config=None) -> dict:
    """Bytes of weights (per branch, FP32 vs packed) and of activations (per atom and for ``n_atoms``).

    Weights: every linear layer and the embedding table, read from the model's modules. FP32 counts 4 bytes
    per weight and bias entry; quantized counts ``ceil(numel * bits / 8)`` for the codes (two int4 codes
    per byte) plus 4 bytes per output-channel scale and per bias entry, plus 12 bytes per codeword of a
    stored (k-means, learned) codebook; generated (Fibonacci, icosahedral) ones cost nothing. Other
    parameters and buffers (radial basis, energy shift/scale, attention temperatures) are FP32 in both and
    reported as ``"other"``.

    Activations per atom: the stored state between blocks, ``x`` (F features: ``ceil(F bits_x / 8)`` bytes
    vs ``4 F``) and each ``chi`` block (degree 1: MDDQ ``ceil((magnitude_bits + direction_bits) / 8)`` bytes
    vs 12; degree ``l >= 2``: ``ceil((2l+1) bits_x / 8)`` vs ``4 (2l+1)``). Per edge (when ``n_edges`` is
    given): the geometric inputs ``r_ij`` (3), radial basis (num_rbf), spherical harmonics (chi_dim) and
    cutoff (1), FP32 in both models.

    Parameters
    ----------
    model : So3krates or IntegerSo3krates
        Float, prepared, converted or integer. Bit widths come from the quantized modules; for a float model
        from ``config``.
    n_atoms : int
        Atoms in the batch (>= 1).
    n_edges : int, optional
        Directed edges in the batch (>= 0).
    config : QuantizationSpec, optional
        Bit widths for a float model (default: the model's spec, else ``QuantizationSpec()``; a deprecated
        ``GAQConfig`` is accepted).

    Returns
    -------
    dict
        ``weights``: ``{branch: {"fp32": bytes, "quantized": bytes}}`` for ``"equivariant"``,
        ``"invariant"``, ``"other"``, ``"total"``; ``activations_per_atom``: ``{"x", "chi_l1", ...,
        "total"}`` each ``{"fp32", "quantized"}``; ``activations``: totals for ``n_atoms`` (and edges);
        ``bits``: the widths used.

    Examples
    --------
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> rep = memory_report(m, n_atoms=24)
    >>> rep["activations_per_atom"]["x"], rep["activations_per_atom"]["chi_l1"]
    ({'fp32': 32, 'quantized': 8}, {'fp32': 12, 'quantized': 3})
    """
    if isinstance(model, IntegerSo3krates):
        net = model.net
    elif isinstance(model, So3krates):
        net = model
    else:
        raise TypeError(f"model must be a So3krates or IntegerSo3krates, got {type(model).__name__}")
    if isinstance(n_atoms, bool) or not isinstance(n_atoms, numbers.Integral) or n_atoms < 1:
        raise ValueError(f"n_atoms must be a positive int, got {n_atoms!r}")
    if n_edges is not None and (
        isinstance(n_edges, bool) or not isinstance(n_edges, numbers.Integral) or n_edges < 0
    ):
        raise ValueError(f"n_edges must be a non-negative int or None, got {n_edges!r}")
    if config is None:
        config = quantization_spec(net) or QuantizationSpec()
    config = to_spec(config).format

    weights = _weight_bytes(net, config)
    bits_x, mag_bits, dir_bits = _activation_bits(net, config)
    per_atom, acts = _activation_bytes(net, bits_x, mag_bits + dir_bits, n_atoms, n_edges)
    return {
        "weights": weights,
        "activations_per_atom": per_atom,
        "activations": acts,
        "bits": {
            "x": bits_x,
            "magnitude": mag_bits,
            "direction": dir_bits,
            "weight_equivariant": config.weight_bits_equivariant,
            "weight_invariant": config.weight_bits_invariant,
        },
    }


def _weight_bytes(net: So3krates, fmt: StorageFormat) -> dict:
    """The ``weights`` part of :func:`memory_report`: FP32 and quantized bytes per branch and in total."""
    weights = {b: {"fp32": 0, "quantized": 0} for b in ("equivariant", "invariant", "other")}
    prefixes = set()
    for name, branch, numel, rows, nbias, bits in _weight_entries(net, fmt):
        prefixes.add(name)
        weights[branch]["fp32"] += 4 * (numel + nbias)
        q = 4 * (numel + nbias) if bits >= 32 else math.ceil(numel * bits / 8) + 4 * rows + 4 * nbias
        weights[branch]["quantized"] += q
    seen = set()
    for key, t in list(net.named_parameters()) + list(net.named_buffers()):
        prefix = key.rpartition(".")[0]
        if not t.is_floating_point() or prefix in prefixes:
            continue
        if "x_quant" in key.split(".") or "chi_quant" in key.split(".") or id(t) in seen:
            continue  # quantizer state (ranges, lookup tables) is not model weights
        if "degree_matrix" in key or "degree_index" in key:
            continue
        seen.add(id(t))
        weights["other"]["fp32"] += 4 * t.numel()
        weights["other"]["quantized"] += 4 * t.numel()
    for mod in net.modules():  # stored (k-means, learned) codebooks: FP32 points; generated ones: nothing
        if isinstance(mod, VectorFeatureQuantizer):  # also the one inside an IntegerVectorQuantizer
            weights["equivariant"]["quantized"] += mod.stored_codebook_bytes()
    weights["total"] = {k: sum(weights[b][k] for b in ("equivariant", "invariant", "other"))
                        for k in ("fp32", "quantized")}  # fmt: skip
    return weights


def _activation_bits(net: So3krates, fmt: StorageFormat) -> tuple[int, int, int]:
    """``(bits of x, magnitude bits, direction bits)``: from the installed quantizers, else from ``fmt``."""
    bits_x, mag_bits, dir_bits = fmt.activation_bits, fmt.magnitude_bits, None
    for layer in net.layers:
        xq, cq = layer.x_quant, layer.chi_quant
        if isinstance(xq, IntegerScalarQuantizer):
            bits_x = xq.bits
        elif isinstance(xq, ActivationQuantizer) and hasattr(xq.quantizer, "bits"):
            bits_x = int(xq.quantizer.bits)
        if isinstance(cq, IntegerVectorQuantizer):
            mag_bits, dir_bits = cq.magnitude_bits, cq.direction_bits
        elif isinstance(cq, VectorFeatureQuantizer):
            mag_bits = cq.mddq.magnitude_bits
            dir_bits = (cq.mddq.num_codewords - 1).bit_length()
        break
    if dir_bits is None:
        dir_bits = (fmt.codebook_size - 1).bit_length()
    return bits_x, mag_bits, dir_bits


def _activation_bytes(
    net: So3krates, bits_x: int, vector_bits: int, n_atoms: int, n_edges
) -> tuple[dict, dict]:
    """``(activations_per_atom, activations)`` of :func:`memory_report`."""
    nf = int(net.num_features)
    per_atom = {"x": {"fp32": 4 * nf, "quantized": math.ceil(nf * bits_x / 8)}}
    for l in net.degrees:
        if l == 1:
            per_atom["chi_l1"] = {"fp32": 12, "quantized": math.ceil(vector_bits / 8)}
        else:
            n = 2 * l + 1
            per_atom[f"chi_l{l}"] = {"fp32": 4 * n, "quantized": math.ceil(n * bits_x / 8)}
    per_atom["total"] = {k: sum(v[k] for v in per_atom.values()) for k in ("fp32", "quantized")}
    acts = {"n_atoms": int(n_atoms), "fp32": n_atoms * per_atom["total"]["fp32"],
            "quantized": n_atoms * per_atom["total"]["quantized"]}  # fmt: skip
    if n_edges is not None:
        per_edge = 4 * (3 + int(net.radial_basis.centers.numel()) + net.chi_dim + 1)
        acts.update(n_edges=int(n_edges), per_edge=per_edge)
        acts["fp32"] += n_edges * per_edge
        acts["quantized"] += n_edges * per_edge
    return per_atom, acts


def format_memory_table(report: dict) -> str:
    """Markdown table of a :func:`memory_report` (bytes, FP32 vs quantized, ratio).

    Examples
    --------
    >>> m = So3krates(num_features=8, num_layers=1, num_heads=2, degrees=(1,), num_rbf=4, max_z=9)
    >>> print(format_memory_table(memory_report(m, 24)).splitlines()[0])
    | item | FP32 bytes | quantized bytes | ratio |
    """
    if not isinstance(report, dict) or "weights" not in report or "activations_per_atom" not in report:
        raise ValueError("report must be a dict returned by memory_report")
    rows = ["| item | FP32 bytes | quantized bytes | ratio |", "|---|---:|---:|---:|"]

    def row(label, d):
        ratio = d["fp32"] / d["quantized"] if d["quantized"] else float("inf")
        rows.append(f"| {label} | {d['fp32']:,} | {d['quantized']:,} | {ratio:.2f}x |")

    for b, d in report["weights"].items():
        row(f"weights: {b}", d)
    for k, d in report["activations_per_atom"].items():
        row(f"activations per atom: {k}", d)
    a = report["activations"]
    label = f"activations: {a['n_atoms']} atoms" + (f", {a['n_edges']} edges" if "n_edges" in a else "")
    row(label, a)
    return "\n".join(rows)
