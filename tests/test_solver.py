"""Tests for :mod:`pillm.solver` (closed-form ridge solver), CPU only, fast."""

from __future__ import annotations

import datetime
import math
import os
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pillm.solver import RidgeAccumulator, SolveRecord, no_tf32

HYP = settings(max_examples=int(os.environ.get("HYP_N", 40)), deadline=None, suppress_health_check=[HealthCheck.too_slow])
LAMS = [0.0, 1e-6, 1e-3, 1e-1]


# --------------------------------------------------------------------------------------
# numpy float64 references
# --------------------------------------------------------------------------------------
def ref_lam_abs(H: np.ndarray, lam: float, fit_bias: bool) -> float:
    Hc = H - H.mean(0) if fit_bias else H
    return lam * float(np.mean(np.sum(Hc * Hc, axis=0)))


def ref_solution(H: np.ndarray, Y: np.ndarray, lam: float, fit_bias: bool):
    """Ridge in numpy float64; the bias is an explicit, unpenalised augmented column ``[H, 1]``.

    lam == 0: ``lstsq``.  lam > 0: the closed form ``(XᵀX + λ_abs P)⁻¹ XᵀY`` (``P`` = identity with a
    0 for the bias column) evaluated stably as the stacked least-squares problem
    ``[X; √λ_abs P] θ ≈ [Y; 0]`` (same solution, κ instead of κ² rounding).
    """
    n, D = H.shape
    lam_abs = ref_lam_abs(H, lam, fit_bias)
    X = np.hstack([H, np.ones((n, 1))]) if fit_bias else H
    if lam > 0:
        P = np.diag(np.r_[np.ones(D), np.zeros(X.shape[1] - D)])
        X = np.vstack([X, math.sqrt(lam_abs) * P])
        Y = np.vstack([Y, np.zeros((P.shape[0], Y.shape[1]))])
    theta = np.linalg.lstsq(X, Y, rcond=None)[0]
    return theta[:D], (theta[D] if fit_bias else None)


def tol64(rec) -> float:
    """Forward-error tolerance of a float64 normal-equations solve with condition number rec.cond."""
    return 1e-10 + 1e-13 * rec.cond


def lstsq_residual(H: np.ndarray, Y: np.ndarray, fit_bias: bool) -> float:
    X = np.hstack([H, np.ones((H.shape[0], 1))]) if fit_bias else H
    theta = np.linalg.lstsq(X, Y, rcond=None)[0]
    return float(np.linalg.norm(Y - X @ theta))


def residual(H, Y, W, b) -> float:
    H, Y, W = (np.asarray(t, dtype=np.float64) for t in (H, Y, W))
    P = H @ W + (0.0 if b is None else np.asarray(b, dtype=np.float64))
    return float(np.linalg.norm(Y - P))


def max_rel_err(a, ref) -> float:
    a, ref = np.asarray(a, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    return float(np.max(np.abs(a - ref)) / (1.0 + np.max(np.abs(ref))))


def make_problem(seed: int, n: int, D: int, K: int, offsets: bool = True):
    rng = np.random.default_rng(seed)
    H = rng.standard_normal((n, D)) * rng.uniform(0.5, 2.0, D)
    if offsets:
        H = H + rng.uniform(-3.0, 3.0, D)
    W = rng.standard_normal((D, K))
    Y = H @ W + rng.uniform(-2, 2, K) + 0.3 * rng.standard_normal((n, K))
    return H, Y


@st.composite
def problems(draw, min_ratio: float = 1.0, always: bool = False):
    """(seed, n, D, K, lam, fit_bias); n ≥ min_ratio·D + 6 when lam == 0 (so lstsq is well posed),
    or always with ``always=True``."""
    D = draw(st.integers(1, 40))
    K = draw(st.integers(1, 5))
    lam = draw(st.sampled_from(LAMS))
    fit_bias = draw(st.booleans())
    lo = 5 if (lam > 0 and not always) else min(200, int(math.ceil(min_ratio * D)) + 6)
    n = draw(st.integers(lo, 200))
    seed = draw(st.integers(0, 2**31 - 1))
    return seed, n, D, K, lam, fit_bias


def accumulate(H, Y, *, fit_bias, dtype=torch.float64, mask=None):
    Ht = torch.as_tensor(H, dtype=dtype)
    Yt = torch.as_tensor(Y, dtype=dtype)
    acc = RidgeAccumulator(Ht.shape[-1], Yt.shape[-1], fit_bias=fit_bias, dtype=dtype)
    acc.update(Ht, Yt, None if mask is None else torch.as_tensor(mask))
    return acc


def solve_quiet(acc, lam, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return acc.solve(lam, **kw)


# --------------------------------------------------------------------------------------
# agreement with numpy
# --------------------------------------------------------------------------------------
@HYP
@given(problems())
def test_matches_numpy_float64(p):
    seed, n, D, K, lam, fit_bias = p
    H, Y = make_problem(seed, n, D, K, offsets=fit_bias)
    W_ref, b_ref = ref_solution(H, Y, lam, fit_bias)
    W, b, rec = solve_quiet(accumulate(H, Y, fit_bias=fit_bias), lam)
    assert W.dtype == torch.float64 and W.shape == (D, K)
    assert max_rel_err(W, W_ref) < tol64(rec), rec
    if fit_bias:
        assert b.shape == (K,)
        assert max_rel_err(b, b_ref) < tol64(rec), rec
    else:
        assert b is None
    assert rec.tokens == n and rec.lam == lam
    assert rec.lam_abs == pytest.approx(ref_lam_abs(H, lam, fit_bias), rel=1e-9, abs=1e-300)


@HYP
@given(problems(min_ratio=4.0, always=True))
def test_matches_numpy_float32_accumulation(p):
    seed, n, D, K, lam, fit_bias = p
    H, Y = make_problem(seed, n, D, K, offsets=fit_bias)
    H = H.astype(np.float32).astype(np.float64)  # compare on exactly the data the float32 path sees
    Y = Y.astype(np.float32).astype(np.float64)
    W_ref, b_ref = ref_solution(H, Y, lam, fit_bias)
    W, b, rec = solve_quiet(accumulate(H, Y, fit_bias=fit_bias, dtype=torch.float32), lam)
    assert W.dtype == torch.float32
    assert max_rel_err(W, W_ref) < 2e-3, rec
    if fit_bias:
        assert b.dtype == torch.float32
        assert max_rel_err(b, b_ref) < 2e-3, rec


@HYP
@given(problems(), st.data())
def test_streamed_equals_one_shot(p, data):
    seed, n, D, K, lam, fit_bias = p
    H, Y = make_problem(seed, n, D, K, offsets=fit_bias)
    n_cuts = data.draw(st.integers(0, min(8, n - 1)))
    cuts = sorted(data.draw(st.lists(st.integers(1, n - 1), min_size=n_cuts, max_size=n_cuts)))
    bounds = [0, *cuts, n]
    one = accumulate(H, Y, fit_bias=fit_bias)
    acc = RidgeAccumulator(D, K, fit_bias=fit_bias, dtype=torch.float64)
    for a, z in zip(bounds[:-1], bounds[1:]):
        acc.update(torch.as_tensor(H[a:z]), torch.as_tensor(Y[a:z]))  # includes empty batches
    assert int(acc.n) == n
    W1, b1, r1 = solve_quiet(one, lam)
    W2, b2, r2 = solve_quiet(acc, lam)
    # identical up to the different summation order of G, amplified by cond(G + λI)
    assert max_rel_err(W2, W1) < tol64(r1), r1
    if fit_bias:
        assert max_rel_err(b2, b1) < tol64(r1), r1
    assert r2.r2 == pytest.approx(r1.r2, abs=1e-9)
    assert (r2.tokens, r2.lam_abs) == (r1.tokens, pytest.approx(r1.lam_abs, rel=1e-12, abs=1e-300))


def test_streamed_float32_and_leading_dims():
    H, Y = make_problem(0, 600, 24, 3)
    Ht = torch.as_tensor(H, dtype=torch.float32).reshape(6, 100, 24)  # [B, T, D]
    Yt = torch.as_tensor(Y, dtype=torch.float32).reshape(6, 100, 3)
    one = RidgeAccumulator(24, 3)
    one.update(Ht, Yt)
    acc = RidgeAccumulator(24, 3)
    for i in range(6):
        acc.update(Ht[i : i + 1], Yt[i : i + 1])
    W1, b1, _ = one.solve(1e-6)
    W2, b2, _ = acc.solve(1e-6)
    torch.testing.assert_close(W2, W1, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(b2, b1, rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------
# ill-conditioned and rank-deficient problems
# --------------------------------------------------------------------------------------
def rank_deficient(kind: str, seed: int = 0):
    rng = np.random.default_rng(seed)
    if kind == "duplicate_columns":
        H = rng.standard_normal((100, 20)) + 1.0
        H[:, 7] = H[:, 3]
        H[:, 11] = H[:, 5]
        H[:, 12] = H[:, 5]
    elif kind == "zero_columns":
        H = rng.standard_normal((100, 20)) + 1.0
        H[:, [0, 4, 19]] = 0.0
    elif kind == "fewer_rows":
        H = rng.standard_normal((12, 30)) + 0.5
    elif kind == "kappa1e16":
        n, D = 120, 20
        U, _ = np.linalg.qr(rng.standard_normal((n, D)))
        V, _ = np.linalg.qr(rng.standard_normal((D, D)))
        s = np.logspace(0, -8, D)  # singular values 1 .. 1e-8  ->  cond(HᵀH) = 1e16
        H = (U * s) @ V.T
    else:  # pragma: no cover
        raise AssertionError(kind)
    n, D = H.shape
    Y = H @ rng.standard_normal((D, 3)) + 0.1 * rng.standard_normal((n, 3)) + 0.5
    return H, Y


KINDS = ["duplicate_columns", "zero_columns", "fewer_rows", "kappa1e16"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("lam", [0.0, 1e-12])
@pytest.mark.parametrize("fit_bias", [True, False])
def test_ill_conditioned_falls_back_and_fits(kind, lam, fit_bias):
    H, Y = rank_deficient(kind)
    acc = accumulate(H, Y, fit_bias=fit_bias)
    with pytest.warns(RuntimeWarning, match=r"cond.*lam.*larger"):
        W, b, rec = acc.solve(lam)
    assert rec.fallback is True and rec.solver == "eigh" and rec.reason != ""
    assert rec.reason.startswith("cholesky failed (info=") or rec.reason.startswith("cond ")
    assert rec.cond > 1e10
    assert torch.isfinite(W).all() and (b is None or torch.isfinite(b).all())
    assert math.isfinite(rec.r2)
    r_ours = residual(H, Y, W, b)
    r_ref = lstsq_residual(H, Y, fit_bias)
    # As good a fit as lstsq: coefficients are not unique here, so compare residual norms.  The
    # eigen pseudo-inverse drops directions with σ² < D·eps·σ_max² (σ ≲ 7e-8 for kappa1e16), which
    # lstsq keeps, so allow the noise those few directions carry.
    assert r_ours <= r_ref * 1.05 + 1e-6 * np.linalg.norm(Y), (r_ours, r_ref, rec)
    # r2 from the sufficient statistics agrees with the predictions, up to the rounding of G
    # amplified by ‖W‖² (huge here when lam ≈ 0 and κ = 1e16): |δ SS_res| ≲ n·eps·‖H‖²·‖W‖²_F.
    Wn = W.numpy()
    amp = H.shape[0] * np.finfo(np.float64).eps * np.linalg.norm(H, 2) ** 2 * np.sum(Wn**2)
    assert rec.r2 == pytest.approx(r2_direct(H, Y, W, b), abs=1e-9 + amp / np.sum((Y - Y.mean(0)) ** 2))


@pytest.mark.parametrize("kind", KINDS)
def test_ill_conditioned_small_lam_is_finite(kind):
    H, Y = rank_deficient(kind)
    for dtype in (torch.float64, torch.float32):
        W, b, rec = solve_quiet(accumulate(H, Y, fit_bias=True, dtype=dtype), 1e-6)
        assert torch.isfinite(W).all() and torch.isfinite(b).all()
        assert residual(H, Y, W, b) <= 1.1 * lstsq_residual(H, Y, True) + 0.05 * np.linalg.norm(Y - Y.mean(0))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_degenerate_inputs_never_nan(dtype):
    rng = np.random.default_rng(3)
    cases = {
        "all_zero_H": (np.zeros((10, 6)), rng.standard_normal((10, 2))),
        "one_row": (rng.standard_normal((1, 6)), rng.standard_normal((1, 2))),
        "constant_H": (np.ones((10, 6)), rng.standard_normal((10, 2))),
        "huge_scale": (1e15 * rng.standard_normal((20, 6)), rng.standard_normal((20, 2))),
    }
    for name, (H, Y) in cases.items():
        for fit_bias in (True, False):
            for lam in (0.0, 1e-9, 1e-3):
                W, b, rec = solve_quiet(accumulate(H, Y, fit_bias=fit_bias, dtype=dtype), lam)
                assert torch.isfinite(W).all(), (name, fit_bias, lam, rec)
                assert b is None or torch.isfinite(b).all(), (name, fit_bias, lam, rec)
                assert math.isfinite(rec.r2), (name, rec)
                if name == "all_zero_H":  # no signal: the solution is W = 0 and the bias is the mean
                    assert torch.count_nonzero(W) == 0, (fit_bias, lam, rec)
                    if fit_bias:
                        torch.testing.assert_close(b.double(), torch.as_tensor(Y.mean(0)), rtol=1e-6, atol=1e-6)


def test_forced_solvers():
    H, Y = make_problem(5, 200, 15, 2)
    acc = accumulate(H, Y, fit_bias=True)
    Wc, bc, rc = acc.solve(1e-3, solver="cholesky")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # forced eigh never warns
        We, be, re = acc.solve(1e-3, solver="eigh")
    assert (rc.solver, rc.fallback) == ("cholesky", False)
    assert (re.solver, re.fallback, re.reason) == ("eigh", False, "")
    assert rc.cond == pytest.approx(re.cond, rel=1e-8)
    torch.testing.assert_close(We, Wc, rtol=1e-9, atol=1e-10)
    torch.testing.assert_close(be, bc, rtol=1e-9, atol=1e-10)
    # forcing Cholesky on a singular system is an error, not a silent fallback
    Hs, Ys = rank_deficient("zero_columns")
    with pytest.raises(torch.linalg.LinAlgError, match="larger lam"):
        accumulate(Hs, Ys, fit_bias=False).solve(0.0, solver="cholesky")


def test_cond_threshold_controls_fallback():
    H, Y = make_problem(6, 200, 10, 2)
    acc = accumulate(H, Y, fit_bias=True)
    _, _, rec = acc.solve(0.0)
    assert not rec.fallback and 1 < rec.cond < 1e10
    with pytest.warns(RuntimeWarning, match="cond"):
        W, _, rec2 = acc.solve(0.0, cond_threshold=rec.cond / 2)
    assert rec2.fallback and rec2.reason.startswith("cond ") and f"> {rec.cond / 2:.2g}" in rec2.reason
    W0, _, _ = acc.solve(0.0)
    torch.testing.assert_close(W, W0, rtol=1e-9, atol=1e-10)


# --------------------------------------------------------------------------------------
# mask
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("fit_bias", [True, False])
@pytest.mark.parametrize("garbage", ["huge", "nonfinite"])
def test_mask_equals_removing_rows(fit_bias, garbage):
    H, Y = make_problem(8, 240, 12, 3)
    rng = np.random.default_rng(9)
    mask = rng.random(240) > 0.3
    Hg, Yg = H.copy(), Y.copy()
    if garbage == "huge":
        Hg[~mask] = 1e30 * rng.standard_normal(((~mask).sum(), 12))
        Yg[~mask] = -1e30
    else:
        Hg[~mask] = np.nan
        Yg[~mask] = np.inf
    ref = accumulate(H[mask], Y[mask], fit_bias=fit_bias)
    Wr, br, rr = ref.solve(1e-4)
    # leading dims [B, T] with a [B, T] mask
    acc = RidgeAccumulator(12, 3, fit_bias=fit_bias, dtype=torch.float64)
    acc.update(
        torch.as_tensor(Hg).reshape(4, 60, 12), torch.as_tensor(Yg).reshape(4, 60, 3), torch.as_tensor(mask).reshape(4, 60)
    )
    assert int(acc.n) == int(mask.sum())
    W, b, rec = acc.solve(1e-4)
    torch.testing.assert_close(W, Wr, rtol=1e-10, atol=1e-12)
    if fit_bias:
        torch.testing.assert_close(b, br, rtol=1e-10, atol=1e-12)
    assert rec.r2 == pytest.approx(rr.r2, abs=1e-12)
    # float32 accumulator too (garbage must not leak as Inf/NaN)
    acc32 = RidgeAccumulator(12, 3, fit_bias=fit_bias)
    acc32.update(torch.as_tensor(Hg), torch.as_tensor(Yg), torch.as_tensor(mask))
    W32, _, _ = acc32.solve(1e-4)
    assert torch.isfinite(W32).all()
    assert max_rel_err(W32, Wr) < 1e-3


def test_update_does_not_track_gradients():
    H = torch.randn(20, 4, requires_grad=True)
    acc = RidgeAccumulator(4, 2)
    acc.update(torch.nn.functional.gelu(H), torch.randn(20, 2))
    assert not acc.G.requires_grad and acc.G.grad_fn is None and acc.sum_h.grad_fn is None


def test_warning_points_at_caller():
    H, Y = rank_deficient("zero_columns")
    acc = accumulate(H, Y, fit_bias=True)
    with pytest.warns(RuntimeWarning) as record:
        acc.solve(0.0)
    assert record[0].filename == __file__


def test_all_rows_masked_then_solve_raises():
    acc = RidgeAccumulator(4, 2)
    acc.update(torch.randn(5, 4), torch.randn(5, 2), torch.zeros(5, dtype=torch.bool))
    assert int(acc.n) == 0
    with pytest.raises(ValueError, match="no rows"):
        acc.solve(1e-3)


def test_unmasked_nonfinite_rows_raise_in_solve():
    H = torch.randn(10, 4)
    H[3, 1] = float("nan")
    acc = RidgeAccumulator(4, 1)
    acc.update(H, torch.randn(10, 1))
    with pytest.raises(ValueError, match="NaN/Inf.*mask"):
        acc.solve(1e-3)


# --------------------------------------------------------------------------------------
# zero targets and R²
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("fit_bias", [True, False])
@pytest.mark.parametrize("lam", [0.0, 1e-3])
@pytest.mark.parametrize("n", [50, 5])
def test_zero_targets(dtype, fit_bias, lam, n):
    H = np.random.default_rng(10).standard_normal((n, 8)) + 2.0
    W, b, rec = solve_quiet(accumulate(H, np.zeros((n, 3)), fit_bias=fit_bias, dtype=dtype), lam)
    assert torch.count_nonzero(W) == 0
    if fit_bias:
        assert torch.count_nonzero(b) == 0
    assert rec.r2 == 1.0


def test_constant_targets_r2_defined():
    H = np.random.default_rng(11).standard_normal((40, 5))
    W, b, rec = solve_quiet(accumulate(H, np.full((40, 2), 3.25), fit_bias=True), 1e-3)
    assert rec.r2 == 1.0
    assert float(W.abs().max()) < 1e-10
    torch.testing.assert_close(b, torch.full((2,), 3.25, dtype=torch.float64))
    # without a bias a constant target cannot be fitted exactly: r2 = 0 by definition
    _, _, rec = solve_quiet(accumulate(H, np.full((40, 2), 3.25), fit_bias=False), 1e-3)
    assert rec.r2 == 0.0


def r2_direct(H, Y, W, b) -> float:
    Y = np.asarray(Y, dtype=np.float64)
    ss_res = residual(H, Y, W, b) ** 2
    ss_tot = float(np.sum((Y - Y.mean(0)) ** 2))
    return 1.0 - ss_res / ss_tot


@HYP
@given(problems())
def test_r2_from_sufficient_statistics(p):
    seed, n, D, K, lam, fit_bias = p
    H, Y = make_problem(seed, n, D, K, offsets=fit_bias)
    W, b, rec = solve_quiet(accumulate(H, Y, fit_bias=fit_bias), lam)
    assert rec.r2 == pytest.approx(r2_direct(H, Y, W.numpy(), None if b is None else b.numpy()), abs=1e-8)


def test_r2_float32_accumulator():
    H, Y = make_problem(12, 2000, 32, 4)
    W, b, rec = accumulate(H, Y, fit_bias=True, dtype=torch.float32).solve(1e-5)
    assert rec.r2 == pytest.approx(r2_direct(H, Y, W.numpy(), b.numpy()), abs=1e-4)
    assert 0.9 < rec.r2 < 1.0


def test_record_fields():
    H, Y = make_problem(13, 100, 6, 2)
    _, _, rec = accumulate(H, Y, fit_bias=True).solve(1e-2)
    assert isinstance(rec, SolveRecord)
    d = rec.to_dict()
    for key in ("solver", "fallback", "reason", "cond", "tokens", "lam", "lam_abs", "r2", "seconds"):
        assert key in d
    assert d["tokens"] == 100 and d["solver"] == "cholesky" and d["reason"] == "" and d["seconds"] >= 0


def test_one_dimensional_targets():
    H, Y = make_problem(14, 80, 7, 2)
    acc = RidgeAccumulator(7, 1, fit_bias=False, dtype=torch.float64)
    acc.update(torch.as_tensor(H), torch.as_tensor(Y[:, 0]))  # 1-D Y, K=1
    W, b, _ = acc.solve(0.0)
    assert W.shape == (7, 1) and b is None
    assert max_rel_err(W, ref_solution(H, Y[:, :1], 0.0, False)[0]) < 1e-9


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------
def test_value_errors():
    acc = RidgeAccumulator(4, 2)
    with pytest.raises(ValueError, match="H rows .* != Y rows"):
        acc.update(torch.randn(10, 4), torch.randn(9, 2))
    with pytest.raises(ValueError, match="n_features=4"):
        acc.update(torch.randn(10, 5), torch.randn(10, 2))
    with pytest.raises(ValueError, match="n_outputs=2"):
        acc.update(torch.randn(10, 4), torch.randn(10, 3))
    with pytest.raises(ValueError, match="mask"):
        acc.update(torch.randn(10, 4), torch.randn(10, 2), torch.ones(9, dtype=torch.bool))
    acc.update(torch.randn(10, 4), torch.randn(10, 2))
    with pytest.raises(ValueError, match=r"lam must be >= 0"):
        acc.solve(-1e-3)
    with pytest.raises(ValueError, match=r"lam must be >= 0"):
        acc.solve(float("nan"))
    with pytest.raises(ValueError, match=r"unknown solver 'qr'.*'auto', 'cholesky', 'eigh'"):
        acc.solve(1e-3, solver="qr")
    with pytest.raises(ValueError, match="cond_threshold"):
        acc.solve(1e-3, cond_threshold=0.0)
    with pytest.raises(ValueError, match="dtype"):
        RidgeAccumulator(4, 2, dtype=torch.bfloat16)


# --------------------------------------------------------------------------------------
# TF32
# --------------------------------------------------------------------------------------
def _precisions():
    return (torch.backends.cuda.matmul.fp32_precision, torch.backends.mkldnn.matmul.fp32_precision)


def _global_state():
    try:
        legacy = torch.get_float32_matmul_precision()
    except RuntimeError:  # torch refuses to read it after mixed legacy/new API use
        legacy = "mixed"
    return legacy, _precisions()


def _restore_global(state):
    legacy, (cuda_p, mkl_p) = state
    if legacy != "mixed":
        torch.set_float32_matmul_precision(legacy)
    torch.backends.cuda.matmul.fp32_precision = cuda_p
    torch.backends.mkldnn.matmul.fp32_precision = mkl_p


@pytest.mark.parametrize("initial", ["none", "tf32", "ieee", "legacy_allow_tf32", "high"])
def test_tf32_disabled_during_update_and_restored(initial, monkeypatch):
    saved = _global_state()
    seen = []
    orig_addmm_ = torch.Tensor.addmm_

    def spy(self, *a, **k):
        seen.append(_precisions())
        return orig_addmm_(self, *a, **k)

    try:
        if initial == "legacy_allow_tf32":
            torch.backends.cuda.matmul.allow_tf32 = True
        elif initial == "high":
            torch.set_float32_matmul_precision("high")
        else:
            torch.backends.cuda.matmul.fp32_precision = initial
        before = _global_state()
        acc = RidgeAccumulator(3, 2)
        monkeypatch.setattr(torch.Tensor, "addmm_", spy)
        acc.update(torch.randn(7, 3), torch.randn(7, 2))
        monkeypatch.undo()
        assert seen and all(s == ("ieee", "ieee") for s in seen), seen
        assert _global_state() == before
        if initial == "legacy_allow_tf32":
            assert torch.backends.cuda.matmul.allow_tf32 is True
        if initial == "high":
            assert torch.get_float32_matmul_precision() == "high"
    finally:
        monkeypatch.undo()
        _restore_global(saved)
    assert _global_state() == saved  # the test itself leaks nothing into later tests


def test_no_tf32_restores_on_exception():
    before = _precisions()
    with pytest.raises(KeyError):
        with no_tf32():
            assert _precisions() == ("ieee", "ieee")
            raise KeyError
    assert _precisions() == before


# --------------------------------------------------------------------------------------
# distributed (gloo, 2 processes)
# --------------------------------------------------------------------------------------
def _dist_worker(rank: int, world_size: int, init_file: str, data_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"file://{init_file}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    try:
        d = torch.load(data_file)
        H, Y, mask = d["H"], d["Y"], d["mask"]
        cut = d["cut"]  # uneven shards
        sl = slice(0, cut) if rank == 0 else slice(cut, None)
        acc = RidgeAccumulator(H.shape[1], Y.shape[1], fit_bias=True, dtype=torch.float64)
        for i in range(sl.start or 0, sl.stop if sl.stop is not None else H.shape[0], 37):  # several batches
            j = min(i + 37, sl.stop if sl.stop is not None else H.shape[0])
            acc.update(H[i:j], Y[i:j], mask[i:j])
        acc.all_reduce()
        W, b, rec = acc.solve(1e-4)
        torch.save({"W": W, "b": b, "tokens": rec.tokens, "r2": rec.r2}, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_distributed_all_reduce_matches_single_process(tmp_path):
    import torch.multiprocessing as mp

    H, Y = make_problem(15, 500, 16, 3)
    mask = np.random.default_rng(16).random(500) > 0.1
    data = {"H": torch.as_tensor(H), "Y": torch.as_tensor(Y), "mask": torch.as_tensor(mask), "cut": 180}
    data_file = tmp_path / "data.pt"
    torch.save(data, data_file)
    mp.spawn(
        _dist_worker,
        args=(2, str(tmp_path / "init"), str(data_file), str(tmp_path)),
        nprocs=2,
        join=True,
    )
    acc = accumulate(H, Y, fit_bias=True, mask=mask)
    W, b, rec = acc.solve(1e-4)
    for rank in range(2):
        out = torch.load(tmp_path / f"rank{rank}.pt")
        assert out["tokens"] == int(mask.sum())
        torch.testing.assert_close(out["W"], W, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out["b"], b, rtol=1e-10, atol=1e-12)
        assert out["r2"] == pytest.approx(rec.r2, abs=1e-10)


def test_all_reduce_is_noop_without_process_group():
    acc = accumulate(*make_problem(17, 30, 4, 1), fit_bias=True)
    before = {k: getattr(acc, k).clone() for k in ("G", "C", "sum_h", "sum_y", "sum_y2", "n")}
    acc.all_reduce()
    for k, v in before.items():
        assert torch.equal(getattr(acc, k), v)


def test_label_updates_equal_dense_one_hot_updates():
    """Sparse targets (the solved head's next tokens) give the statistics and solution of dense one-hot rows."""
    g = torch.Generator().manual_seed(0)
    H = torch.randn(3, 50, 6, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 9, (3, 50), generator=g)
    mask = torch.rand(3, 50, generator=g) > 0.2
    dense, sparse = (RidgeAccumulator(6, 9, dtype=torch.float64) for _ in range(2))
    dense.update(H, torch.nn.functional.one_hot(labels, 9).double(), mask)
    sparse.update_labels(H, labels, mask)
    for name in ("G", "C", "sum_h", "sum_y", "sum_y2", "n"):
        torch.testing.assert_close(getattr(sparse, name), getattr(dense, name), msg=name)
    (wd, bd, _), (ws, bs, _) = dense.solve(1e-3), sparse.solve(1e-3)
    torch.testing.assert_close(ws, wd)
    torch.testing.assert_close(bs, bd)
