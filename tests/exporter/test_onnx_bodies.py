"""Each op's ONNX body alone, run by ONNX Runtime, against its reference (REFERENCES)."""

import functools

import numpy as np
import onnx
import pytest

from ssmprune.exporter.bodies import BODIES, selective_scan_function, token_gather_function
from ssmprune.exporter.op_models import body_node_count, op_model, run_op_model
from ssmprune.exporter.schemas import GATHER_OUTPUTS, SCAN_OUTPUTS, SELECTIVE_SCAN, TOKEN_GATHER
from ssmprune.parity.references import REFERENCES


def max_rel(actual: np.ndarray, expected: np.ndarray) -> float:
    if expected.size == 0:
        return 0.0
    scale = max(float(np.abs(expected.astype(np.float64)).max()), 1e-12)
    return float(np.abs(actual.astype(np.float64) - expected.astype(np.float64)).max()) / scale


def assert_matches_ref(op_type, inputs, attributes, body, outputs, rtol=1e-5, opset=20):
    """Run ``op_type`` with ``body`` in ONNX Runtime and compare with ``REFERENCES[op_type]``."""
    model = op_model(op_type, inputs, outputs, attributes, body, opset)
    onnx.checker.check_model(model, full_check=True)
    actual = run_op_model(model, inputs)
    expected = REFERENCES[op_type](*inputs.values(), **attributes)
    assert len(actual) == len(expected)
    for name, a, e in zip(outputs, actual, expected):
        assert a.shape == e.shape, name
        assert a.dtype == e.dtype, name
        if np.issubdtype(e.dtype, np.integer):
            np.testing.assert_array_equal(a, e, err_msg=name)
        else:
            assert np.isfinite(a).all(), name
            assert max_rel(a, e) <= rtol, (name, max_rel(a, e))


def scan_inputs(b, d, length, n, gaps=True, seed=0, dtype=np.float32, gap_dtype=np.int64,
                step_scale=0.5):
    rng = np.random.default_rng(seed)
    f = functools.partial(rng.standard_normal, dtype=np.float32)
    return {
        "u": f((b, d, length)).astype(dtype),
        "delta": (f((b, d, length)) * step_scale).astype(dtype),
        "A": -np.exp(f((d, n))),
        "B": f((b, n, length)).astype(dtype),
        "C": f((b, n, length)).astype(dtype),
        "D": f((d,)),
        "z": f((b, d, length)).astype(dtype),
        "delta_bias": f((d,)) * 0.5,
        "gap": (rng.integers(0, 4, (b, length)) if gaps else np.zeros((b, length))
                ).astype(gap_dtype),
    }


SHAPES = [(1, 1, 1, 1), (2, 3, 5, 4), (1, 4, 16, 3), (2, 5, 17, 2), (1, 3, 40, 5),
          (2, 8, 197, 16)]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("gaps", [False, True], ids=["nogap", "gap"])
@pytest.mark.parametrize("softplus, has_z", [(1, 1), (1, 0), (0, 1), (0, 0)])
def test_selective_scan_body(shape, gaps, softplus, has_z):
    inputs = scan_inputs(*shape, gaps=gaps)
    if not softplus:  # raw steps must be non-negative without softplus
        for name in ("delta", "delta_bias"):
            inputs[name] = np.abs(inputs[name])
    assert_matches_ref(SELECTIVE_SCAN, inputs, dict(delta_softplus=softplus, has_z=has_z),
                       BODIES[SELECTIVE_SCAN], SCAN_OUTPUTS)


@pytest.mark.parametrize("length", [1, 2, 31, 65])
def test_selective_scan_body_lengths(length):
    inputs = scan_inputs(2, 3, length, 4, seed=length)
    assert_matches_ref(SELECTIVE_SCAN, inputs, dict(delta_softplus=1), selective_scan_function,
                       SCAN_OUTPUTS)


def test_selective_scan_body_large_steps_stay_finite():
    """Steps big enough that the state decays to zero, and softplus of large steps:
    no inf/NaN."""
    inputs = scan_inputs(1, 4, 70, 16, step_scale=30.0)
    inputs["A"] = inputs["A"] * 50
    assert_matches_ref(SELECTIVE_SCAN, inputs, dict(delta_softplus=1), BODIES[SELECTIVE_SCAN],
                       SCAN_OUTPUTS)


@pytest.mark.parametrize("opset", [18, 23])
def test_selective_scan_body_opsets(opset):
    inputs = scan_inputs(2, 3, 20, 4, gap_dtype=np.int32)
    assert_matches_ref(SELECTIVE_SCAN, inputs, dict(delta_softplus=1), BODIES[SELECTIVE_SCAN],
                       SCAN_OUTPUTS, opset=opset)


def test_selective_scan_body_fp16():
    inputs = scan_inputs(2, 4, 33, 8, dtype=np.float16)
    assert_matches_ref(SELECTIVE_SCAN, inputs, dict(delta_softplus=1), BODIES[SELECTIVE_SCAN],
                       SCAN_OUTPUTS, rtol=2e-3)


@pytest.mark.parametrize("softplus, has_z, nodes", [(1, 1, 37), (1, 0, 34), (0, 1, 35),
                                                    (0, 0, 32)])
def test_selective_scan_body_is_a_small_graph(softplus, has_z, nodes):
    # The chunked, unrolled body this replaced had 404 nodes (benchmarks/RESULTS.md); a
    # TensorRT build and an ONNX Runtime session pay for each of them, 48 times in Vim-S
    # (softplus and gate). Issue 12 asks for at most 40.
    body = selective_scan_function(20, dict(delta_softplus=softplus, has_z=has_z))
    assert body_node_count(body) == nodes


def test_selective_scan_body_refuses_an_empty_sequence_without_dying():
    # ONNX Runtime 1.32 dies of SIGFPE (the whole process) on a Scan of length 0 along a
    # non-zero axis; along axis 0 it raises. Exports never have l = 0, a corrupted file can.
    inputs = scan_inputs(1, 3, 0, 2)
    model = op_model(SELECTIVE_SCAN, inputs, SCAN_OUTPUTS, dict(delta_softplus=1),
                     BODIES[SELECTIVE_SCAN])
    with pytest.raises(Exception, match="Scan"):
        run_op_model(model, inputs)


def gather_inputs(b, m, tail=(6,), seed=0, ties=False, dtype=np.float32):
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 3, (b, m)) if ties else rng.standard_normal((b, m))
    scores = scores.astype(np.float32)
    positions = np.stack([np.sort(rng.choice(4 * m, m, replace=False)) for _ in range(b)])
    return {"scores": scores, "positions": positions.astype(np.int64),
            "x": rng.standard_normal((b, m, *tail)).astype(dtype)}


@pytest.mark.parametrize("m, k, protect, insert_at", [
    (10, 4, -1, 0), (10, 10, -1, 0), (11, 6, 5, 3), (11, 6, 0, 0), (11, 6, 10, 6), (9, 8, 4, 4),
    (2, 1, -1, 0), (3, 2, 1, 1)])
@pytest.mark.parametrize("ties", [False, True], ids=["distinct", "ties"])
def test_token_gather_body(m, k, protect, insert_at, ties):
    inputs = gather_inputs(3, m, ties=ties, seed=m + k)
    assert_matches_ref(TOKEN_GATHER, inputs, dict(k=k, protect=protect, insert_at=insert_at),
                       token_gather_function, GATHER_OUTPUTS)


def test_token_gather_body_all_ties_keep_earliest():
    inputs = gather_inputs(2, 9)
    inputs["scores"][:] = 1.0
    model = op_model(TOKEN_GATHER, inputs, GATHER_OUTPUTS, dict(k=4, protect=4, insert_at=2),
                     token_gather_function)
    kept, _ = run_op_model(model, inputs)
    np.testing.assert_array_equal(kept, inputs["positions"][:, [0, 1, 4, 2, 3]])


def test_token_gather_body_minus_infinity_scores_never_pick_the_protected_token():
    inputs = gather_inputs(1, 4)
    inputs["scores"][:] = [[1.0, 5.0, -np.inf, -np.inf]]
    assert_matches_ref(TOKEN_GATHER, inputs, dict(k=3, protect=1, insert_at=1),
                       token_gather_function, GATHER_OUTPUTS)


@pytest.mark.parametrize("tail, dtype", [((), np.float32), ((2, 3), np.float32),
                                         ((5,), np.float16)])
def test_token_gather_body_shapes_and_dtypes(tail, dtype):
    inputs = gather_inputs(2, 7, tail=tail, dtype=dtype)
    assert_matches_ref(TOKEN_GATHER, inputs, dict(k=3, protect=3, insert_at=1),
                       token_gather_function, GATHER_OUTPUTS)


@pytest.mark.parametrize("op_type", sorted(BODIES))
def test_every_body_has_a_reference(op_type):
    assert op_type in REFERENCES
