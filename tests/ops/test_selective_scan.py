"""The scan implementations against the sequential oracle, gap included."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from numerics import max_rel_error
from ssmprune.ops import cpu_kernel
from ssmprune.ops.selective_scan import (
    selective_scan,
    selective_scan_chunked,
    selective_scan_ref,
)


def make_inputs(b, d, l, n, *, seed=0, with_d=True, with_z=True, with_bias=True,
                with_gap=True, softplus=True, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=1.0):
        return torch.randn(*shape, generator=g) * scale

    delta = r(b, d, l, scale=0.5)
    if not softplus:  # without softplus the caller supplies positive steps, as in mamba_ssm
        delta = delta.abs()
    return dict(
        u=r(b, d, l).to(dtype),
        delta=delta.to(dtype),
        A=-torch.exp(r(d, n, scale=0.5)),
        B=r(b, n, l).to(dtype),
        C=r(b, n, l).to(dtype),
        D=r(d) if with_d else None,
        z=r(b, d, l).to(dtype) if with_z else None,
        delta_bias=(r(d, scale=0.5) if softplus else r(d, scale=0.5).abs()) if with_bias else None,
        gap=torch.randint(0, 4, (b, l), generator=g) if with_gap else None,
        delta_softplus=softplus,
    )


shapes = st.tuples(st.integers(1, 3), st.integers(1, 40), st.integers(1, 70), st.integers(1, 17))
flags = st.fixed_dictionaries({k: st.booleans() for k in
                               ("with_d", "with_z", "with_bias", "with_gap", "softplus")})

IMPLEMENTATIONS = {"chunked": selective_scan_chunked, "op": selective_scan}
if cpu_kernel.load() is not None:
    IMPLEMENTATIONS["fused"] = cpu_kernel.selective_scan_fused


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@given(shape=shapes, flag=flags, seed=st.integers(0, 2**16))
def test_matches_sequential_oracle(impl, shape, flag, seed):
    kw = make_inputs(*shape, seed=seed, **flag)
    expected = selective_scan_ref(**kw)
    actual = IMPLEMENTATIONS[impl](**kw)
    assert actual.shape == expected.shape and actual.dtype == expected.dtype
    assert max_rel_error(actual, expected) <= 1e-5


def test_fused_kernel_builds_here():
    """On these machines a C compiler exists, so the fast path must be the one used."""
    assert cpu_kernel.load() is not None


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs_keep_fp32_state(dtype):
    kw = make_inputs(2, 24, 33, 16, dtype=dtype)
    expected = selective_scan_ref(**{k: (v.float() if torch.is_tensor(v) and v.is_floating_point()
                                         else v) for k, v in kw.items()})
    actual = selective_scan(**kw)
    assert actual.dtype == dtype
    assert max_rel_error(actual, expected) <= 1e-2


def test_zero_gap_is_the_ordinary_scan():
    kw = make_inputs(2, 8, 20, 4)
    dense = selective_scan_ref(**{**kw, "gap": None})
    assert torch.equal(selective_scan_ref(**{**kw, "gap": torch.zeros(2, 20, dtype=torch.int32)}),
                       dense)


def test_gap_decays_state_with_default_step():
    """One token, then a token after a gap of g: the state decays by exp((dt + g*dt0) A)."""
    d, n = 3, 2
    u = torch.tensor([[[1.0, 0.0]] * d])
    delta = torch.full((1, d, 2), 0.3)
    A = -torch.ones(d, n)
    B = torch.ones(1, n, 2)
    C = torch.ones(1, n, 2)
    bias = torch.full((d,), 0.2)
    gap = torch.tensor([[0, 5]])
    y = selective_scan_ref(u, delta, A, B, C, delta_bias=bias, gap=gap, delta_softplus=True)
    dt = torch.nn.functional.softplus(torch.tensor(0.5))
    dt0 = torch.nn.functional.softplus(torch.tensor(0.2))
    h0 = dt * 1.0
    expected_second = n * h0 * torch.exp(-(dt + 5 * dt0))
    torch.testing.assert_close(y[0, :, 1], expected_second.expand(d), rtol=1e-6, atol=0)
    torch.testing.assert_close(y[0, :, 0], (n * h0).expand(d), rtol=1e-6, atol=0)


def test_long_sequences_with_large_steps_stay_finite():
    kw = make_inputs(1, 16, 300, 16)
    kw["delta"] = kw["delta"] * 20
    kw["gap"] = kw["gap"] * 50
    expected = selective_scan_ref(**kw)
    for impl in IMPLEMENTATIONS.values():
        actual = impl(**kw)
        assert torch.isfinite(actual).all()
        assert max_rel_error(actual, expected) <= 1e-5


def test_op_registration_and_fake():
    kw = make_inputs(2, 16, 9, 4)
    torch.library.opcheck(torch.ops.ssmprune.selective_scan.default, (), kw,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("bad, message", [
    ({"A": torch.zeros(5, 4)}, "A must have shape"),
    ({"gap": torch.zeros(2, 9)}, "gap must be int32 or int64"),
    ({"B": torch.zeros(2, 4, 8)}, "B must have shape"),
])
def test_shape_errors(bad, message):
    kw = {**make_inputs(2, 16, 9, 4), **bad}
    with pytest.raises(ValueError, match=message):
        selective_scan_ref(**kw)


def test_gradients_match_the_oracle():
    kw = make_inputs(2, 20, 13, 5, seed=4)
    names = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
    grads = {}
    for impl in (selective_scan_ref, selective_scan):
        leaves = {n: kw[n].clone().requires_grad_(True) for n in names}
        out = impl(**{**kw, **leaves})
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads[impl] = {n: leaves[n].grad for n in names}
    for n in names:
        assert max_rel_error(grads[selective_scan][n], grads[selective_scan_ref][n]) <= 1e-4, n


@pytest.mark.parametrize("flag", [
    dict(),
    dict(with_z=False, with_gap=False),
    dict(with_d=False, with_bias=False, softplus=False),
])
def test_fused_backward_matches_autograd_of_oracle(flag):
    if cpu_kernel.load() is None:
        pytest.skip("no C compiler: the fused kernel is not built")
    kw = make_inputs(3, 37, 29, 16, seed=7, **flag)
    names = [n for n in ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")
             if kw[n] is not None]
    leaves = {n: kw[n].clone().requires_grad_(True) for n in names}
    out = selective_scan_ref(**{**kw, **leaves})
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    want = torch.autograd.grad(out, [leaves[n] for n in names], grad_out)
    got = cpu_kernel.selective_scan_fused_backward(grad_out, **kw)
    got = dict(zip(("u", "delta", "A", "B", "C", "D", "z", "delta_bias"), got))
    for n, w in zip(names, want):
        assert max_rel_error(got[n], w) <= 1e-4, n
