"""token_gather against hand-computed answers and an independent per-sample loop."""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from ssmprune.ops.token_gather import token_gather, token_gather_ref


def loop_reference(scores, positions, tensors, k, protect, insert_at):
    """Per sample, plain Python: rank free tokens, keep k in order, insert the protected one."""
    out_pos, outs = [], [[] for _ in tensors]
    for i in range(scores.shape[0]):
        free = [j for j in range(scores.shape[1]) if j != protect]
        ranked = sorted(free, key=lambda j: (-scores[i, j].item(), j))[:k]
        kept = sorted(ranked)
        if protect >= 0:
            kept = kept[:insert_at] + [protect] + kept[insert_at:]
        out_pos.append(positions[i, kept])
        for o, t in zip(outs, tensors):
            o.append(t[i, kept])
    return [torch.stack(out_pos)] + [torch.stack(o) for o in outs]


def test_hand_computed_with_protected_class_token():
    # Tokens 0..4, class token at index 2. Free scores: t0 .9, t1 .1, t3 .5, t4 .7.
    scores = torch.tensor([[0.9, 0.1, -5.0, 0.5, 0.7]])
    positions = torch.tensor([[10, 11, 12, 13, 14]])
    hidden = torch.arange(5.0).view(1, 5, 1) * torch.ones(1, 5, 3)
    pos, h = token_gather(scores, positions, [hidden], 2, 2, 1)
    # Keep t0 and t4 in original order, class token inserted at output index 1.
    assert pos.tolist() == [[10, 12, 14]]
    assert h[0, :, 0].tolist() == [0.0, 2.0, 4.0]


def test_hand_computed_without_protection_and_ties():
    scores = torch.tensor([[1.0, 3.0, 3.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    positions = torch.tensor([[0, 1, 2, 3], [5, 6, 7, 8]])
    pos, = token_gather(scores, positions, [], 2)
    assert pos.tolist() == [[1, 2], [5, 6]]  # ties go to the earlier token


@given(b=st.integers(1, 3), m=st.integers(2, 30), data=st.data())
def test_matches_loop_reference(b, m, data):
    protect = data.draw(st.integers(-1, m - 1))
    free = m - (protect >= 0)
    k = data.draw(st.integers(1, free))
    insert_at = data.draw(st.integers(0, k)) if protect >= 0 else 0
    g = torch.Generator().manual_seed(m * 31 + k)
    scores = torch.randn(b, m, generator=g)
    positions = torch.randint(0, 1000, (b, m), generator=g)
    hidden = torch.randn(b, m, 4, generator=g)
    residual = torch.randn(b, m, 4, generator=g).double()
    got = token_gather(scores, positions, [hidden, residual], k, protect, insert_at)
    want = loop_reference(scores, positions, [hidden, residual], k, protect, insert_at)
    for a, w in zip(got, want):
        assert a.dtype == w.dtype and torch.equal(a, w)


def test_samples_are_independent():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(2, 9, generator=g)
    positions = torch.arange(9).expand(2, -1)
    x = torch.randn(2, 9, 3, generator=g)
    first = token_gather(scores, positions, [x], 4, 4, 2)
    scores2, x2 = scores.clone(), x.clone()
    scores2[1] = torch.randn(9, generator=g)
    x2[1] = 7.0
    second = token_gather(scores2, positions, [x2], 4, 4, 2)
    assert torch.equal(first[0][0], second[0][0]) and torch.equal(first[1][0], second[1][0])


def test_op_registration_and_fake():
    args = (torch.randn(2, 7), torch.arange(7).expand(2, -1).contiguous(),
            [torch.randn(2, 7, 5)], 3, 3, 1)
    torch.library.opcheck(torch.ops.ssmprune.token_gather.default, args,
                          test_utils=("test_schema", "test_faketensor"))


@pytest.mark.parametrize("k, protect, insert_at, message", [
    (0, -1, 0, "k=0"),
    (7, 3, 0, "k=7"),
    (2, 9, 0, "protect=9"),
    (2, 3, 5, "insert_at=5"),
])
def test_bad_arguments(k, protect, insert_at, message):
    with pytest.raises(ValueError, match=message):
        token_gather_ref(torch.randn(1, 7), torch.arange(7)[None], [], k, protect, insert_at)


def test_gradient_scatters_back_to_kept_tokens():
    scores = torch.tensor([[0.9, 0.1, -5.0, 0.5, 0.7]])
    x = torch.randn(1, 5, 2, requires_grad=True)
    _, y = token_gather(scores, torch.arange(5)[None], [x], 2, 2, 1)
    y.sum().backward()
    assert x.grad[0, :, 0].tolist() == [1.0, 0.0, 1.0, 0.0, 1.0]


# Call forms of the public op: protect / insert_at omitted (PlainMamba), passed
# with their default values, protect alone, and both (Vim).
CALL_FORMS = {
    "omitted": (),
    "explicit_defaults": (-1, 0),
    "protect_insert_at_0": (2, 0),
    "protect_and_insert_at": (2, 1),
}


@pytest.mark.parametrize("form", CALL_FORMS)
def test_gradient_matches_reference_in_every_call_form(form):
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(2, 6, generator=g)
    positions = torch.arange(6).expand(2, -1)
    x = torch.randn(2, 6, 3, generator=g, requires_grad=True)
    r = torch.randn(2, 6, generator=g, dtype=torch.float64, requires_grad=True)
    extra = CALL_FORMS[form]
    grads = []
    for gather in (token_gather, token_gather_ref):
        _, y, z = gather(scores, positions, [x, r], 3, *extra)
        weights = torch.linspace(-1.0, 2.0, y.numel()).view_as(y)
        grads.append(torch.autograd.grad((y * weights).sum() + (z ** 2).sum(), (x, r)))
    for got, want in zip(*grads):
        assert torch.equal(got, want)


@pytest.mark.parametrize("form", CALL_FORMS)
def test_gradcheck_in_every_call_form(form):
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(2, 5, generator=g, dtype=torch.float64)
    positions = torch.arange(5).expand(2, -1)
    x = torch.randn(2, 5, 2, generator=g, dtype=torch.float64, requires_grad=True)
    extra = CALL_FORMS[form]
    assert torch.autograd.gradcheck(
        lambda t: token_gather(scores, positions, [t], 3, *extra)[1], (x,))


def test_free_tokens_scoring_minus_infinity_never_duplicate_the_protected_one():
    scores = torch.tensor([[1.0, 5.0, float("-inf"), float("-inf")]])
    pos, = token_gather(scores, torch.arange(4)[None], [], 3, 1, 1)
    assert pos.tolist() == [[0, 1, 2, 3]]
