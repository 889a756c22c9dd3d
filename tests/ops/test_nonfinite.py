"""Non-finite inputs in every scan implementation: causal, and NaN as the oracle has it.

The property, per input kind (``selective_scan_ref`` is the oracle; "clean"
is the same implementation run on the same inputs without the injection):

* A value v in {NaN, +Inf, -Inf} injected at token t into one of the per-token
  inputs reaches only its *region*:
    u[b, d, t], delta[b, d, t]   batch b, channel d, tokens t.. (the state carries it)
    z[b, d, t]                   batch b, channel d, token t only (the gate is per token)
    B[b, k, t]                   batch b, every channel, tokens t.. (state k carries it)
    C[b, k, t]                   batch b, every channel, token t only (the readout)
* A NaN in a per-channel parameter, A[d, k], delta_bias[d] or D[d], reaches
  channel d: every batch element, every token.

Checks: outside the region the output is bitwise the clean output (so nothing
before t changes, nor any other batch element or channel). Inside it, for a
NaN the output is NaN exactly where the oracle's is, which is the whole region
(asserted too); for +/-Inf the output is non-finite exactly where the oracle's
is (NaN and Inf are not told apart: which one comes out depends on the order of
operations) and, where finite, within the scan tolerance of the oracle (-Inf in
delta under softplus is a zero step: a finite, ordinary token).

The five implementations: the oracle itself, the chunked PyTorch form, the
fused C kernel, the Triton kernel (interpreted on CPU) and the ONNX standard-op
body run by ONNX Runtime (the body specialized to the attributes, and the one that
reads them, for a model whose scans differ).
"""

import functools
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from numerics import max_rel_error
from ops.test_selective_scan import make_inputs
from ssmprune.exporter.bodies import BODIES
from ssmprune.exporter.op_models import op_model, run_op_model
from ssmprune.exporter.schemas import SCAN_INPUTS, SCAN_OUTPUTS, SELECTIVE_SCAN
from ssmprune.ops import cpu_kernel
from ssmprune.ops.selective_scan import selective_scan_chunked, selective_scan_ref
from ssmprune.ops.triton.selective_scan import selective_scan as selective_scan_triton

TOKEN_INPUTS = ("u", "delta", "z", "B", "C")
CHANNEL_INPUTS = ("A", "delta_bias", "D")
VALUES = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
TOL = 1e-5  # max relative error on the finite part of a region, as test_selective_scan


def run_onnx(u, delta, A, B, C, D=None, z=None, delta_bias=None, gap=None, delta_softplus=False,
             specialized=True):
    """The ONNX body of ``SelectiveScan`` in ONNX Runtime, specialized to the attributes or
    the one that reads them; absent inputs as the exporter gives them
    (exporter/translations.py: zeros for D, delta_bias, gap; u for z, has_z=0)."""
    b, d, l = u.shape
    zeros = torch.zeros(d)
    given_ = dict(u=u, delta=delta, A=A, B=B, C=C, D=zeros if D is None else D,
                  z=u if z is None else z,
                  delta_bias=zeros if delta_bias is None else delta_bias,
                  gap=torch.zeros(b, l, dtype=torch.int64) if gap is None else gap)
    inputs = {name: given_[name].numpy() for name in SCAN_INPUTS}
    attributes = dict(delta_softplus=int(delta_softplus), has_z=int(z is not None))
    body = BODIES[SELECTIVE_SCAN]
    model = op_model(SELECTIVE_SCAN, inputs, SCAN_OUTPUTS, attributes,
                     body if specialized else lambda opset, _: body(opset, None))
    return torch.from_numpy(run_op_model(model, inputs)[0])


def run_triton(*args, **kwargs):
    """The Triton kernel in its interpreter on CPU tensors (TRITON_INTERPRET is read at
    each launch; set for the call only, as the ``monkeypatch.setenv`` of the kernel tests).
    The interpreter computes with numpy, which warns of every NaN it makes: expected here."""
    with pytest.MonkeyPatch.context() as mp, np.errstate(invalid="ignore", over="ignore"):
        mp.setenv("TRITON_INTERPRET", "1")
        return selective_scan_triton(*args, **kwargs)


IMPLEMENTATIONS = {
    "ref": selective_scan_ref,
    "chunked": selective_scan_chunked,
    "fused": cpu_kernel.selective_scan_fused,
    "triton": run_triton,
    "onnx": run_onnx,
    "onnx_generic": functools.partial(run_onnx, specialized=False),
}
# The interpreted Triton kernel costs about 0.2 s a call, the others milliseconds.
MAX_EXAMPLES = {"triton": 6}
MAX_LEN = {"triton": 20}


def examples(impl: str) -> settings:
    """The profile's settings, with fewer examples where a call is slow."""
    return settings(settings.default, max_examples=min(settings.default.max_examples,
                                                       MAX_EXAMPLES.get(impl, 10**9)))


def scan_cases(impl: str, name: str):
    """Inputs (make_inputs flags) with ``name`` present: shapes that reach the C kernel's
    16-channel AVX-512 block (d >= 16, n = 16) and its partial blocks and tiles (64 tokens)."""
    flags = {k: st.booleans() for k in ("with_d", "with_z", "with_bias", "with_gap",
                                         "softplus")}
    flag = {"D": "with_d", "z": "with_z", "delta_bias": "with_bias"}.get(name)
    if flag:
        flags[flag] = st.just(True)
    return st.fixed_dictionaries(dict(
        shape=st.tuples(st.integers(1, 2), st.one_of(st.just(16), st.integers(1, 33)),
                        st.integers(1, MAX_LEN.get(impl, 70)),
                        st.one_of(st.just(16), st.integers(1, 17))),
        flags=st.fixed_dictionaries(flags),
        seed=st.integers(0, 2**16),
    ))


def region_of(name: str, index: tuple, shape: tuple) -> torch.Tensor:
    """(b d l) bool: the outputs an injection at ``index`` of input ``name`` may reach."""
    b, d, l, _ = shape
    region = torch.zeros(b, d, l, dtype=torch.bool)
    if name in ("u", "delta"):
        region[index[0], index[1], index[2]:] = True
    elif name == "z":
        region[index] = True
    elif name == "B":
        region[index[0], :, index[2]:] = True
    elif name == "C":
        region[index[0], :, index[2]] = True
    else:  # A[d, k], delta_bias[d], D[d]
        region[:, index[0]] = True
    return region


def check_injection(impl: str, kw: dict, name: str, index: tuple, value: float, shape: tuple):
    """The property of the module docstring for one injection."""
    run = IMPLEMENTATIONS[impl]
    clean = run(**kw)
    assert torch.isfinite(clean).all()
    dirty_kw = {**kw, name: kw[name].clone()}
    dirty_kw[name][index] = value
    actual = run(**dirty_kw)
    expected = selective_scan_ref(**dirty_kw)
    region = region_of(name, index, shape)
    where = f"{name}{list(index)} = {value}"

    outside = ~region
    assert torch.equal(actual[outside], clean[outside]), (
        f"{impl}: {where} changed outputs outside its region, first at "
        f"{torch.nonzero(actual.ne(clean) & outside)[0].tolist()} (b d t)")
    if math.isnan(value):
        assert torch.isnan(expected[region]).all()  # the oracle: the whole region is NaN
        missing = region & ~torch.isnan(actual)
        assert not missing.any(), (
            f"{impl}: {where} gives non-NaN outputs where the oracle has NaN, first at "
            f"{torch.nonzero(missing)[0].tolist()} (b d t): {actual[missing][:4].tolist()}")
    else:
        finite, want_finite = torch.isfinite(actual), torch.isfinite(expected)
        assert torch.equal(finite[region], want_finite[region]), (
            f"{impl}: {where}: finite outputs differ from the oracle's, first at "
            f"{torch.nonzero(finite.ne(want_finite) & region)[0].tolist()} (b d t)")
        both = region & want_finite
        assert max_rel_error(actual[both], expected[both]) <= TOL, where


def skip_unavailable(impl: str):
    if impl == "fused" and cpu_kernel.load() is None:
        pytest.skip("no C compiler: the fused kernel is not built")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", TOKEN_INPUTS)
def test_nonfinite_token_reaches_only_later_outputs(impl, name):
    skip_unavailable(impl)

    @examples(impl)
    @given(case=scan_cases(impl, name), value=st.sampled_from(list(VALUES)), data=st.data())
    def prop(case, value, data):
        b, d, l, n = shape = case["shape"]
        kw = make_inputs(*shape, seed=case["seed"], **case["flags"])
        rows = n if name in ("B", "C") else d
        index = (data.draw(st.integers(0, b - 1)), data.draw(st.integers(0, rows - 1)),
                 data.draw(st.integers(0, l - 1)))
        check_injection(impl, kw, name, index, VALUES[value], shape)

    prop()


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("name", CHANNEL_INPUTS)
def test_nan_parameter_reaches_only_its_channel(impl, name):
    skip_unavailable(impl)

    @examples(impl)
    @given(case=scan_cases(impl, name), data=st.data())
    def prop(case, data):
        b, d, l, n = shape = case["shape"]
        kw = make_inputs(*shape, seed=case["seed"], **case["flags"])
        index = (data.draw(st.integers(0, d - 1)),)
        if name == "A":
            index += (data.draw(st.integers(0, n - 1)),)
        check_injection(impl, kw, name, index, math.nan, shape)

    prop()


@pytest.mark.parametrize("name, index", [("delta", (0, 3, 5)), ("delta_bias", (3,)),
                                          ("A", (3, 0))])
def test_fused_kernel_nan_step_or_decay_is_nan(name, index):
    """The review's case at Vim's state size (one full AVX-512 block where the CPU has it):
    a NaN step or decay must not come out finite through softplus or the exp2 clamp."""
    skip_unavailable("fused")
    kw = make_inputs(1, 16, 8, 16, with_gap=False)
    kw[name] = kw[name].clone()
    kw[name][index] = math.nan
    y = cpu_kernel.selective_scan_fused(**kw)
    assert torch.isnan(y[0, 3, 5 if name == "delta" else 0:]).all()
    assert torch.equal(torch.isnan(y), torch.isnan(selective_scan_ref(**kw)))


def test_onnx_runner_gives_absent_inputs_as_the_exporter():
    """``run_onnx`` maps absent D, z, delta_bias and gap as the exporter does, so the ONNX
    body sees the same scan as the others."""
    kw = make_inputs(2, 5, 7, 3, with_d=False, with_z=False, with_bias=False, with_gap=False)
    assert max_rel_error(run_onnx(**kw), selective_scan_ref(**kw)) <= TOL
