"""Tests for smdyn.geometry: stable angles and the fused reductions of the monitor's fast path.

Every expected value is computed independently of the implementation: the angle between the float32
vectors actually given, by Gram-Schmidt in extended precision (numpy ``longdouble``), itself checked
against exact rational arithmetic (``fractions``) on small vectors; closed forms for hand-built 2-D sums.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from smdyn import geometry
from smdyn.geometry import angle, angle_from_sums, dot, norm_before_sq_from_sums, sq_norm, update_sums

EPS32 = float(np.finfo(np.float32).eps)  # 1.19e-7
LD = np.longdouble
ANGLES = [*np.geomspace(1e-7, 1.0, 8).tolist(), math.pi / 2, 2.5, math.pi - 1e-3]


# --------------------------------------------------------------------------------------------------
# Independent references


def _np(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).ravel()


def _ref_angle(x: torch.Tensor | np.ndarray, y: torch.Tensor | np.ndarray) -> float:
    """∠(x, y) by Gram-Schmidt in extended precision: y = c·x + r, r ⟂ x, Δ = atan2(‖x‖‖r‖, c‖x‖²).

    A different formula from the implementation's 2·atan2(‖x̂ − ŷ‖, ‖x̂ + ŷ‖). float32 and float64 data
    convert exactly; with a 64-bit mantissa the result is good to ~1e-12 relative for Δ ≥ 1e-7.
    """
    xl, yl = _np(x).astype(LD), _np(y).astype(LD)
    xx = np.dot(xl, xl)
    c = np.dot(xl, yl) / xx
    r = yl - c * xl
    rr = np.dot(r, r) - np.dot(r, xl) ** 2 / xx  # what rounding of c left along x
    return float(np.arctan2(np.sqrt(max(rr, LD(0))) * np.sqrt(xx), c * xx))


def _exact_angle(x: np.ndarray, y: np.ndarray) -> float:
    """∠(x, y) from exact rational sin² and cos²; the only rounding is in the last float operations."""
    fx, fy = [Fraction(float(v)) for v in x], [Fraction(float(v)) for v in y]
    xx = sum(v * v for v in fx)
    yy = sum(v * v for v in fy)
    xy = sum(p * q for p, q in zip(fx, fy, strict=True))
    sin2 = (xx * yy - xy * xy) / (xx * yy)
    cos2 = xy * xy / (xx * yy)
    return math.atan2(math.sqrt(float(sin2)), math.copysign(math.sqrt(float(cos2)), float(xy)))


def _orthonormal(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two random orthonormal float64 vectors of length n."""
    rng = np.random.default_rng(seed)
    u = rng.standard_normal(n)
    u /= np.linalg.norm(u)
    v = rng.standard_normal(n)
    for _ in range(2):
        v -= (v @ u) * u
    v /= np.linalg.norm(v)
    return u, v


def _pair(n: int, theta: float, ratio: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 vectors at nominal angle theta, ‖b‖ = ratio·‖a‖; references use the rounded vectors."""
    u, v = _orthonormal(n, seed)
    a = 2.0 * u
    b = 2.0 * ratio * (math.cos(theta) * u + math.sin(theta) * v)
    return torch.from_numpy(a).float(), torch.from_numpy(b).float()


def _rel(value: float, ref: float) -> float:
    return abs(value - ref) / abs(ref)


def test_reference_matches_exact_rational_arithmetic() -> None:
    """The extended-precision reference is itself exact: it agrees with rational arithmetic."""
    for theta in ANGLES:
        for ratio in (1.0, 3.0, 10.0):
            a, b = _pair(40, theta, ratio, seed=7)
            exact = _exact_angle(a.numpy(), b.numpy())
            assert _rel(_ref_angle(a, b), exact) < 1e-12, (theta, ratio)


# --------------------------------------------------------------------------------------------------
# angle


@pytest.mark.parametrize("n", [1_000, 100_000])
@pytest.mark.parametrize("ratio", [1.0, 3.0, 10.0])
def test_angle_matches_reference(n: int, ratio: float) -> None:
    for i, theta in enumerate(ANGLES):
        a, b = _pair(n, theta, ratio, seed=i)
        got = angle(a, b)
        assert got.dtype == torch.float64
        assert got.shape == ()
        assert _rel(float(got), _ref_angle(a, b)) < 1e-9, theta
        assert _rel(float(angle(b, a)), _ref_angle(a, b)) < 1e-9, theta  # symmetric


def test_angle_ten_million_elements() -> None:
    a, b = _pair(10_000_000, 1e-6, 3.0, seed=1)
    assert _rel(float(angle(a, b)), _ref_angle(a, b)) < 1e-9


def test_float32_arccos_fails_where_angle_does_not() -> None:
    """Why the paper's arccos form (Eq 13) is not used: at Δ = 1e-4 float32 arccos returns exactly 0."""
    a, b = _pair(1_000, 1e-4, 3.0, seed=2)
    ref = _ref_angle(a, b)
    cosine = torch.dot(a / a.norm(), b / b.norm()).clamp(-1.0, 1.0)
    assert float(torch.arccos(cosine)) == 0.0
    a3, b3 = _pair(1_000, 1e-3, 3.0, seed=2)
    cosine3 = torch.dot(a3 / a3.norm(), b3 / b3.norm()).clamp(-1.0, 1.0)
    assert _rel(float(torch.arccos(cosine3)), _ref_angle(a3, b3)) > 1e-3  # still off at 1e-3
    assert _rel(float(angle(a, b)), ref) < 1e-9


def test_angle_per_channel_equals_loop_over_rows() -> None:
    rng = np.random.default_rng(3)
    a = torch.from_numpy(rng.standard_normal((6, 3, 5, 5))).float()
    step = torch.from_numpy(rng.standard_normal((6, 3, 5, 5))).float()
    scales = torch.tensor([1e-6, 1e-4, 1e-2, 1.0, 30.0, 0.3]).view(6, 1, 1, 1)
    b = a * torch.tensor([1.0, 2.0, 0.5, 1.0, 1.0, -1.0]).view(6, 1, 1, 1) + scales * step
    got = angle(a, b, per_channel=True)
    assert got.shape == (6,)
    assert got.dtype == torch.float64
    loop = torch.stack([angle(a[i], b[i]) for i in range(6)])
    torch.testing.assert_close(got, loop, rtol=1e-12, atol=0.0)
    for i in range(6):
        assert _rel(float(got[i]), _ref_angle(a[i], b[i])) < 1e-9


def test_angle_zero_norm_is_nan() -> None:
    assert math.isnan(float(angle(torch.zeros(10), torch.ones(10))))
    assert math.isnan(float(angle(torch.ones(10), torch.zeros(10))))
    a = torch.ones(3, 4)
    b = torch.ones(3, 4)
    b[1] = 0.0
    got = angle(a, b, per_channel=True)
    assert math.isnan(float(got[1]))
    assert float(got[0]) == pytest.approx(0.0, abs=1e-7)
    assert float(got[2]) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_angle_other_dtypes(dtype: torch.dtype) -> None:
    a32, b32 = _pair(1_000, 0.05, 3.0, seed=4)
    a, b = a32.to(dtype), b32.to(dtype)
    assert _rel(float(angle(a, b)), _ref_angle(a, b)) < 1e-9  # the angle of the vectors as stored
    assert _rel(float(angle(a, b32)), _ref_angle(a, b32)) < 1e-9  # mixed dtypes


def test_angle_leaves_float64_input_unchanged() -> None:
    a = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    b = torch.randn(100, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a0, b0 = a.clone(), b.clone()
    angle(a, b)
    angle(a, b, per_channel=True)
    assert torch.equal(a, a0)
    assert torch.equal(b, b0)


def test_angle_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        angle(torch.ones(3), torch.ones(4))
    with pytest.raises(TypeError, match=r"b must be a torch\.Tensor"):
        angle(torch.ones(3), [1.0, 2.0, 3.0])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="a must have a floating-point dtype"):
        angle(torch.ones(3, dtype=torch.int64), torch.ones(3))
    with pytest.raises(ValueError, match="per_channel"):
        angle(torch.tensor(1.0), torch.tensor(2.0), per_channel=True)


# --------------------------------------------------------------------------------------------------
# update_sums + angle_from_sums


def _step_reference(after: torch.Tensor, update: torch.Tensor) -> tuple[float, float]:
    """(Δ, ‖w_t‖²) of the exact pair: w_t = after + update formed in float64 (exact for float32 data)."""
    w_t = after.double() + update.double()
    return _ref_angle(after, w_t), float(np.dot(_np(w_t).astype(LD), _np(w_t).astype(LD)))


def _radial_fraction(after: torch.Tensor, update: torch.Tensor) -> float:
    """|⟨d, b̂⟩| / ‖d‖ of the data, so each test can check it exercises the regime it names."""
    b, d = _np(after), _np(update)
    return abs(d @ b) / (np.linalg.norm(b) * np.linalg.norm(d))


def _tangential_step(n: int, delta: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """b and a step d across it turning w_t by ≈ delta, with the SMD-like radial part 0.005‖d‖."""
    u, v = _orthonormal(n, seed)
    after = 3.0 * u
    update = 3.0 * math.tan(delta) * (v + 0.005 * u)
    return torch.from_numpy(after).float(), torch.from_numpy(update).float()


def _radial_step(n: int, k: float, tangential: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """d = k·b plus a tangential part of relative size ``tangential`` (mostly radial: |⟨d, b̂⟩| > ½‖d‖)."""
    u, v = _orthonormal(n, seed)
    after = 3.0 * u
    update = 3.0 * abs(k) * (math.copysign(1.0, k) * u + tangential * v)
    return torch.from_numpy(after).float(), torch.from_numpy(update).float()


@pytest.mark.parametrize("n", [1_000, 100_000])
def test_update_sums_tangential_regime(n: int) -> None:
    for i, delta in enumerate(np.geomspace(1e-6, 1e-1, 6)):
        after, update = _tangential_step(n, float(delta), seed=i)
        assert _radial_fraction(after, update) < 0.5
        sums = update_sums(after, update)
        assert sums.shape == (4,)
        assert sums.dtype == torch.float64
        ref_delta, ref_norm_sq = _step_reference(after, update)
        assert _rel(float(angle_from_sums(sums)), ref_delta) < 1e-6, delta
        assert _rel(float(norm_before_sq_from_sums(sums)), ref_norm_sq) < 1e-6
        # The sums themselves, against extended precision.
        b, d = _np(after).astype(LD), _np(update).astype(LD)
        bb, db, dd = float(b @ b), float(d @ b), float(d @ d)
        assert _rel(float(sums[0]), bb) < 1e-6
        assert abs(float(sums[1]) - db) < 1e-6 * math.sqrt(bb * dd)
        assert _rel(float(sums[2]), dd) < 1e-6
        assert _rel(float(sums[3]), dd - db * db / bb) < 1e-6


@pytest.mark.parametrize("n", [1_000, 100_000])
@pytest.mark.parametrize("k", [0.3, -0.3, -0.9, 2.0])
def test_update_sums_radial_regime(n: int, k: float) -> None:
    """A mostly radial step: the one-pass ‖d‖² − ⟨d,b⟩²/‖b‖² cancels, the projected form does not."""
    for i, tangential in enumerate([1e-2, 1e-3, 1e-4]):
        after, update = _radial_step(n, k, tangential, seed=10 + i)
        assert _radial_fraction(after, update) > 0.5
        sums = update_sums(after, update)
        ref_delta, ref_norm_sq = _step_reference(after, update)
        assert _rel(float(angle_from_sums(sums)), ref_delta) < 1e-6, tangential
        assert _rel(float(norm_before_sq_from_sums(sums)), ref_norm_sq) < 1e-6


def test_one_pass_form_fails_on_a_radial_step() -> None:
    """Why update_sums switches to the projected form: from float32-accumulated sums (the same reductions,
    relative error ~1e-7) the one-pass ‖d‖² − ⟨d,b⟩²/‖b‖² cancels down to noise on a mostly radial step."""
    after, update = _radial_step(100_000, 0.3, 1e-4, seed=20)
    bb, db, dd = float(sq_norm(after)), float(dot(update, after)), float(sq_norm(update))
    one_pass = dd - db * db / bb
    naive = math.atan2(math.sqrt(max(one_pass, 0.0)), math.sqrt(bb) + db / math.sqrt(bb))
    ref_delta, _ = _step_reference(after, update)
    assert _rel(naive, ref_delta) > 1e-2
    assert _rel(float(angle_from_sums(update_sums(after, update))), ref_delta) < 1e-6


@pytest.mark.parametrize("tangential", [1e-5, 1e-6, 1e-7, 0.0])
def test_update_sums_radial_error_within_float32_rounding(tangential: float) -> None:
    """Below float32 resolution of d the error in Δ is that of rounding d once: ≤ ε‖d‖/‖w_t‖."""
    for k in (0.3, -0.9, 2.0):
        after, update = _radial_step(100_000, k, tangential, seed=30)
        ref_delta, ref_norm_sq = _step_reference(after, update)
        got = float(angle_from_sums(update_sums(after, update)))
        bound = EPS32 * float(update.double().norm()) / math.sqrt(ref_norm_sq) + 1e-6 * ref_delta
        assert abs(got - ref_delta) <= bound, (k, got, ref_delta)


@pytest.mark.parametrize("k", [0.5, -0.5, 0.25, 2.0, -2.0])
def test_update_sums_pure_radial_step(k: float) -> None:
    """d = k·b exactly (a power-of-two scaling): w_t ∥ b, so Δ = 0 (or π when w_t = −b)."""
    after = torch.randn(10_000, generator=torch.Generator().manual_seed(5))
    update = after * k
    expected = math.pi if k < -1 else 0.0
    assert _ref_angle(after, after.double() + update.double()) == pytest.approx(expected, abs=1e-15)
    got = float(angle_from_sums(update_sums(after, update)))
    assert abs(got - expected) < 1e-7


def test_update_sums_per_channel_equals_loop_over_rows() -> None:
    """Rows in both regimes, mixed in one tensor; per-channel equals one call per row."""
    rows = [
        _tangential_step(300, 1e-5, seed=40),
        _tangential_step(300, 1e-2, seed=41),
        _radial_step(300, 0.3, 1e-3, seed=42),
        _radial_step(300, -0.9, 1e-2, seed=43),
    ]
    after = torch.stack([r[0] for r in rows]).view(4, 3, 10, 10)
    update = torch.stack([r[1] for r in rows]).view(4, 3, 10, 10)
    sums = update_sums(after, update, per_channel=True)
    assert sums.shape == (4, 4)
    loop = torch.stack([update_sums(after[i], update[i]) for i in range(4)])
    torch.testing.assert_close(sums, loop, rtol=1e-6, atol=1e-9 * float(update.norm()) ** 2)
    deltas = angle_from_sums(sums)
    assert deltas.shape == (4,)
    for i in range(4):
        ref_delta, _ = _step_reference(after[i], update[i])
        assert _rel(float(deltas[i]), ref_delta) < 1e-6


def test_device_path_equals_host_path() -> None:
    """The sync-free path (always project, select with torch.where) gives the same numbers as the CPU one."""
    rows = [_tangential_step(500, 1e-3, seed=50), _radial_step(500, 0.3, 1e-3, seed=51)]
    after = torch.stack([r[0] for r in rows])
    update = torch.stack([r[1] for r in rows])
    for per_channel in (True, False):
        host = update_sums(after, update, per_channel=per_channel)
        device = geometry._update_sums(after, update, per_channel=per_channel, host_branch=False)
        assert torch.equal(host, device)
    for a, d in rows:  # per tensor, one regime each
        host = update_sums(a, d)
        device = geometry._update_sums(a, d, per_channel=False, host_branch=False)
        assert torch.equal(host, device)


@pytest.mark.parametrize("n", [1_000, 100_000])  # one block, and the blocked CPU sums
def test_update_sums_host_equals_the_tensor_form(n: int) -> None:
    """geometry.update_sums_host (the monitor's CPU path for large tensors) gives update_sums' numbers to the
    last bit: tangential, slightly and mostly radial, shrinking, pure radial, a zero weight, a NaN step and
    bfloat16 inputs."""
    cases = [_tangential_step(n, 1e-5, seed=60), _tangential_step(n, 0.3, seed=61)]
    cases += [_radial_step(n, k, 1e-3, seed=62) for k in (0.3, -0.9, 2.0)]
    after, _ = _tangential_step(n, 1e-3, seed=63)
    cases += [(after, 0.25 * after), (torch.zeros(n), after), (after, torch.full((n,), math.nan))]
    cases += [(a.bfloat16(), d.bfloat16()) for a, d in cases[:2]]
    for a, d in cases:
        want = update_sums(a, d).tolist()
        got = geometry.update_sums_host(a, d)
        assert len(got) == 4
        for x, y in zip(got, want, strict=True):
            assert (math.isnan(x) and math.isnan(y)) or x == y, (got, want)
    with pytest.raises(ValueError, match="CPU tensors only"):
        geometry.update_sums_host(torch.empty(3, device="meta"), torch.empty(3, device="meta"))


def test_no_host_reads_off_cpu() -> None:
    """On a device other than CPU nothing is read back: meta tensors have no values to read."""
    after = torch.empty(8, 3, 3, 3, device="meta")
    update = torch.empty(8, 3, 3, 3, device="meta")
    for per_channel, shape in ((False, (4,)), (True, (8, 4))):
        sums = update_sums(after, update, per_channel=per_channel)
        assert sums.shape == shape
        assert sums.dtype == torch.float64
        assert sums.device.type == "meta"
        assert angle_from_sums(sums).shape == shape[:-1]
    assert dot(after, update).device.type == "meta"
    assert sq_norm(after, per_channel=True).shape == (8,)
    assert angle(after, update, per_channel=True).shape == (8,)


def test_update_sums_zero_norm_after_is_nan() -> None:
    sums = update_sums(torch.zeros(10), torch.ones(10))
    assert math.isnan(float(sums[3]))
    assert math.isnan(float(angle_from_sums(sums)))
    assert float(norm_before_sq_from_sums(sums)) == pytest.approx(10.0)
    after = torch.ones(3, 5)
    after[2] = 0.0
    per = angle_from_sums(update_sums(after, 1e-3 * torch.ones(3, 5), per_channel=True))
    assert math.isnan(float(per[2]))
    assert not per[:2].isnan().any()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_update_sums_half_precision(dtype: torch.dtype) -> None:
    after32, update32 = _tangential_step(2_000, 1e-2, seed=60)
    after, update = after32.to(dtype), update32.to(dtype)
    sums = update_sums(after, update)
    assert sums.dtype == torch.float64
    ref_delta, _ = _step_reference(after, update)
    assert _rel(float(angle_from_sums(sums)), ref_delta) < 1e-6


def test_update_sums_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="after and update must have the same shape"):
        update_sums(torch.ones(3), torch.ones(3, 1))
    with pytest.raises(TypeError, match=r"update must be a torch\.Tensor"):
        update_sums(torch.ones(3), np.ones(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_channel"):
        update_sums(torch.tensor(1.0), torch.tensor(1.0), per_channel=True)


def test_sums_formulas_on_hand_built_2d_steps() -> None:
    """2-D steps with known answers: b = (r, 0), w_t = R(cos θ, sin θ); Δ = θ and ‖w_t‖² = R²."""
    theta = np.array([[1e-8, 1e-3, 0.5], [1.5, 2.5, math.pi - 1e-6]])
    r = np.array([[1.0, 2.0, 0.1], [5.0, 1.0, 3.0]])
    big_r = np.array([[1.0, 0.5, 3.0], [1.0, 7.0, 0.2]])
    d_x, d_y = big_r * np.cos(theta) - r, big_r * np.sin(theta)
    sums = np.stack([r * r, d_x * r, d_x * d_x + d_y * d_y, d_y * d_y], axis=-1)
    np.testing.assert_allclose(angle_from_sums(sums), theta, rtol=1e-12)
    np.testing.assert_allclose(norm_before_sq_from_sums(sums), big_r**2, rtol=1e-12)
    t = torch.from_numpy(sums)
    torch.testing.assert_close(angle_from_sums(t), torch.from_numpy(theta), rtol=1e-12, atol=0.0)
    torch.testing.assert_close(norm_before_sq_from_sums(t), torch.from_numpy(big_r**2), rtol=1e-12, atol=0.0)
    assert isinstance(angle_from_sums(sums), np.ndarray)
    zero = np.array([0.0, 0.0, 1.0, 1.0])
    assert np.isnan(angle_from_sums(zero))


def test_sums_functions_reject_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\[\.\.\., 4\]"):
        angle_from_sums(np.zeros((3, 5)))
    with pytest.raises(TypeError, match=r"numpy array or a torch\.Tensor"):
        angle_from_sums([1.0, 0.0, 0.0, 0.0])  # type: ignore[type-var]
    with pytest.raises(TypeError, match="floating-point"):
        norm_before_sq_from_sums(np.zeros(4, dtype=np.int64))


# --------------------------------------------------------------------------------------------------
# dot, sq_norm


@pytest.mark.parametrize("n", [1_000, 100_000, 1 << 22])
def test_dot_and_sq_norm_match_extended_precision(n: int) -> None:
    """All-positive data, the worst case for a float32 accumulator (no cancellation to hide its drift)."""
    g = torch.Generator().manual_seed(n)
    a = torch.rand(n, generator=g) + 0.5
    b = torch.rand(n, generator=g) - 0.25
    al, bl = _np(a).astype(LD), _np(b).astype(LD)
    got_sq, got_dot = sq_norm(a), dot(a, b)
    assert got_sq.dtype == got_dot.dtype == torch.float64
    assert got_sq.shape == got_dot.shape == ()
    assert _rel(float(got_sq), float(al @ al)) < 1e-6
    assert abs(float(got_dot) - float(al @ bl)) < 1e-6 * float(np.abs(al) @ np.abs(bl))


def test_dot_per_channel_equals_loop_and_dtypes() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(5, 4, 3, generator=g)
    b = torch.randn(5, 4, 3, generator=g)
    per = dot(a, b, per_channel=True)
    assert per.shape == (5,)
    scale = float((a.abs() * b.abs()).sum((1, 2)).max())
    loop = torch.stack([dot(a[i], b[i]) for i in range(5)])
    torch.testing.assert_close(per, loop, rtol=0.0, atol=1e-6 * scale)
    exact = (a.double() * b.double()).sum((1, 2))
    torch.testing.assert_close(per, exact, rtol=0.0, atol=1e-6 * scale)
    torch.testing.assert_close(sq_norm(a, per_channel=True), (a.double() ** 2).sum((1, 2)), rtol=1e-6, atol=0)
    # float64 input keeps float64 precision; half types are reduced in float32 without error.
    a64 = a.double()
    assert float(sq_norm(a64)) == pytest.approx(float(np.sum(_np(a64).astype(LD) ** 2)), rel=1e-14)
    bf = a.to(torch.bfloat16)
    assert float(sq_norm(bf)) == pytest.approx(float((bf.double() ** 2).sum()), rel=1e-6)
    assert float(dot(bf, b)) == pytest.approx(float(bf.double().flatten() @ b.double().flatten()), rel=1e-6)


def test_dot_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        dot(torch.ones(3), torch.ones(2))
    with pytest.raises(TypeError, match=r"a must be a torch\.Tensor"):
        sq_norm(np.ones(3))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="per_channel"):
        sq_norm(torch.tensor(3.0), per_channel=True)


@pytest.mark.parametrize("n", [1000, 100_000])
@pytest.mark.parametrize("per_channel", [False, True])
def test_dots_of_several_pairs_match_float64(n: int, per_channel: bool) -> None:
    from smdyn.geometry import dots

    gen = torch.Generator().manual_seed(3)
    w, g, v = (torch.randn(8, n // 8, generator=gen) for _ in range(3))
    got = dots([(w, w), (w, g), (g, v)], per_channel=per_channel).numpy()
    rows = (lambda t: t.double().reshape(8, -1)) if per_channel else (lambda t: t.double().reshape(1, -1))
    want = np.stack([(rows(a) * rows(b)).sum(1).numpy() for a, b in ((w, w), (w, g), (g, v))], axis=-1)
    want = want if per_channel else want[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4 * np.sqrt(n))
    with pytest.raises(ValueError, match="at least one pair"):
        dots([])


@pytest.mark.parametrize("n", [(1 << 18) - 3, (1 << 18) + 12_345, 1 << 20])
def test_gram_blocks_keep_the_known_update_angle_within_1e_minus_6(n: int) -> None:
    """geometry.gram's coarse blocks are sized for the Δ they feed: an SGDM step (coupled decay, momentum)
    on float32 (w, g, v), against the angle of w and w − d formed in float64 from the same values."""
    from smdyn.geometry import gram
    from smdyn.monitor.measure import NRAW, I
    from smdyn.monitor.metrics import known_update_angle

    lr, wd, mu = 0.1, 5e-4, 0.9
    gen = torch.Generator().manual_seed(n)
    for trial in range(3):
        w = torch.randn(n, generator=gen) * (0.5 + trial) + 0.01 * trial
        g = torch.randn(n, generator=gen)
        g -= (g @ w) / (w @ w) * w
        g *= 0.03 * w.norm() / g.norm()
        v = torch.randn(n, generator=gen) * (0.07 * w.norm() / math.sqrt(n)) + wd * w / (1 - mu)
        raw = np.full((1, 1, NRAW), np.nan)
        for value, key in zip(gram([w, g, v]).numpy(), ("ww", "gg", "vv", "wg", "wv", "gv"), strict=True):
            raw[0, 0, I[key]] = value
        got = known_update_angle([raw], [np.array([[lr * wd, lr, lr * mu]])])[0][0, 0]
        w64, g64, v64 = (_np(t).astype(np.float64) for t in (w, g, v))
        after = w64 - lr * (mu * v64 + g64 + wd * w64)
        a, b = w64 / np.linalg.norm(w64), after / np.linalg.norm(after)
        want = 2 * math.atan2(np.linalg.norm(a - b), np.linalg.norm(a + b))
        assert got == pytest.approx(want, rel=1e-6), (n, trial)


@pytest.mark.parametrize("n", [1000, 3 * 2**15 + 17, 2**18])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_step_sums_host_forms_the_step_it_sums(n: int, dtype: torch.dtype) -> None:
    """geometry.step_sums_host (the step formed block by block as it is summed) gives the numbers of forming
    d = w_t − w_{t+1} first and summing it with update_sums_host, to the last bit, and leaves d in w_t's
    place; checked against float64 sums too (tangential, radial and shrinking steps)."""
    cases = [_tangential_step(n, 1e-5, seed=70), _tangential_step(n, 0.3, seed=71)]
    cases += [_radial_step(n, k, 1e-3, seed=72) for k in (0.3, -0.9)]
    for after, update in cases:
        after = after.to(dtype)
        before = (after + update.to(dtype)).contiguous()
        d = before - after
        want = geometry.update_sums_host(after, d)
        work = before.clone()
        got = geometry.step_sums_host(work, after)
        assert got == want
        assert torch.equal(work, d)
        a64, d64 = after.double(), d.double()
        bb, db, dd = float(a64 @ a64), float(d64 @ a64), float(d64 @ d64)
        assert got[0] == pytest.approx(bb, rel=2e-6)
        assert got[2] == pytest.approx(dd, rel=2e-6)
        assert got[3] == pytest.approx(dd - db * db / bb, rel=1e-5, abs=1e-6 * dd)


def test_step_sums_host_refuses_what_it_cannot_overwrite() -> None:
    w = torch.randn(64, 64)
    with pytest.raises(ValueError, match="contiguous"):
        geometry.step_sums_host(w.t(), w)
    with pytest.raises(ValueError, match="dtype"):
        geometry.step_sums_host(w.bfloat16(), w.bfloat16())
    with pytest.raises(ValueError, match="dtype"):
        geometry.step_sums_host(w.double(), w)
    with pytest.raises(ValueError, match="CPU tensors only"):
        geometry.step_sums_host(torch.empty(3, device="meta"), torch.empty(3, device="meta"))
    with pytest.raises(ValueError, match="share memory"):
        geometry.step_sums_host(w, w)
    big = torch.randn(2 * 2**17)
    with pytest.raises(ValueError, match="share memory"):
        geometry.step_sums_host(big[: 2**17], big[2**17 - 5 : -5])
