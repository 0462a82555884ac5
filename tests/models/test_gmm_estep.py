"""The E-step of all the diagonal and spherical mixtures of a pass together (models._gmm_estep)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
from numpy.testing import assert_allclose

from streamclust.engine import CombinedPlan, RowSource, drive
from streamclust.engine.arrays import joint_steps
from streamclust.engine.backend import Backend
from streamclust.engine.combined import CombinedAccumulator
from streamclust.models._gmm_estep import DiagEStep
from streamclust.models._gmm_stats import GMMStatsAccumulator, GMMSuffStats, gmm_log_resp, m_step
from streamclust.models.gmm import StreamingGaussianMixture

torch = pytest.importorskip("torch")


def _model(rng, k, d, ct):
    w = rng.uniform(0.2, 1.0, k)
    means = rng.normal(size=(k, d)) * 2
    pc = rng.uniform(0.5, 2.0, (k, d)) if ct == "diag" else rng.uniform(0.5, 2.0, k)
    return w / w.sum(), means, pc


def _reference(X, w, means, pc, ct, sample_weight=None):
    """One mixture's sums from the per-mixture formulas (gmm_log_resp, GMMSuffStats.accumulate)."""
    stats = GMMSuffStats(means.shape[0], X.shape[1], ct, means)
    log_norm, log_resp = gmm_log_resp(X, w, means, pc, ct)
    stats.accumulate(X, np.exp(log_resp), log_norm, sample_weight)
    return stats


def _parts(rng, d, spec, sample_weight=None):
    return [GMMStatsAccumulator(*_model(rng, k, d, ct), ct, sample_weight=sample_weight) for k, ct in spec]


SPEC = [(1, "diag"), (3, "spherical"), (7, "diag"), (2, "diag"), (12, "spherical")]


def _stepped(parts, X, offset=0):
    """``parts`` fed ``X`` (rows ``offset:``) through one joint step, then settled."""
    step = DiagEStep(parts)
    step.update(X, offset)
    step.to_host()
    return step


def _twins(seed, d):
    """Two lists of the same mixtures' parts, to feed by two routes."""
    return _parts(np.random.default_rng(seed), d, SPEC), _parts(np.random.default_rng(seed), d, SPEC)


@pytest.mark.parametrize("weighted", [False, True])
def test_mixtures_stepped_together_get_their_own_sums(weighted):
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 6)) * [1, 2, 3, 1, 0.5, 4] + 1.5
    sw = rng.uniform(0.1, 3.0, 500) if weighted else None
    parts = _parts(rng, 6, SPEC, sw)
    step = DiagEStep(parts)
    step.update(X[:200], 0)
    step.update(X[200:], 200)
    step.to_host()  # the stacked sums split back into the parts
    for part in parts:
        ref = _reference(X, part.weights, part.means, part.precisions_cholesky, part.covariance_type, sw)
        for name in ("nk", "sx", "sxx"):
            assert_allclose(getattr(part, name), getattr(ref, name), rtol=1e-11, atol=1e-9, err_msg=name)
        assert part.log_likelihood == pytest.approx(ref.log_likelihood, rel=1e-12)
        assert part.n_rows == 500 and part.weight_sum == pytest.approx(ref.weight_sum)


def test_mixtures_stepped_together_on_torch_equal_numpy():
    """On a device the parts keep their sums there once settled (the M-step runs there);
    their state, as a checkpoint takes it, is NumPy and equals the NumPy route's."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 5))
    cpu, dev = _twins(2, 5)
    for parts, batch in ((cpu, X), (dev, torch.as_tensor(X))):
        _stepped(parts, batch)
    for a, b in zip(cpu, dev):
        assert isinstance(b.sx, torch.Tensor) and isinstance(b.log_likelihood, float)
        state = b.state_dict()
        for name in ("nk", "sx", "sxx"):
            assert isinstance(state[name], np.ndarray)
            assert_allclose(state[name], getattr(a, name), rtol=1e-12, atol=1e-10)
        assert b.log_likelihood == pytest.approx(a.log_likelihood, rel=1e-13)
        p_a, p_b = m_step(a, 1e-6), m_step(b, 1e-6)  # on the device, for the tensors
        assert all(isinstance(x, torch.Tensor) for x in p_b)
        for x, y in zip(p_a, p_b):
            assert_allclose(y.numpy(), x, rtol=1e-9)


def test_a_mixture_alone_gets_the_same_sums_to_rounding():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 4))
    together, alone = _twins(4, 4)
    _stepped(together, X)
    for part in alone:
        part.update(X, 0)
    for a, b in zip(together, alone):
        assert_allclose(b.sxx, a.sxx, rtol=1e-12)
        p_a, p_b = m_step(a, 1e-6), m_step(b, 1e-6)
        for x, y in zip(p_a, p_b):
            assert_allclose(y, x, rtol=1e-11)


def test_joint_steps_group_by_key_in_order():
    rng = np.random.default_rng(5)
    sw = np.ones(10)
    diag = _parts(rng, 3, [(2, "diag"), (3, "spherical")])
    full = GMMStatsAccumulator(np.ones(2) / 2, np.zeros((2, 3)), np.stack([np.eye(3)] * 2), "full")
    weighted = _parts(rng, 3, [(2, "diag")], sw)
    steps = joint_steps([full, diag[0], weighted[0], diag[1]])
    assert steps[0] is full
    assert isinstance(steps[1], DiagEStep) and steps[1].parts == diag
    assert steps[2] is weighted[0]  # other weights, and alone: its own update
    alone = joint_steps([full, diag[0], weighted[0], diag[1]], alone=True)  # on a device
    assert alone[0] is full and alone[1].parts == diag
    assert isinstance(alone[2], DiagEStep) and alone[2].parts == weighted


def test_a_mixture_alone_on_a_device_keeps_its_sums_and_m_step_there():
    """fit's lone mixture on a device: its own joint step, its M-step on the device, the
    NumPy route's sums and parameters (fed by its own update) to rounding."""
    rng = np.random.default_rng(8)
    X = rng.normal(size=(300, 5)) * [1, 2, 3, 1, 0.5]
    (on_numpy,), (on_torch,) = (_parts(np.random.default_rng(2), 5, [(4, "diag")]) for _ in range(2))
    CombinedAccumulator([0], ["a"], [on_numpy], "pass").update(X, 0)  # NumPy: its own update
    acc = CombinedAccumulator([0], ["a"], [on_torch], "pass")
    acc.update(torch.as_tensor(X), 0)
    assert isinstance(acc._joint[1][0], DiagEStep)
    acc.to_host()
    assert isinstance(on_torch.sx, torch.Tensor)  # still on the device, in its own part
    for a, b in zip(m_step(on_numpy, 1e-6), m_step(on_torch, 1e-6)):
        assert isinstance(b, torch.Tensor)
        assert_allclose(b.numpy(), a, rtol=1e-11)
    assert on_torch.log_likelihood == pytest.approx(on_numpy.log_likelihood, rel=1e-12)


def test_a_shared_pass_ships_without_its_steps():
    rng = np.random.default_rng(6)
    X = rng.normal(size=(50, 3))
    parts = _parts(rng, 3, [(2, "diag"), (3, "diag")])
    acc = CombinedAccumulator([0, 1], ["a", "b"], parts, "pass")
    acc.update(X, 0)
    assert "_joint" in acc.__dict__
    copy = pickle.loads(pickle.dumps(acc))
    assert "_joint" not in copy.__dict__
    assert all("_in_joint_step" not in p.__dict__ for p in copy.parts)
    copy.update(X, 50)  # rebuilt where it is fed
    assert copy.parts[0].n_rows == 100


def _aten_ops_per_batch(n_candidates: int) -> int:
    """PyTorch operations one batch of a shared EM pass of ``n_candidates`` diagonal mixtures costs."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Count.n += 1
            return func(*args, **(kwargs or {}))

    rng = np.random.default_rng(7)
    X = torch.as_tensor(rng.normal(size=(256, 8)))
    parts = _parts(rng, 8, [(5 + i, "diag") for i in range(n_candidates)])
    acc = CombinedAccumulator(list(range(n_candidates)), [str(i) for i in range(n_candidates)], parts, "pass")
    acc.update(X[:128], 0)  # the pass's inputs cross to the device with the first batch
    with Count():
        acc.update(X[128:], 128)
    return Count.n


def test_a_shared_pass_launches_as_many_operations_whatever_its_mixtures():
    """The products, the log-sum-exps and the sums are taken for all the mixtures at once:
    a batch of twenty mixtures costs what a batch of two does, about what one mixture's own
    step costs (some seventy operations; twenty mixtures each on its own: 1,400)."""
    one, two, twenty = _aten_ops_per_batch(1), _aten_ops_per_batch(2), _aten_ops_per_batch(20)
    assert twenty == two, (two, twenty)
    assert twenty < 1.2 * one, (one, twenty)


def test_select_k_style_candidates_equal_separate_fits_to_rounding():
    rng = np.random.default_rng(8)
    X = np.vstack([rng.normal(size=(200, 4)) + c for c in (0, 4, -4)])
    rng.shuffle(X)
    kw = dict(covariance_type="diag", batch_size=100, random_state=0, max_iter=200)
    ests = [StreamingGaussianMixture(k, **kw) for k in (2, 3, 4)]
    plans = [e._make_plan(RowSource(X)) for e in ests]
    combined = drive(CombinedPlan(plans, ["2", "3", "4"]), RowSource(X), 100, backend=Backend("numpy"))
    for est, plan in zip(ests, combined.plans):
        est._finish_plan(plan, RowSource(X))
        ref = StreamingGaussianMixture(est.n_components, **kw).fit(X)
        assert est.n_iter_ == ref.n_iter_
        assert_allclose(est.means_, ref.means_, rtol=1e-10, atol=1e-12)
        assert_allclose(est.covariances_, ref.covariances_, rtol=1e-10)
        assert np.array_equal(est.predict(X), ref.predict(X))


def test_settling_between_batches_changes_no_bit():
    """The stacked sums split back into the parts at a checkpoint and gathered again after it
    add each element in the parts' own order: settled after every batch or once, the same sums."""
    rng = np.random.default_rng(9)
    X = rng.normal(size=(600, 5)) * 3 + 1
    once, each = _twins(10, 5)
    for parts, settle_each in ((once, False), (each, True)):
        step = DiagEStep(parts)
        for lo in range(0, 600, 150):
            step.update(X[lo:lo + 150], lo)
            if settle_each:
                step.to_host()
        step.to_host()
    for a, b in zip(once, each):
        for name in ("nk", "sx", "sxx"):
            assert np.array_equal(getattr(a, name), getattr(b, name)), name
        assert a.log_likelihood == b.log_likelihood and a.n_rows == b.n_rows == 600


def test_parts_resumed_mid_pass_continue_their_sums():
    """Parts whose sums were loaded (a checkpoint mid-pass; their shifts their own arrays) go on
    from those sums: the same as the pass without the interruption, to rounding."""
    rng = np.random.default_rng(11)
    X = rng.normal(size=(400, 4))
    whole, first = _twins(12, 4)
    _stepped(whole, X)
    _stepped(first, X[:250])
    resumed = _parts(np.random.default_rng(12), 4, SPEC)
    for part, done in zip(resumed, first):
        part.load_state_dict(done.state_dict())
        assert not part.shift_is_means
    _stepped(resumed, X[250:], 250)
    for a, b in zip(whole, resumed):
        for name in ("nk", "sx", "sxx"):
            assert_allclose(getattr(b, name), getattr(a, name), rtol=1e-12, atol=1e-10)
        assert b.n_rows == 400 and b.log_likelihood == pytest.approx(a.log_likelihood, rel=1e-13)


def test_float32_batches_keep_the_float64_model_and_shifts():
    """On float32 batches the model is made in float64 and the sums are centred on the float64
    means (a float32 shift would bias them): the sums agree with float64 batches to float32 rounding."""
    rng = np.random.default_rng(13)
    X = (rng.normal(size=(300, 6)) * 2 + 5).astype(np.float32)
    f32, f64 = _twins(14, 6)
    for parts, batch in ((f32, torch.as_tensor(X)), (f64, X.astype(np.float64))):
        step = DiagEStep(parts)
        step.update(batch, 0)
        if parts is f32:
            assert step._dev[2].dtype == torch.float64  # the means, the sums' shifts
        step.to_host()
    for a, b in zip(f32, f64):
        assert_allclose(a.nk, b.nk, rtol=1e-4, atol=1e-4)
        assert_allclose(a.sx, b.sx, rtol=1e-4, atol=1e-3)
        assert_allclose(a.sxx, b.sxx, rtol=1e-4, atol=1e-3)


def test_segment_softmax_on_torch_equals_numpy_and_the_formula():
    from scipy.special import logsumexp, softmax

    from streamclust.engine.arrays import Segments

    rng = np.random.default_rng(15)
    sizes = [1, 4, 2, 7]
    A = rng.normal(size=(9, 14)) * 30
    A[2, 1:5] = -np.inf  # a mixture whose every component has weight 0 for this row
    seg = Segments(sizes)
    out = {}
    for name, M in (("numpy", A.copy()), ("torch", torch.as_tensor(A.copy()))):
        tops = np.zeros((9, 4)) if name == "numpy" else torch.zeros((9, 4), dtype=torch.float64)
        totals = tops * 0
        with np.errstate(invalid="ignore", divide="ignore"):
            seg.softmax_(M, tops, totals)
        out[name] = [np.asarray(a) for a in (M, tops, totals)]
    for a, b in zip(out["numpy"], out["torch"]):
        assert_allclose(b, a, rtol=1e-14, equal_nan=True)
    R, tops, totals = out["numpy"]
    for j, (lo, hi) in enumerate(seg.bounds):
        rows = [i for i in range(9) if i != 2 or j != 1]
        assert_allclose(R[rows, lo:hi], softmax(A[rows, lo:hi], axis=1), rtol=1e-12)
        assert_allclose(np.log(totals[rows, j]) + tops[rows, j], logsumexp(A[rows, lo:hi], axis=1), rtol=1e-13)
    assert tops[2, 1] == 0.0 and np.all(np.isnan(R[2, 1:5]))  # as the per-mixture step: NaN responsibilities


def test_subnormal_responsibilities_are_zeros_on_numpy_and_change_no_sum():
    """exp of a log-responsibility in (-745, -708) is subnormal, which x86 BLAS is slow on:
    the NumPy steps (joint and alone) make such responsibilities zeros; the sums do not change
    (what they add is below the rounding of any sum)."""
    from streamclust.engine.arrays import Segments, flush_subnormal_

    tiny = np.finfo(np.float64).tiny
    R = np.array([[1.0, tiny, tiny / 2, 5e-324, 0.0, np.nan, 1e-300]])
    flush_subnormal_(R)
    assert_allclose(R, [[1.0, tiny, 0.0, 0.0, 0.0, np.nan, 1e-300]], equal_nan=True)
    A = np.array([[0.0, -720.0, -710.0, -3.0], [0.0, -700.0, -730.0, -800.0]])
    tops, totals = np.zeros((2, 1)), np.zeros((2, 1))
    with np.errstate(under="ignore"):
        Segments([4]).softmax_(A, tops, totals)
    assert np.all((A == 0) | (A >= tiny)) and A[0, 1] == A[1, 2] == 0.0 and A[1, 1] > 0

    rng = np.random.default_rng(21)  # well separated components: far rows' responsibilities underflow
    X = np.vstack([rng.normal(size=(200, 3)) * 0.3 + c for c in (0.0, 14.0, 28.0)])
    (alone,), (together,) = (_parts(np.random.default_rng(4), 3, [(5, "diag")]) for _ in range(2))
    for part in (alone, together):
        part.means = np.array([[0.0] * 3, [14.0] * 3, [28.0] * 3, [7.0] * 3, [21.0] * 3])
        part.shift = part.means.copy()
        part.precisions_cholesky = np.full((5, 3), 1 / 0.3)
    with np.errstate(under="ignore"):
        log_resp = gmm_log_resp(X, alone.weights, alone.means, alone.precisions_cholesky, "diag")[1]
    assert np.any((log_resp > -745) & (log_resp < -708.4))  # the case: some would be subnormal
    reference = _reference(X, alone.weights, alone.means, alone.precisions_cholesky, "diag")  # not flushed
    alone.update(X, 0)  # its own step
    _stepped([together], X)  # a joint step of its own, settled into the part
    assert_allclose(alone.nk, reference.nk, rtol=1e-14, atol=1e-250)
    assert_allclose(alone.sx, reference.sx, rtol=1e-14, atol=1e-250)
    assert_allclose(alone.sxx, reference.sxx, rtol=1e-14, atol=1e-250)
    for name in ("nk", "sx", "sxx"):
        assert_allclose(getattr(together, name), getattr(reference, name), rtol=1e-12, atol=1e-9)


def test_m_steps_taken_together_on_a_device_equal_each_mixtures_own():
    """The M-steps of a joint step's mixtures (diagonal and spherical) are taken together on the
    device; each equals the mixture's own M-step (NumPy) to rounding, and a settle in the middle
    of the pass leaves the M-steps of the whole pass's sums."""
    from streamclust.models._gmm_stats import _diagonal_m_step

    rng = np.random.default_rng(16)
    X = rng.normal(size=(400, 5)) * 2
    cpu, dev = _twins(17, 5)
    _stepped(cpu, X)
    step = DiagEStep(dev)
    step.update(torch.as_tensor(X[:100]), 0)
    step.to_host()  # a checkpoint mid-pass
    step.update(torch.as_tensor(X[100:]), 100)
    step.to_host()
    for a, b in zip(cpu, dev):
        assert b._m_steps is not None
        together, alone, ref = m_step(b, 1e-6), _diagonal_m_step(b, 1e-6, b.covariance_type), m_step(a, 1e-6)
        for x, y, z in zip(together, alone, ref):
            assert isinstance(x, torch.Tensor) and x.shape == z.shape
            assert_allclose(x.numpy(), y.numpy(), rtol=1e-14)
            assert_allclose(x.numpy(), z, rtol=1e-9)


def test_a_mixture_failing_its_m_step_among_others_fails_alone():
    """With reg_covar=0 a component no row reaches has a zero variance: that mixture's M-step
    says so (IllDefinedCovarianceError, as alone); the others' are given."""
    from streamclust.models._gmm_stats import IllDefinedCovarianceError

    rng = np.random.default_rng(18)
    X = rng.normal(size=(300, 4))
    parts = _parts(rng, 4, [(3, "diag"), (2, "spherical"), (4, "diag")])
    parts[1].means[1] += 1e4  # far from every row: its responsibilities are 0
    _stepped(parts, torch.as_tensor(X))
    with pytest.raises(IllDefinedCovarianceError, match="zero variance"):
        m_step(parts[1], 0.0)
    for part in (parts[0], parts[2]):
        weights, means, cov, pc = m_step(part, 0.0)
        assert bool(torch.all(cov > 0)) and float(weights.sum()) == pytest.approx(1.0)
