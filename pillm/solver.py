"""Closed-form (pseudoinverse-learning) solver for PIL-LM output weights.

A PIL-LM feed-forward block computes ``H = GELU(LN(x) W_rand)`` (fixed random projection, ``D``
features) and an output ``H W_out + b``. ``W_out`` is not trained by gradient descent: it is the
ridge-regression solution

    W = (HᵀH + λ I)⁻¹ HᵀY

over the *whole* training corpus. :class:`RidgeAccumulator` never materialises ``H``: it streams the
sufficient statistics over batches,

    G = Σ HᵀH  [D, D]     C = Σ HᵀY  [D, K]
    s_h = Σ H  [D]        s_y = Σ Y  [K]      s_yy = Σ Y∘Y  [K]      n = #rows

so memory is O(D² + D·K), independent of the token count.

Accumulation (:meth:`RidgeAccumulator.update`, the hot loop)
-------------------------------------------------------------
* One ``addmm_`` into each of the preallocated ``G`` and ``C`` per batch, plus column sums; no host
  synchronisation (the row count ``n`` is a device tensor).
* ``G`` and ``C`` are kept in the accumulator ``dtype`` (float32 by default) with TF32 off
  (:func:`no_tf32`): its 10-bit mantissa would wreck the Gram matrix. ``s_h, s_y, s_yy`` and ``n`` are
  always float64 / int64: cheap vectors that keep centering and R² accurate.
* Rows whose ``mask`` is False are zeroed with ``torch.where`` in ``H`` and ``Y`` (and not counted).
  Unlike multiplication, NaN/Inf garbage there cannot leak in (0·Inf = NaN); unlike boolean indexing,
  no device→host sync is needed to learn the output size. Masked rows still go through the matmul: with
  the usual small fraction of padding this is the cheaper option.

Bias (``fit_bias=True``)
------------------------
An unregularised intercept, handled by centering. With ``h̄ = s_h / n`` and ``ȳ = s_y / n``:

    G_c = G − n h̄ h̄ᵀ,   C_c = C − n h̄ ȳᵀ,
    W = (G_c + λ_abs I)⁻¹ C_c,   b = ȳ − h̄ᵀ W.

This is exactly ridge regression on ``[H, 1]`` with the bias column left out of the penalty. The
centering is done in float64, which limits — but cannot undo — the precision lost in float32
accumulation when feature means are large relative to their spread. With ``fit_bias=False``,
``G_c = G``, ``C_c = C`` and no bias is returned.

Relative λ
----------
``λ_abs = lam × mean(diag(G_c))`` (average feature energy × n): the same grid (1e-9 … 1e-1) means the
same thing for any token count and feature scale. If every feature is constant, ``λ_abs = 0``.

Solve (always float64; D ≤ ~16k, so this is cheap next to accumulation)
----------------------------------------------------------------------
``A = G_c + λ_abs I``; only its lower triangle is read.

* ``solver="auto"`` (default): Cholesky (``torch.linalg.cholesky_ex``). If it fails, or the condition
  number ``cond = λ_max(A) / λ_min(A)`` (from ``eigvalsh``) exceeds ``cond_threshold`` (1e10), or the
  solution is non-finite, it falls back to the eigen path with a ``RuntimeWarning`` naming the condition
  number, λ and a larger λ to try; the record has ``fallback=True`` and a ``reason`` such as
  ``"cholesky failed (info=7)"`` or ``"cond 3.2e+12 > 1e+10"``.
* Eigen path (``solver="eigh"`` forces it, no warning): ``A = Q Λ Qᵀ``; eigenvalues ``> rcond × λ_max``
  are inverted, the rest (negative round-off included) zeroed: ``W = Q diag(1/Λ⁺) Qᵀ C_c``. ``rcond``
  defaults to ``D × eps(float64)``.
* ``solver="cholesky"`` raises ``torch.linalg.LinAlgError`` if the factorisation fails (no fallback).
* A device eigensolver that fails to converge is retried on the CPU.

Precision floor of float32 accumulation: ``G`` carries relative round-off of ~1e-7 (more with large
feature means), so relative λ below ~1e-6 regularises mostly noise, and with ``lam = 0`` on rank-deficient
data the eigen path inverts noise eigenvalues (finite, but the null-space part of ``W`` is noise): use
``lam ≳ 1e-6`` or ``dtype=float64``. The result is never NaN/Inf when the statistics are finite
(non-finite ones raise ``ValueError``), rank-deficient ``H``, κ up to 1e16 and ``lam = 0`` included.

R² from sufficient statistics (no second pass over the data)
------------------------------------------------------------
``SS_res = Σ‖Y − ȳ‖² − 2 tr(Wᵀ C_c) + tr(Wᵀ G_c W)`` (float64, clamped at 0; uncentered with
``fit_bias=False``), ``SS_tot = Σ‖Y‖² − n ‖ȳ‖²`` (always centered: R² is relative to predicting the
mean), summed over output columns, ``r2 = 1 − SS_res / SS_tot``. For constant targets
(``SS_tot ≤ 1e-10 · Σ‖Y‖²``), ``r2 = 1.0`` when ``SS_res`` is as small and ``0.0`` otherwise. This R² is
exact up to the round-off of ``G`` amplified by ``‖W‖²``: only approximate for ``lam ≈ 0`` with κ ≈ 1e16.

Distributed
-----------
:meth:`RidgeAccumulator.all_reduce` sums every statistic across ranks, so every rank solves the same
``W``. With the NCCL backend the accumulator must live on the rank's CUDA device.
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

__all__ = ["SolveRecord", "RidgeAccumulator", "no_tf32", "sync_device", "SOLVERS"]

SOLVERS = ("auto", "cholesky", "eigh")
# Relative tolerance under which SS_tot / SS_res count as zero (see module docstring).
_R2_ZERO_RTOL = 1e-10


@contextlib.contextmanager
def no_tf32():
    """Full-precision (IEEE) float32 matmuls inside; the previous setting is restored.

    Through ``torch.backends.{cuda,mkldnn}.matmul.fp32_precision``, which round-trips exactly whatever
    was set before, by the legacy ``allow_tf32`` flag or ``torch.set_float32_matmul_precision``.
    """
    backends = (torch.backends.cuda.matmul, torch.backends.mkldnn.matmul)
    saved = [b.fp32_precision for b in backends]
    try:
        for b in backends:
            b.fp32_precision = "ieee"
        yield
    finally:
        for b, s in zip(backends, saved):
            b.fp32_precision = s


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work (timings and phase boundaries); nothing on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class SolveRecord:
    """What happened in one :meth:`RidgeAccumulator.solve` call.

    ``cond`` is the 2-norm condition number of ``A = G_c + λ_abs I`` (no bias row/column: centering
    eliminates the bias), from float64 eigenvalues; ``inf`` when ``λ_min(A) ≤ 0`` numerically.
    ``truncated`` is the number of eigenvalues zeroed by the eigen pseudo-inverse (0 on the Cholesky path).
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


def _suggest_lam(lam: float, eig_max: float, mean_diag: float, cond_threshold: float) -> float:
    """Relative λ that bounds cond(G_c + λ_abs I) by ~cond_threshold (λ_min(A) ≥ λ_abs)."""
    s = max(10.0 * lam, 1e-9)
    if mean_diag > 0 and math.isfinite(eig_max) and eig_max > 0:
        s = max(s, eig_max / cond_threshold / mean_diag)
    return s


def _cond_from_eigs(evals: Tensor) -> float:
    lo, hi = float(evals[0]), float(evals[-1])
    return hi / lo if hi > 0.0 and lo > 0.0 else math.inf


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


def _ridge_solve(A: Tensor, C: Tensor, lam_abs: float, solver: str, cond_threshold: float,
                 rcond: float) -> tuple[Tensor, dict]:
    """Solve ``(A + lam_abs·I) W = C`` for float64 ``A`` [D, D] (overwritten with ``A + lam_abs·I``), ``C`` [D, K].

    See the module docstring for the paths. Returns ``W`` (float64) and the solve's fields of
    :class:`SolveRecord`, plus ``eig_max`` = λ_max(A) when known.
    """
    if lam_abs:
        A.diagonal().add_(lam_abs)
    reason, eig_max, cond, truncated, W = "", math.nan, math.inf, 0, None
    if solver != "eigh":
        L, info = torch.linalg.cholesky_ex(A)
        info_i = int(info)
        if info_i > 0:
            del L
            if solver == "cholesky":
                raise torch.linalg.LinAlgError(
                    f"Cholesky factorisation of G + λI failed (info={info_i}): the matrix is not numerically "
                    f"positive definite (lam_abs={lam_abs:.3g}). Use a larger lam, or solver='auto' / 'eigh'.")
            reason = f"cholesky failed (info={info_i})"
        else:
            W = torch.cholesky_solve(C, L)
            del L  # one D×D float64 matrix less before the eigenvalues
            evals = _eigh(A, vectors=False)
            cond, eig_max = _cond_from_eigs(evals), float(evals[-1])
            if solver == "auto" and cond > cond_threshold:
                reason = f"cond {cond:.2g} > {cond_threshold:.2g}"
            elif solver == "auto" and not bool(torch.isfinite(W).all()):
                reason = "non-finite cholesky solution"
    used = "cholesky"
    if W is None or reason:  # eigen path: forced, or a fallback
        W, evals, truncated = _eig_pinv_solve(A, C, rcond)
        if reason.startswith("cholesky failed") or solver == "eigh":
            cond = _cond_from_eigs(evals)
        eig_max = float(evals[-1])
        used = "eigh"
    return W, {"solver": used, "fallback": bool(reason), "reason": reason, "cond": float(cond),
               "truncated": truncated, "eig_max": eig_max}

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

    def __init__(self, n_features: int, n_outputs: int, *, fit_bias: bool = True,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> None:
        if int(n_features) < 1 or int(n_outputs) < 1:
            raise ValueError(f"n_features and n_outputs must be >= 1 (got n_features={n_features}, "
                             f"n_outputs={n_outputs})")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64 (got {dtype})")
        self.n_features = D = int(n_features)
        self.n_outputs = K = int(n_outputs)
        self.fit_bias = bool(fit_bias)
        self.dtype = dtype
        self.device = dev = torch.device(device) if device is not None else torch.device("cpu")
        self.G = torch.zeros(D, D, dtype=dtype, device=dev)
        self.C = torch.zeros(D, K, dtype=dtype, device=dev)
        self.sum_h = torch.zeros(D, dtype=torch.float64, device=dev)
        self.sum_y = torch.zeros(K, dtype=torch.float64, device=dev)
        self.sum_y2 = torch.zeros(K, dtype=torch.float64, device=dev)
        self.n = torch.zeros((), dtype=torch.int64, device=dev)

    @staticmethod
    def _check_width(name: str, t: Tensor, field: str, expected: int, what: str) -> None:
        got = t.shape[-1] if t.dim() else 0
        if t.dim() < 1 or got != expected:
            raise ValueError(f"{name} has {got} {what} (shape {tuple(t.shape)}) but the accumulator expects "
                             f"{field}={expected}; pass {name} with last dimension {expected} or build the "
                             f"accumulator with {field}={got}")

    @torch.no_grad()
    def update(self, H: Tensor, Y: Tensor, mask: Tensor | None = None) -> None:
        """Add a batch.  ``H`` [..., D], ``Y`` [..., K] (same leading dims, flattened), ``mask`` [...] bool.

        Rows where ``mask`` is False contribute nothing, even NaN/Inf garbage.  ``Y`` may also be ``[...]``
        when K == 1.  No host synchronisation happens here.
        """
        D, K = self.n_features, self.n_outputs
        self._check_width("H", H, "n_features", D, "features")
        if K == 1 and Y.dim() == H.dim() - 1 and Y.shape == H.shape[:-1]:
            Y = Y.unsqueeze(-1)
        self._check_width("Y", Y, "n_outputs", K, "outputs")
        if H.shape[:-1] != Y.shape[:-1]:
            raise ValueError(f"H rows {tuple(H.shape[:-1])} != Y rows {tuple(Y.shape[:-1])}: H [..., D] and "
                             "Y [..., K] must have the same leading dimensions (one target row per feature row)")
        if mask is not None and tuple(mask.shape) != tuple(H.shape[:-1]):
            raise ValueError(f"mask shape {tuple(mask.shape)} != leading dims of H {tuple(H.shape[:-1])}; "
                             "pass a bool mask with one entry per row")

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

    @torch.no_grad()
    def all_reduce(self, group: Any = None) -> None:
        """Sum every statistic over all ranks (``torch.distributed`` SUM); no-op if not initialised."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        for t in (self.G, self.C, self.sum_h, self.sum_y, self.sum_y2, self.n):
            dist.all_reduce(t, op=dist.ReduceOp.SUM, group=group)

    def centered_stats(self) -> tuple[Tensor, Tensor, int, Tensor | None, Tensor | None]:
        """Float64 ``(G_c, C_c, n, h̄, ȳ)`` (fresh copies); ``h̄, ȳ`` are None when ``fit_bias=False``."""
        n = int(self.n)
        if n <= 0:
            raise ValueError("no rows accumulated: call update() (with at least one unmasked row) before solve()")
        Gc = self.G.to(torch.float64, copy=True)
        Cc = self.C.to(torch.float64, copy=True)
        if not self.fit_bias:
            return Gc, Cc, n, None, None
        h_bar, y_bar = self.sum_h / n, self.sum_y / n
        Gc.addr_(self.sum_h, h_bar, alpha=-1.0)  # G - n h̄ h̄ᵀ, in place, no D×D temporary
        Cc.addr_(self.sum_h, y_bar, alpha=-1.0)  # C - n h̄ ȳᵀ
        return Gc, Cc, n, h_bar, y_bar


    @torch.no_grad()
    def solve(self, lam: float, *, solver: str = "auto", cond_threshold: float = 1e10,
              rcond: float | None = None) -> tuple[Tensor, Tensor | None, SolveRecord]:
        """Ridge solution for relative ``lam``: returns ``W`` [D, K], ``b`` [K] (None without bias), record.

        ``W`` and ``b`` are in the accumulator dtype on its device.  The accumulator is not modified,
        so several λ can be solved from the same statistics.
        """
        try:
            lam = float(lam)
        except (TypeError, ValueError):
            raise ValueError(f"lam must be a real number >= 0 (got {lam!r})") from None
        if not (lam >= 0.0) or math.isinf(lam):  # catches NaN too
            raise ValueError(f"lam must be >= 0 and finite (got {lam!r}); use e.g. lam=1e-6")
        if solver not in SOLVERS:
            raise ValueError(f"unknown solver {solver!r}; allowed values: {', '.join(repr(s) for s in SOLVERS)}")
        if not (cond_threshold > 0):
            raise ValueError(f"cond_threshold must be > 0 (got {cond_threshold!r})")
        t0 = time.perf_counter()
        sync_device(self.device)
        Gc, Cc, n, h_bar, y_bar = self.centered_stats()
        stats_ok = torch.isfinite(Gc).all() & torch.isfinite(Cc).all() & torch.isfinite(self.sum_y2).all()
        if not bool(stats_ok):
            raise ValueError("accumulated statistics contain NaN/Inf: some H or Y rows fed to update() were non-finite "
                             "(mask them out with the mask argument)")
        mean_diag = float(Gc.diagonal().mean())
        lam_abs = lam * mean_diag if mean_diag > 0 else 0.0
        rcond = self.n_features * torch.finfo(torch.float64).eps if rcond is None else rcond
        W, info = _ridge_solve(Gc, Cc, lam_abs, solver, cond_threshold, rcond)
        eig_max = info.pop("eig_max")
        A = Gc  # now G_c + λ_abs I (overwritten in place)
        if info["fallback"]:
            warnings.warn(f"RidgeAccumulator.solve: {info['reason']}; fell back to the eigen pseudo-inverse "
                          f"(cond(G+λI)={info['cond']:.3g} with lam={lam:g} (relative), lam_abs={lam_abs:.3g}; "
                          f"{info['truncated']} eigenvalues truncated). Consider a larger λ, e.g. "
                          f"lam>={_suggest_lam(lam, eig_max, mean_diag, cond_threshold):.1g}.",
                          RuntimeWarning, stacklevel=3)  # the caller of the torch.no_grad-wrapped function

        # R² from sufficient statistics (float64).
        sum_y2 = self.sum_y2
        syy = (sum_y2 - n * y_bar.square()).sum() if self.fit_bias else sum_y2.sum()
        ss_tot = float((sum_y2 - self.sum_y.square() / n).sum())
        quad = (W * (A @ W)).sum() - lam_abs * W.square().sum()  # tr(Wᵀ G_c W)
        ss_res = max(float(syy - 2.0 * (W * Cc).sum() + quad), 0.0)
        zero_tol = _R2_ZERO_RTOL * float(sum_y2.sum())
        if ss_tot <= zero_tol:
            r2 = 1.0 if ss_res <= zero_tol else 0.0
        else:
            r2 = 1.0 - ss_res / ss_tot

        b = (y_bar - h_bar @ W).to(self.dtype) if self.fit_bias else None
        W_out = W.to(self.dtype)
        sync_device(self.device)
        rec = SolveRecord(**info, tokens=n, lam=lam, lam_abs=lam_abs, r2=float(r2),
                          seconds=time.perf_counter() - t0)
        return W_out, b, rec
