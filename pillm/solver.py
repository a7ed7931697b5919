"""Closed-form (pseudoinverse-learning) solver for PIL-LM output weights.

A PIL-LM feed-forward block computes ``H = GELU(LN(x) W_rand)`` (fixed random
projection, ``D`` features) and an output ``H W_out + b``.  ``W_out`` is not
trained by gradient descent: it is the ridge-regression solution

    W = (HᵀH + λ I)⁻¹ HᵀY

over the *whole* training corpus.  Because the corpus has millions of rows, we
never materialise ``H``: :class:`RidgeAccumulator` streams the sufficient
statistics over batches,

    G = Σ HᵀH  [D, D]     C = Σ HᵀY  [D, K]
    s_h = Σ H  [D]        s_y = Σ Y  [K]      s_yy = Σ Y∘Y  [K]      n = #rows

so memory is O(D² + D·K), independent of the token count.

Accumulation (the hot loop, :meth:`RidgeAccumulator.update`)
-------------------------------------------------------------
* One ``G.addmm_(Hᵀ, H)`` and one ``C.addmm_(Hᵀ, Y)`` per batch into
  preallocated buffers, plus cheap column sums.  No host synchronisation
  (no ``.item()``); the row count ``n`` is a device tensor.
* ``G`` and ``C`` are kept in the accumulator ``dtype`` (float32 by default,
  float64 optional).  TF32 is disabled for these matmuls (the previous
  setting is restored afterwards), because TF32's 10-bit mantissa would
  wreck the Gram matrix.  The setting is saved/restored through the new
  ``torch.backends.{cuda,mkldnn}.matmul.fp32_precision`` API (the legacy
  ``allow_tf32`` flag is used only on old torch versions); this round-trips
  exactly whatever the caller set, by either API, without tripping torch's
  "mixed legacy/new API" error.
* The small statistics ``s_h, s_y, s_yy`` and ``n`` are always kept in
  float64 / int64 regardless of ``dtype`` (they are vectors; the cost is
  negligible and it keeps centering and R² accurate).
* Masking: rows whose ``mask`` is False are zeroed with ``torch.where`` in
  both ``H`` and ``Y`` (and not counted in ``n``), instead of boolean
  indexing.  ``torch.where`` (not multiplication) means NaN/Inf garbage in
  masked rows cannot leak in (0·Inf = NaN), and unlike boolean indexing it
  needs no device→host sync to learn the output size, so the GPU pipeline
  never stalls.  The price is that masked rows still go through the matmul;
  with the usual small fraction of padding this is the cheaper option.

Bias (``fit_bias=True``)
------------------------
An unregularised intercept, handled by centering.  With ``h̄ = s_h / n`` and
``ȳ = s_y / n``:

    G_c = G − n h̄ h̄ᵀ,   C_c = C − n h̄ ȳᵀ,
    W = (G_c + λ_abs I)⁻¹ C_c,   b = ȳ − h̄ᵀ W.

This is exactly ridge regression on ``[H, 1]`` with the bias column left out
of the penalty.  The centering correction is done in float64 on the D×D
matrix (cheap compared to accumulation), which limits — but cannot undo —
the precision lost in float32 accumulation when feature means are large
relative to their spread.  With ``fit_bias=False``, ``G_c = G``, ``C_c = C``
and no bias is returned.

Relative λ
----------
``lam`` is *relative*: ``λ_abs = lam × mean(diag(G_c))`` (mean diagonal of the
centered Gram = average feature energy × n).  The same grid (1e-9 … 1e-1)
therefore means the same thing for any token count and feature scale.
``lam < 0`` (or NaN) raises ``ValueError``.  If every feature is constant
(``mean(diag(G_c)) == 0``) then ``λ_abs = 0``.

Solve (always float64; D ≤ ~16k, so this is cheap next to accumulation)
----------------------------------------------------------------------
``A = G_c + λ_abs I``.  Only the lower triangle of ``A`` is read by the
factorisations.

* ``solver="auto"`` (default): Cholesky via ``torch.linalg.cholesky_ex``.
  If it fails (``info > 0``) we go straight to the eigen path.  Otherwise the
  condition number ``cond = λ_max(A) / λ_min(A)`` is computed from
  ``torch.linalg.eigvalsh(A)``; if ``cond > cond_threshold`` (default 1e10)
  or the Cholesky solution is non-finite, we fall back to the eigen path.
  A fallback emits a ``RuntimeWarning`` naming the condition number, λ and a
  suggested larger λ, and is recorded as ``fallback=True`` with a
  ``reason`` such as ``"cholesky failed (info=7)"`` or
  ``"cond 3.2e+12 > 1e+10"``.
* Eigen path (``solver="eigh"`` forces it, no warning):
  ``A = Q Λ Qᵀ`` (``torch.linalg.eigh``); eigenvalues ``> rcond × λ_max``
  are inverted, the rest (including negative round-off) are zeroed:
  ``W = Q diag(1/Λ⁺) Qᵀ C_c``.  ``rcond`` defaults to ``D × eps(float64)``.
  When the Gram was accumulated in float32 and ``lam == 0``, eigenvalues
  below ~1e-7 λ_max are round-off noise; pass e.g. ``rcond=1e-6`` (or just
  use ``lam > 0``) to avoid fitting that noise.
* ``solver="cholesky"`` forces Cholesky and raises
  ``torch.linalg.LinAlgError`` if the factorisation fails (no fallback).
* A device eigensolver that fails to converge is retried on the CPU.

Precision floor of float32 accumulation: ``G`` carries relative round-off of
~1e-7 (more with large feature means, see Bias), so relative λ below ~1e-6
regularises mostly noise; with ``lam = 0`` and rank-deficient data the eigen
path then inverts noise eigenvalues (finite, fits the training data, but the
null-space part of ``W`` is noise).  Use ``lam ≳ 1e-6`` or ``dtype=float64``.

The result is never NaN/Inf provided the accumulated statistics are finite
(checked: non-finite statistics raise ``ValueError``), including rank-deficient
``H`` (duplicate / zero columns, fewer rows than features), ``κ`` up to 1e16
and ``lam = 0``.

``SolveRecord.cond`` is the 2-norm condition number of the regularised,
*centered* matrix ``A = G_c + λ_abs I`` (there is no bias row/column: the
bias is eliminated by centering), computed from its float64 eigenvalues;
``inf`` when ``λ_min(A) ≤ 0`` numerically.

R² from sufficient statistics (no second pass over the data)
------------------------------------------------------------
``SS_res = Σ‖Y − ȳ‖² − 2 tr(Wᵀ C_c) + tr(Wᵀ G_c W)`` (float64, clamped at 0;
with ``fit_bias=False`` the uncentered ``Σ‖Y‖²``, ``C`` and ``G`` are used),
``SS_tot = Σ‖Y‖² − n ‖ȳ‖²`` (always centered: R² is relative to the
predict-the-mean baseline), both summed over output columns, and
``r2 = 1 − SS_res / SS_tot``.  If ``SS_tot`` is zero (``≤ 1e-10 · Σ‖Y‖²``,
i.e. constant — e.g. identically zero — targets), ``r2 = 1.0`` when
``SS_res ≈ 0`` (same relative tolerance) and ``0.0`` otherwise.
This R² is exact up to the round-off of ``G`` amplified by ``‖W‖²``
(``|δ SS_res| ≲ n·eps·‖H‖²·‖W‖²``): accurate for any sensible λ, only
approximate for ``lam ≈ 0`` with κ ≈ 1e16, where ``W`` is huge.

Distributed
-----------
:meth:`RidgeAccumulator.all_reduce` sums every statistic across ranks
(``torch.distributed`` SUM) so every rank holds the global totals; each rank
can then call :meth:`~RidgeAccumulator.solve` and gets the same ``W``.  With
the NCCL backend the accumulator must live on the rank's CUDA device.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "SolveRecord",
    "RidgeSolveInfo",
    "RidgeAccumulator",
    "ridge_solve",
    "solve_one_shot",
    "no_tf32",
    "sync_device",
    "SOLVERS",
]

SOLVERS = ("auto", "cholesky", "eigh")
_EPS64 = torch.finfo(torch.float64).eps
# Relative tolerance under which SS_tot / SS_res count as zero (see module docstring).
_R2_ZERO_RTOL = 1e-10


# --------------------------------------------------------------------------------------
# TF32 control
# --------------------------------------------------------------------------------------
@contextlib.contextmanager
def no_tf32():
    """Context manager: full-precision (IEEE) float32 matmuls inside, previous setting restored.

    Uses ``torch.backends.{cuda,mkldnn}.matmul.fp32_precision`` (torch ≥ 2.9) which round-trips
    exactly whatever was set before (by the legacy ``allow_tf32`` flag or
    ``torch.set_float32_matmul_precision``); falls back to the legacy flag on old torch.
    """
    backends = []
    cuda_mm = torch.backends.cuda.matmul
    if hasattr(cuda_mm, "fp32_precision"):
        backends.append(cuda_mm)
        mkl = getattr(torch.backends, "mkldnn", None)
        mkl_mm = getattr(mkl, "matmul", None) if mkl is not None else None
        if mkl_mm is not None and hasattr(mkl_mm, "fp32_precision"):
            backends.append(mkl_mm)
        saved = [b.fp32_precision for b in backends]
        try:
            for b in backends:
                b.fp32_precision = "ieee"
            yield
        finally:
            for b, s in zip(backends, saved):
                b.fp32_precision = s
    else:  # pragma: no cover - old torch
        saved = cuda_mm.allow_tf32
        try:
            cuda_mm.allow_tf32 = False
            yield
        finally:
            cuda_mm.allow_tf32 = saved


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (timings and phase boundaries); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------------
# Records
# --------------------------------------------------------------------------------------
@dataclass
class SolveRecord:
    """What happened in one :meth:`RidgeAccumulator.solve` call.

    ``cond`` is the 2-norm condition number of ``A = G_c + λ_abs I`` — the regularised,
    centered Gram (the bias is eliminated by centering, so there is no bias row/column) —
    computed from float64 eigenvalues; ``inf`` when ``λ_min(A) ≤ 0`` numerically.
    ``truncated`` is the number of eigenvalues zeroed by the eigen pseudo-inverse (0 on the
    Cholesky path).
    """

    solver: str
    fallback: bool
    reason: str
    cond: float
    tokens: int
    lam: float
    lam_abs: float
    r2: float
    seconds: float
    truncated: int = 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RidgeSolveInfo:
    """Diagnostics returned by :func:`ridge_solve`."""

    solver: str  # "cholesky" or "eigh"
    fallback: bool
    reason: str
    cond: float
    lam_abs: float
    truncated: int = 0
    eig_max: float = math.nan  # λ_max(A) when known

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _suggest_lam(lam: float, eig_max: float, mean_diag: float, cond_threshold: float) -> float:
    """Relative λ that bounds cond(G_c + λ_abs I) by ~cond_threshold (λ_min(A) ≥ λ_abs)."""
    s = max(10.0 * lam, 1e-9)
    if mean_diag > 0 and math.isfinite(eig_max) and eig_max > 0:
        s = max(s, eig_max / cond_threshold / mean_diag)
    return s


def _check_lam(lam: float, name: str = "lam") -> float:
    try:
        lam = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number >= 0 (got {lam!r})") from None
    if not (lam >= 0.0) or math.isinf(lam):  # catches NaN too
        raise ValueError(f"{name} must be >= 0 and finite (got {lam!r}); use e.g. lam=1e-6")
    return lam


def _check_solver(solver: str) -> None:
    if solver not in SOLVERS:
        raise ValueError(f"unknown solver {solver!r}; allowed values: {', '.join(repr(s) for s in SOLVERS)}")


def _cond_from_eigs(evals: Tensor) -> float:
    lo = float(evals[0])
    hi = float(evals[-1])
    if not (hi > 0.0) or not (lo > 0.0):
        return math.inf
    return hi / lo


def _eigh(A: Tensor, vectors: bool):
    """``eigh`` / ``eigvalsh`` (lower triangle); retried on CPU if the device solver fails to converge."""
    fn = torch.linalg.eigh if vectors else torch.linalg.eigvalsh
    try:
        return fn(A)
    except torch.linalg.LinAlgError:
        if A.device.type == "cpu":
            raise
        out = fn(A.cpu())
        return tuple(t.to(A.device) for t in out) if vectors else out.to(A.device)


def _eig_pinv_solve(A: Tensor, C: Tensor, rcond: float) -> tuple[Tensor, Tensor, int]:
    """W = Q diag(1/Λ⁺) Qᵀ C with eigenvalues ≤ rcond·λ_max (or ≤ 0) zeroed."""
    evals, Q = _eigh(A, vectors=True)
    lam_max = evals[-1].clamp_min(0.0)
    keep = evals > rcond * lam_max  # lam_max == 0 -> nothing kept (strict >)
    inv = torch.where(keep, 1.0 / torch.where(keep, evals, torch.ones_like(evals)), torch.zeros_like(evals))
    W = Q @ (inv.unsqueeze(1) * (Q.mT @ C))
    truncated = int((~keep).sum())
    return W, evals, truncated


@torch.no_grad()
def ridge_solve(
    G: Tensor,
    C: Tensor,
    lam_abs: float,
    *,
    solver: str = "auto",
    cond_threshold: float = 1e10,
    rcond: float | None = None,
    overwrite: bool = False,
    warn: bool = True,
) -> tuple[Tensor, RidgeSolveInfo]:
    """Solve ``(G + lam_abs·I) W = C`` in float64 for symmetric PSD ``G`` [D, D], ``C`` [D, K].

    ``lam_abs`` is the *absolute* ridge (see :class:`RidgeAccumulator` for the relative one).
    Only the lower triangle of ``G`` is read.  See the module docstring for the
    ``auto``/``cholesky``/``eigh`` logic.  Returns ``(W float64 [D, K], RidgeSolveInfo)``.
    With ``overwrite=True`` and a float64 ``G``, ``G`` is modified in place to ``G + lam_abs·I``
    (saves one D×D copy).  ``warn=False`` suppresses the fallback ``RuntimeWarning``
    (the caller is expected to emit its own).
    """
    _check_solver(solver)
    lam_abs = _check_lam(lam_abs, "lam_abs")
    if G.dim() != 2 or G.shape[0] != G.shape[1]:
        raise ValueError(f"G must be a square [D, D] matrix (got shape {tuple(G.shape)})")
    if C.dim() != 2 or C.shape[0] != G.shape[0]:
        raise ValueError(f"C must be [D, K] with D = G.shape[0] = {G.shape[0]} (got shape {tuple(C.shape)})")
    if not (cond_threshold > 0):
        raise ValueError(f"cond_threshold must be > 0 (got {cond_threshold!r})")
    D = G.shape[0]
    if rcond is None:
        rcond = D * _EPS64
    if overwrite and G.dtype == torch.float64:
        A = G
    else:
        A = G.to(torch.float64, copy=True)
    C = C.to(torch.float64)
    if not bool(torch.isfinite(A).all() & torch.isfinite(C).all()):
        raise ValueError("G and C must be finite (got NaN/Inf); check the accumulated features and targets")
    if lam_abs:
        A.diagonal().add_(lam_abs)

    fallback, reason = False, ""
    eig_max = math.nan
    W: Tensor | None = None
    cond = math.inf
    truncated = 0
    if solver in ("auto", "cholesky"):
        L, info = torch.linalg.cholesky_ex(A)
        info_i = int(info)
        if info_i > 0:
            del L
            if solver == "cholesky":
                raise torch.linalg.LinAlgError(
                    f"Cholesky factorisation of G + λI failed (info={info_i}): the matrix is not numerically "
                    f"positive definite (lam_abs={lam_abs:.3g}). Use a larger lam, or solver='auto' / 'eigh'."
                )
            reason = f"cholesky failed (info={info_i})"
        else:
            W = torch.cholesky_solve(C, L)
            del L
            evals = _eigh(A, vectors=False)
            cond = _cond_from_eigs(evals)
            eig_max = float(evals[-1])
            if solver == "auto":
                if cond > cond_threshold:
                    reason = f"cond {cond:.2g} > {cond_threshold:.2g}"
                elif not bool(torch.isfinite(W).all()):
                    reason = "non-finite cholesky solution"
            if reason:
                W = None
        if reason:
            fallback = True
    if W is None:  # eigen path: forced, or fallback
        W, evals, truncated = _eig_pinv_solve(A, C, rcond)
        if reason.startswith("cholesky failed") or solver == "eigh":
            cond = _cond_from_eigs(evals)
        eig_max = float(evals[-1])
        used = "eigh"
        if fallback and warn:
            mean_diag = float(A.diagonal().mean()) - lam_abs
            warnings.warn(
                f"ridge_solve: {reason}; fell back to the eigen pseudo-inverse "
                f"(cond(G+λI)={cond:.3g}, lam_abs={lam_abs:.3g}, {truncated} eigenvalues truncated). "
                f"Consider a larger λ, e.g. lam_abs>="
                f"{_suggest_lam(0.0, eig_max, mean_diag, cond_threshold) * max(mean_diag, 0.0):.1g}.",
                RuntimeWarning,
                stacklevel=3,  # caller of the torch.no_grad-wrapped function
            )
    else:
        used = "cholesky"
    return W, RidgeSolveInfo(used, fallback, reason, float(cond), lam_abs, truncated, eig_max)


# --------------------------------------------------------------------------------------
# Accumulator
# --------------------------------------------------------------------------------------
class RidgeAccumulator:
    """Streams ``G = Σ HᵀH`` and ``C = Σ HᵀY`` over batches; O(D² + D·K) memory.

    Parameters
    ----------
    n_features : D, the number of columns of H.
    n_outputs : K, the number of columns of Y.
    fit_bias : fit an unregularised intercept (by centering; see the module docstring).
    dtype : accumulation dtype of G and C, ``torch.float32`` (default) or ``torch.float64``.
        The vector statistics (Σ H, Σ Y, Σ Y², n) are always float64 / int64.
    device : where the statistics live (default: CPU).  Inputs are moved there.
    """

    def __init__(
        self,
        n_features: int,
        n_outputs: int,
        *,
        fit_bias: bool = True,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        if int(n_features) < 1 or int(n_outputs) < 1:
            raise ValueError(
                f"n_features and n_outputs must be >= 1 (got n_features={n_features}, n_outputs={n_outputs})"
            )
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64 (got {dtype})")
        self.n_features = int(n_features)
        self.n_outputs = int(n_outputs)
        self.fit_bias = bool(fit_bias)
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        D, K = self.n_features, self.n_outputs
        dev = self.device
        self.G = torch.zeros(D, D, dtype=dtype, device=dev)
        self.C = torch.zeros(D, K, dtype=dtype, device=dev)
        self.sum_h = torch.zeros(D, dtype=torch.float64, device=dev)
        self.sum_y = torch.zeros(K, dtype=torch.float64, device=dev)
        self.sum_y2 = torch.zeros(K, dtype=torch.float64, device=dev)
        self.n = torch.zeros((), dtype=torch.int64, device=dev)

    # ---------------------------------------------------------------- properties
    @property
    def n_tokens(self) -> int:
        """Number of (unmasked) rows accumulated so far (syncs with the device)."""
        return int(self.n)

    def __repr__(self) -> str:
        return (
            f"RidgeAccumulator(n_features={self.n_features}, n_outputs={self.n_outputs}, "
            f"fit_bias={self.fit_bias}, dtype={self.dtype}, device={self.device})"
        )

    def _tensors(self) -> dict[str, Tensor]:
        return {"G": self.G, "C": self.C, "sum_h": self.sum_h, "sum_y": self.sum_y, "sum_y2": self.sum_y2, "n": self.n}

    def reset(self) -> None:
        """Zero every statistic (keeps the buffers)."""
        for t in self._tensors().values():
            t.zero_()

    # ---------------------------------------------------------------- hot loop
    @torch.no_grad()
    def update(self, H: Tensor, Y: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch.  ``H`` [..., D], ``Y`` [..., K] (same leading dims, flattened), ``mask`` [...] bool.

        Rows where ``mask`` is False contribute nothing (they are zeroed with ``torch.where``, so even
        NaN/Inf garbage there is harmless).  ``Y`` may also be ``[...]`` when K == 1.
        No host synchronisation happens here.
        """
        D, K = self.n_features, self.n_outputs
        if H.dim() < 1 or H.shape[-1] != D:
            raise ValueError(
                f"H has {H.shape[-1] if H.dim() else 0} features (shape {tuple(H.shape)}) but the accumulator "
                f"expects n_features={D}; pass H with last dimension {D} or build the accumulator with "
                f"n_features={H.shape[-1] if H.dim() else 0}"
            )
        if K == 1 and Y.dim() == H.dim() - 1 and Y.shape == H.shape[:-1]:
            Y = Y.unsqueeze(-1)
        if Y.dim() < 1 or Y.shape[-1] != K:
            raise ValueError(
                f"Y has {Y.shape[-1] if Y.dim() else 0} outputs (shape {tuple(Y.shape)}) but the accumulator "
                f"expects n_outputs={K}; pass Y with last dimension {K} or build the accumulator with "
                f"n_outputs={Y.shape[-1] if Y.dim() else 0}"
            )
        if H.shape[:-1] != Y.shape[:-1]:
            raise ValueError(
                f"H rows {tuple(H.shape[:-1])} != Y rows {tuple(Y.shape[:-1])}: H [..., D] and Y [..., K] must "
                f"have the same leading dimensions (one target row per feature row)"
            )
        if mask is not None and tuple(mask.shape) != tuple(H.shape[:-1]):
            raise ValueError(
                f"mask shape {tuple(mask.shape)} != leading dims of H {tuple(H.shape[:-1])}; pass a bool mask "
                f"with one entry per row"
            )

        H2 = H.reshape(-1, D).to(device=self.device, dtype=self.dtype)
        Y2 = Y.reshape(-1, K).to(device=self.device, dtype=self.dtype)
        if mask is not None:
            m = mask.reshape(-1).to(device=self.device, dtype=torch.bool)
            mcol = m.unsqueeze(1)
            H2 = torch.where(mcol, H2, 0.0)
            Y2 = torch.where(mcol, Y2, 0.0)
            self.n += m.sum()
        else:
            self.n += H2.shape[0]
        if H2.shape[0] == 0:
            return
        Ht = H2.mT
        with no_tf32():
            self.G.addmm_(Ht, H2)
            self.C.addmm_(Ht, Y2)
        self.sum_h += H2.sum(0, dtype=torch.float64)
        self.sum_y += Y2.sum(0, dtype=torch.float64)
        self.sum_y2 += torch.linalg.vector_norm(Y2, ord=2, dim=0, dtype=torch.float64).square_()

    @torch.no_grad()
    def update_labels(self, H: Tensor, labels: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch whose targets are one-hot rows: ``Y[i] = e_{labels[i]}`` with K = n_outputs classes.

        The same statistics as :meth:`update` with the dense one-hot ``Y``, which is never built:
        ``C`` gains ``H`` row by row at the label's column (``index_add_``), ``Σ Y`` and ``Σ Y²``
        the label counts. ``H`` [..., D], ``labels`` [...] integer in ``[0, K)``, ``mask`` [...] bool.
        """
        D, K = self.n_features, self.n_outputs
        if H.dim() < 1 or H.shape[-1] != D or tuple(labels.shape) != tuple(H.shape[:-1]):
            raise ValueError(f"H {tuple(H.shape)} and labels {tuple(labels.shape)} must be [..., {D}] and [...]: "
                             "one label per feature row")
        H2 = H.reshape(-1, D).to(device=self.device, dtype=self.dtype)
        y = labels.reshape(-1).to(device=self.device)
        keep = torch.ones_like(y, dtype=torch.bool) if mask is None else mask.reshape(-1).to(self.device, torch.bool)
        H2 = torch.where(keep.unsqueeze(1), H2, 0.0)
        y = torch.where(keep, y, 0)  # a masked row adds a zero row at column 0: nothing
        counts = torch.zeros(K, dtype=torch.float64, device=self.device).index_add_(
            0, y, keep.to(torch.float64))
        with no_tf32():
            self.G.addmm_(H2.mT, H2)
        self.C.index_add_(1, y, H2.mT)
        self.n += keep.sum()
        self.sum_h += H2.sum(0, dtype=torch.float64)
        self.sum_y += counts
        self.sum_y2 += counts  # one-hot: Y² = Y

    # ---------------------------------------------------------------- combine
    def _check_compatible(self, other: "RidgeAccumulator") -> None:
        if not isinstance(other, RidgeAccumulator):
            raise TypeError(f"expected a RidgeAccumulator, got {type(other).__name__}")
        if (other.n_features, other.n_outputs, other.fit_bias) != (self.n_features, self.n_outputs, self.fit_bias):
            raise ValueError(
                "cannot merge accumulators with different (n_features, n_outputs, fit_bias): "
                f"{(self.n_features, self.n_outputs, self.fit_bias)} vs "
                f"{(other.n_features, other.n_outputs, other.fit_bias)}"
            )

    @torch.no_grad()
    def merge_(self, other: "RidgeAccumulator") -> "RidgeAccumulator":
        """Add another accumulator's statistics into this one (in place); returns ``self``."""
        self._check_compatible(other)
        mine, theirs = self._tensors(), other._tensors()
        for k, t in mine.items():
            t += theirs[k].to(device=t.device, dtype=t.dtype)
        return self

    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> None:
        """Sum every statistic over all ranks (``torch.distributed`` SUM); no-op if not initialised."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        for t in self._tensors().values():
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    # ---------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        sd: dict[str, Any] = {k: t.detach().clone() for k, t in self._tensors().items()}
        sd.update(n_features=self.n_features, n_outputs=self.n_outputs, fit_bias=self.fit_bias)
        return sd

    def load_state_dict(self, state: dict[str, Any]) -> None:
        meta = (state.get("n_features"), state.get("n_outputs"), state.get("fit_bias"))
        if meta != (self.n_features, self.n_outputs, self.fit_bias):
            raise ValueError(
                f"state (n_features, n_outputs, fit_bias)={meta} does not match this accumulator "
                f"{(self.n_features, self.n_outputs, self.fit_bias)}"
            )
        for k, t in self._tensors().items():
            src = state[k]
            if tuple(src.shape) != tuple(t.shape):
                raise ValueError(f"state[{k!r}] has shape {tuple(src.shape)}, expected {tuple(t.shape)}")
            t.copy_(src.to(device=t.device, dtype=t.dtype))

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], *, dtype=None, device=None) -> "RidgeAccumulator":
        acc = cls(
            state["n_features"],
            state["n_outputs"],
            fit_bias=state["fit_bias"],
            dtype=dtype if dtype is not None else state["G"].dtype,
            device=device if device is not None else state["G"].device,
        )
        acc.load_state_dict(state)
        return acc

    # ---------------------------------------------------------------- solve
    def centered_stats(self) -> tuple[Tensor, Tensor, int, Tensor | None, Tensor | None]:
        """Float64 ``(G_c, C_c, n, h̄, ȳ)`` (fresh copies); ``h̄, ȳ`` are None when ``fit_bias=False``."""
        n = int(self.n)
        if n <= 0:
            raise ValueError("no rows accumulated: call update() (with at least one unmasked row) before solve()")
        Gc = self.G.to(torch.float64, copy=True)
        Cc = self.C.to(torch.float64, copy=True)
        if not self.fit_bias:
            return Gc, Cc, n, None, None
        h_bar = self.sum_h / n
        y_bar = self.sum_y / n
        Gc.addr_(self.sum_h, h_bar, alpha=-1.0)  # G - n h̄ h̄ᵀ, in place, no D×D temporary
        Cc.addr_(self.sum_h, y_bar, alpha=-1.0)  # C - n h̄ ȳᵀ
        return Gc, Cc, n, h_bar, y_bar

    @torch.no_grad()
    def solve(
        self,
        lam: float,
        *,
        solver: str = "auto",
        cond_threshold: float = 1e10,
        rcond: float | None = None,
    ) -> tuple[Tensor, Tensor | None, SolveRecord]:
        """Ridge solution for relative ``lam``: returns ``W`` [D, K], ``b`` [K] (None without bias), record.

        ``W`` and ``b`` are in the accumulator dtype on its device.  The accumulator is not modified,
        so several λ can be solved from the same statistics.
        """
        lam = _check_lam(lam)
        _check_solver(solver)
        t0 = time.perf_counter()
        sync_device(self.device)
        Gc, Cc, n, h_bar, y_bar = self.centered_stats()
        stats_ok = torch.isfinite(Gc).all() & torch.isfinite(Cc).all() & torch.isfinite(self.sum_y2).all()
        if not bool(stats_ok):
            raise ValueError(
                "accumulated statistics contain NaN/Inf: some H or Y rows fed to update() were non-finite "
                "(mask them out with the mask argument)"
            )
        mean_diag = float(Gc.diagonal().mean())
        lam_abs = lam * mean_diag if mean_diag > 0 else 0.0
        W, info = ridge_solve(
            Gc, Cc, lam_abs, solver=solver, cond_threshold=cond_threshold, rcond=rcond, overwrite=True, warn=False
        )
        A = Gc  # now G_c + λ_abs I (overwritten in place)
        if info.fallback:
            warnings.warn(
                f"RidgeAccumulator.solve: {info.reason}; fell back to the eigen pseudo-inverse "
                f"(cond(G+λI)={info.cond:.3g} with lam={lam:g} (relative), lam_abs={lam_abs:.3g}; "
                f"{info.truncated} eigenvalues truncated). Consider a larger λ, e.g. "
                f"lam>={_suggest_lam(lam, info.eig_max, mean_diag, cond_threshold):.1g}.",
                RuntimeWarning,
                stacklevel=3,  # caller of the torch.no_grad-wrapped function
            )

        # R² from sufficient statistics (float64).
        sum_y2 = self.sum_y2
        if self.fit_bias:
            syy = (sum_y2 - n * y_bar.square()).sum()
        else:
            syy = sum_y2.sum()
        ss_tot = float((sum_y2 - self.sum_y.square() / n).sum())
        quad = (W * (A @ W)).sum() - lam_abs * W.square().sum()  # tr(Wᵀ G_c W)
        ss_res = max(float(syy - 2.0 * (W * Cc).sum() + quad), 0.0)
        y_energy = float(sum_y2.sum())
        zero_tol = _R2_ZERO_RTOL * y_energy
        if ss_tot <= zero_tol:
            r2 = 1.0 if ss_res <= zero_tol else 0.0
        else:
            r2 = 1.0 - ss_res / ss_tot

        b = None
        if self.fit_bias:
            b = (y_bar - h_bar @ W).to(self.dtype)
        W_out = W.to(self.dtype)
        sync_device(self.device)
        seconds = time.perf_counter() - t0
        rec = SolveRecord(
            solver=info.solver,
            fallback=info.fallback,
            reason=info.reason,
            cond=info.cond,
            tokens=n,
            lam=lam,
            lam_abs=lam_abs,
            r2=float(r2),
            seconds=seconds,
            truncated=info.truncated,
        )
        return W_out, b, rec


def solve_one_shot(
    H: Tensor,
    Y: Tensor,
    lam: float,
    fit_bias: bool = True,
    *,
    mask: Tensor | None = None,
    solver: str = "auto",
    cond_threshold: float = 1e10,
    dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor | None, SolveRecord]:
    """Accumulate ``(H, Y)`` in one batch and solve (for tests / small problems).

    ``dtype`` defaults to float64 when ``H`` is float64, else float32.  Runs on ``H``'s device.
    """
    if dtype is None:
        dtype = torch.float64 if H.dtype == torch.float64 else torch.float32
    K = Y.shape[-1] if Y.dim() == H.dim() else 1
    acc = RidgeAccumulator(H.shape[-1], K, fit_bias=fit_bias, dtype=dtype, device=H.device)
    acc.update(H, Y, mask)
    return acc.solve(lam, solver=solver, cond_threshold=cond_threshold)
