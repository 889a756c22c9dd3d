"""The Triton kernels against the reference ops.

On CPU the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set per
test by the ``interpreter`` fixture so it never leaks into other modules) and
are compiled for sm_90 ahead of time, which needs no GPU. Tests that need the
compiled kernels to run carry ``requires_cuda``.
"""

import pytest
import torch

from numerics import max_rel_error
from ops.test_selective_scan import make_inputs
from ssmprune.models import create_model
from ssmprune.ops.selective_scan import selective_scan_ref
from ssmprune.ops.token_gather import token_gather_ref
from ssmprune.ops import triton as triton_plugins
from ssmprune.ops.triton import aot
from ssmprune.ops.triton.runtime import Launch
from ssmprune.ops.triton.selective_scan import KERNEL as SCAN_KERNEL
from ssmprune.ops.triton.selective_scan import selective_scan_launch
from ssmprune.ops.triton.token_gather import KERNEL as GATHER_KERNEL
from ssmprune.ops.triton.token_gather import token_gather_launch
from ssmprune.pruning import PruneConfig

requires_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: compiled Triton kernels run on CUDA only")

# Max relative error against the fp32 reference on the same rounded inputs.
# fp16: the output's own rounding (half an ulp, 2^-11) dominates. bf16: Triton
# 3.9's interpreter truncates fp32 -> bf16 (up to a whole ulp, 2^-7) where the
# GPU rounds to nearest.
SCAN_TOL = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}
DTYPES = pytest.mark.parametrize("dtype", list(SCAN_TOL), ids=lambda t: str(t)[len("torch."):])

NO_OPTIONALS = dict(with_d=False, with_z=False, with_bias=False, with_gap=False, softplus=False)

# id: ((b, d, l, n), make_inputs flags, block_d). The interpreter's default
# block covers up to 64 channels; block_d splits d into several programs, the
# last one partly masked. The kernel's chunk is 8 tokens.
SCAN_CASES = {
    "b1_l1": ((1, 8, 1, 8), {}, None),
    "b1_odd_l": ((1, 16, 7, 16), {}, None),
    "b5_l_not_chunk_multiple": ((5, 24, 33, 8), {}, 16),
    "b5_long": ((5, 40, 70, 16), {}, None),
    "l_chunk_multiple": ((2, 32, 64, 16), {}, None),
    "n_not_power_of_two": ((3, 17, 19, 5), {}, 8),
    "no_optionals": ((2, 24, 33, 16), NO_OPTIONALS, None),
    "gap_no_bias": ((2, 16, 21, 16), dict(with_bias=False), None),
    "gap_no_bias_no_softplus": ((2, 16, 21, 8), dict(with_bias=False, softplus=False), None),
    "z_only": ((5, 16, 13, 16), dict(with_d=False, with_bias=False, with_gap=False), None),
    "d_only": ((1, 16, 13, 8), dict(with_z=False, with_gap=False), None),
    "no_softplus": ((2, 24, 17, 16), dict(softplus=False), 8),
}


@pytest.fixture
def interpreter(monkeypatch):
    """Run the Triton kernels in the interpreter, on CPU tensors, for one test."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")


@pytest.fixture
def compiled(monkeypatch):
    """Run the compiled Triton kernels, whatever the environment says."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)


def upcast(kw):
    return {k: v.float() if torch.is_tensor(v) and v.is_floating_point() else v
            for k, v in kw.items()}


def assert_scan_matches_ref(kw, dtype, **launch):
    expected = selective_scan_ref(**upcast({k: v.cpu() if torch.is_tensor(v) else v
                                            for k, v in kw.items()}))
    actual = triton_plugins.selective_scan(**kw, **launch)
    assert actual.shape == expected.shape and actual.dtype == dtype
    err = max_rel_error(actual.cpu(), expected)
    assert err <= SCAN_TOL[dtype], err


# -- selective scan, interpreted ----------------------------------------------------------

@pytest.mark.usefixtures("interpreter")
@DTYPES
@pytest.mark.parametrize("case", SCAN_CASES)
def test_scan_matches_reference(case, dtype):
    shape, flags, block_d = SCAN_CASES[case]
    kw = make_inputs(*shape, seed=len(case), dtype=dtype, **flags)
    assert_scan_matches_ref(kw, dtype, block_d=block_d)


@pytest.mark.usefixtures("interpreter")
def test_scan_reads_any_strides_and_int32_gaps():
    kw = make_inputs(3, 24, 19, 16, seed=3)
    expected = selective_scan_ref(**kw)

    def strided(t):
        """Same values, other memory layout: last axis first, then a transposed view."""
        return t.movedim(-1, 0).contiguous().movedim(0, -1)

    views = {k: strided(kw[k]) for k in ("u", "delta", "B", "C", "z", "A")}
    views["gap"] = kw["gap"].t().contiguous().t().to(torch.int32)
    views["D"] = torch.stack((kw["D"], kw["D"]), dim=1)[:, 0]
    views["delta_bias"] = torch.stack((kw["delta_bias"],) * 3, dim=1)[:, 1]
    assert views["u"].stride() != kw["u"].stride() and views["D"].stride() == (2,)
    actual = triton_plugins.selective_scan(**{**kw, **views}, block_d=16)
    assert max_rel_error(actual, expected) <= SCAN_TOL[torch.float32]


@pytest.mark.usefixtures("interpreter")
def test_scan_long_sequence_with_large_steps_stays_finite():
    kw = make_inputs(1, 16, 150, 16)
    kw["delta"] = kw["delta"] * 20
    kw["gap"] = kw["gap"] * 50
    actual = triton_plugins.selective_scan(**kw)
    assert torch.isfinite(actual).all()
    assert max_rel_error(actual, selective_scan_ref(**kw)) <= SCAN_TOL[torch.float32]


@pytest.mark.usefixtures("interpreter")
def test_scan_of_empty_sequence():
    kw = make_inputs(2, 8, 0, 4)
    assert triton_plugins.selective_scan(**kw).shape == (2, 8, 0)


@pytest.mark.usefixtures("interpreter")
def test_scan_rejects_bad_shapes_like_the_op():
    kw = {**make_inputs(2, 16, 9, 4), "B": torch.zeros(2, 4, 8)}
    with pytest.raises(ValueError, match="B must have shape"):
        triton_plugins.selective_scan(**kw)


@pytest.mark.usefixtures("compiled")
def test_cpu_tensors_need_the_interpreter():
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        triton_plugins.selective_scan(**make_inputs(1, 8, 3, 4))


# -- token gather, interpreted -------------------------------------------------------------

# (b, m, k, protect, insert_at): Vim's class token in the middle or first,
# none protected, more tokens than one ranking block (64), edge positions.
GATHER_CASES = [
    (1, 5, 2, 2, 1),
    (5, 60, 30, 30, 15),
    (2, 60, 59, 0, 0),
    (3, 30, 7, -1, 0),
    (1, 197, 98, 98, 49),
    (2, 9, 8, 8, 8),
    (1, 1, 1, -1, 0),
]


def gather_inputs(b, m, *, seed=0, score_dtype=torch.float32):
    """Scores with ties, positions, and tensors of several dtypes and layouts."""
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(b, m, generator=g)
    scores[:, ::3] = scores[:, :1].clone()  # ties: the earlier token must win
    positions = torch.randint(0, 1000, (b, m), generator=g)
    tensors = [
        torch.randn(b, m, 16, generator=g),
        torch.randn(b, m, 4, 3, generator=g).double(),
        torch.randn(b, 5, m, generator=g).half().transpose(1, 2),  # rows not contiguous
        torch.randint(0, 100, (b, 2 * m, 3), generator=g)[:, ::2],  # tokens strided
        torch.rand(b, m, generator=g) > 0.5,
    ]
    return scores.to(score_dtype), positions, tensors


def assert_gather_matches_ref(scores, positions, tensors, k, protect, insert_at, **launch):
    got = triton_plugins.token_gather(scores, positions, tensors, k, protect, insert_at, **launch)
    want = token_gather_ref(scores.cpu(), positions.cpu(), [t.cpu() for t in tensors],
                            k, protect, insert_at)
    assert len(got) == len(want)
    for a, w in zip(got, want):
        assert a.dtype == w.dtype and torch.equal(a.cpu(), w)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("block_c", [None, 4])
@pytest.mark.parametrize("b, m, k, protect, insert_at", GATHER_CASES)
def test_gather_matches_reference(b, m, k, protect, insert_at, block_c):
    scores, positions, tensors = gather_inputs(b, m, seed=m + k)
    assert_gather_matches_ref(scores, positions, tensors, k, protect, insert_at, block_c=block_c)


@pytest.mark.usefixtures("interpreter")
@pytest.mark.parametrize("score_dtype", [torch.float16, torch.bfloat16])
def test_gather_low_precision_scores(score_dtype):
    scores, positions, tensors = gather_inputs(3, 40, score_dtype=score_dtype)
    assert_gather_matches_ref(scores, positions, tensors, 20, 0, 10)


@pytest.mark.usefixtures("interpreter")
def test_gather_ranks_infinities_and_nan_like_torch_sort():
    """NaN ranks first and ties go to the earlier token, as in a stable descending
    torch.sort. With a protected token the expectation is built from the
    unprotected reference on the other tokens, because the reference marks the
    protected token with -inf and so lets it compete with free -inf tokens."""
    scores = torch.tensor([[0.5, float("nan"), -float("inf"), float("inf"), 0.5, float("nan"),
                            -float("inf"), 2.0]])
    positions = torch.arange(10, 18)[None]
    protect = 4
    free = [i for i in range(8) if i != protect]
    for k in range(1, 8):
        assert_gather_matches_ref(scores, positions, [], k, -1, 0)
        kept, = token_gather_ref(scores[:, free], positions[:, free], [], k)
        insert_at = k // 2
        expected = torch.cat((kept[:, :insert_at], positions[:, protect:protect + 1],
                              kept[:, insert_at:]), dim=1)
        got, = triton_plugins.token_gather(scores, positions, [], k, protect, insert_at)
        assert torch.equal(got, expected)


@pytest.mark.usefixtures("interpreter")
def test_gather_of_positions_only():
    scores, positions, _ = gather_inputs(2, 33)
    assert_gather_matches_ref(scores, positions, [], 10, 16, 5)


# -- registration and ahead-of-time compilation (CPU) -----------------------------------

@pytest.mark.parametrize("op", ["ssmprune::selective_scan", "ssmprune::token_gather"])
def test_kernels_are_the_ops_cuda_implementations(op):
    assert torch._C._dispatch_has_kernel_for_dispatch_key(op, "CUDA")


def test_entry_parameters_of_a_ptx_entry():
    ptx = """
.visible .entry k(
	.param .u64 .ptr .global .align 1 k_param_0,
	.param .u32 k_param_1,
	.param .u64 .ptr .global .align 1 k_param_2
)
{
	ld.param.u64 	%rd1, [k_param_0];
	ld.param.u32 	%r1, [k_param_1];
}"""
    params = aot.entry_parameters(ptx)
    assert [(p.name, p.ptx_type, p.is_pointer, p.used) for p in params] == [
        ("k_param_0", ".u64", True, True),
        ("k_param_1", ".u32", False, True),
        ("k_param_2", ".u64", True, False),
    ]


def assert_only_idle_scratch_pointers_hidden(compiled):
    """What an AOT plugin needs to know: Triton 3.9 appends two scratch pointers
    after the declared arguments, and this kernel never reads them (no scratch)."""
    entry = aot.entry_parameters(compiled.asm["ptx"])
    hidden = aot.hidden_parameters(compiled)
    assert len(entry) == aot.declared_parameter_count(compiled) + len(hidden)
    assert len(hidden) == 2 and all(p.is_pointer and not p.used for p in hidden)
    assert compiled.metadata.global_scratch_size == 0
    assert compiled.metadata.profile_scratch_size == 0
    assert compiled.asm["cubin"]


@pytest.mark.parametrize("dtype, flags", [
    (torch.float32, {}), (torch.float16, {}), (torch.bfloat16, {}), (torch.float32, NO_OPTIONALS),
], ids=["float32", "float16", "bfloat16", "float32_no_optionals"])
def test_scan_compiles_for_sm90(dtype, flags):
    kw = make_inputs(2, 768, 197, 16, dtype=dtype, **flags)
    out = torch.empty_like(kw["u"])
    compiled = aot.compile_for_cuda(selective_scan_launch(*kw.values(), out))
    assert compiled.metadata.target.arch == 90
    assert_only_idle_scratch_pointers_hidden(compiled)


@pytest.mark.parametrize("num_tensors", [0, 2])
def test_gather_compiles_for_sm90(num_tensors):
    scores, positions, tensors = gather_inputs(2, 197)
    rows = [t.reshape(2, 197, -1) for t in tensors[:num_tensors]]
    outs = [r.new_empty(2, 99, r.shape[2]) for r in rows]
    launch = token_gather_launch(scores, positions, rows, 98, 0, 49,
                                 positions.new_empty(2, 99), outs)
    assert_only_idle_scratch_pointers_hidden(aot.compile_for_cuda(launch))


# -- compiled on a GPU ----------------------------------------------------------------------

def to_cuda(kw):
    return {k: v.cuda() if torch.is_tensor(v) else v for k, v in kw.items()}


@requires_cuda
@pytest.mark.usefixtures("compiled")
@DTYPES
@pytest.mark.parametrize("case", SCAN_CASES)
def test_compiled_scan_matches_reference(case, dtype):
    shape, flags, _ = SCAN_CASES[case]
    kw = make_inputs(*shape, seed=len(case), dtype=dtype, **flags)
    assert_scan_matches_ref(to_cuda(kw), dtype)


@requires_cuda
@pytest.mark.usefixtures("compiled")
def test_compiled_scan_at_vim_s_size():
    kw = make_inputs(8, 768, 197, 16, seed=1)
    assert_scan_matches_ref(to_cuda(kw), torch.float32)


@requires_cuda
@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("b, m, k, protect, insert_at", GATHER_CASES)
def test_compiled_gather_matches_reference(b, m, k, protect, insert_at):
    scores, positions, tensors = gather_inputs(b, m, seed=m + k)
    assert_gather_matches_ref(scores.cuda(), positions.cuda(), [t.cuda() for t in tensors],
                              k, protect, insert_at)


@requires_cuda
@pytest.mark.usefixtures("compiled")
def test_compiled_kernel_entry_matches_ahead_of_time_one():
    kw = to_cuda(make_inputs(2, 64, 33, 16))
    out = torch.empty_like(kw["u"])
    launched = selective_scan_launch(*kw.values(), out).run(out.device)
    assert_only_idle_scratch_pointers_hidden(launched)


@requires_cuda
@pytest.mark.usefixtures("compiled")
@pytest.mark.parametrize("name, prune, size", [
    ("vim_t", (0.5, (1,)), dict(img_size=32, patch_size=8, stride=8, embed_dim=16, depth=3,
                                 num_classes=5)),
    ("plainmamba_l1", (0.5, (1, 3)), dict(img_size=64, embed_dim=32, depth=4, num_classes=10)),
])
def test_pruned_model_on_cuda_runs_the_kernels_and_matches_cpu(monkeypatch, name, prune, size):
    torch.manual_seed(0)
    model = create_model(name, prune=PruneConfig(*prune), **size)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    x = torch.randn(2, *model.input_shape())
    with torch.no_grad():
        expected = model(x)
    launched = []
    run = Launch.run

    def recording_run(launch, device):
        launched.append(launch)
        return run(launch, device)

    monkeypatch.setattr(Launch, "run", recording_run)
    with torch.no_grad():
        actual = model.cuda()(x.cuda())
    assert {launch.kernel for launch in launched} == {SCAN_KERNEL, GATHER_KERNEL}
    assert max_rel_error(actual.cpu(), expected) <= 1e-4
