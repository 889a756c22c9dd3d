"""PruneConfig: schedules of the released presets, validation."""

import pytest

from ssmprune.errors import ConfigError
from ssmprune.models import create_model
from ssmprune.pruning import PRESETS, PruneConfig, kept_tokens, resolve


def runs(values):
    out = []
    for v in values:
        if out and out[-1][0] == v:
            out[-1][1] += 1
        else:
            out.append([v, 1])
    return [tuple(r) for r in out]


def test_released_token_counts():
    assert [kept_tokens(n, 0.8, True) for n in (197, 157, 125)] == [157, 125, 101]


def test_vim_s_paper_schedule_and_flops():
    model = create_model("vim_s", prune="vim_s_paper")
    assert runs(model.tokens_per_block()) == [(197, 5), (157, 5), (125, 5), (101, 9)]
    assert model.flops() / 1e9 == pytest.approx(3.57, rel=0.02)


def test_vim_t_paper_schedule_and_flops():
    model = create_model("vim_t", prune="vim_t_paper")
    assert runs(model.tokens_per_block()) == [(197, 10), (157, 10), (125, 4)]
    assert 1.24 <= model.flops() / 1e9 <= 1.29


def test_kept_patches_even_with_class_token():
    for n in range(11, 300, 7):
        for r in (0.3, 0.55, 0.7, 0.9, 1.0):
            k = kept_tokens(n, r, True)
            assert (k - 1) % 2 == 0 and k <= n


def test_ratio_one_keeps_everything():
    assert kept_tokens(197, 1.0, True) == 197
    assert kept_tokens(196, 1.0, False) == 196


def test_per_point_ratios():
    cfg = PruneConfig((0.9, 0.5), (2, 4))
    assert cfg.token_schedule(101, 6, True) == [101, 101, 91, 91, 45, 45]


@pytest.mark.parametrize("kwargs, message", [
    (dict(keep_ratio=1.2, prune_after=(3,)), "outside"),
    (dict(keep_ratio=0.0, prune_after=(3,)), "outside"),
    (dict(keep_ratio=(0.5,), prune_after=(3, 4)), "1 keep ratios for 2"),
    (dict(prune_after=(5, 3)), "strictly increasing"),
    (dict(importance="max"), "importance"),
    (dict(alignment="shift"), "alignment"),
])
def test_invalid_configs(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        PruneConfig(**kwargs)


def test_block_out_of_range():
    with pytest.raises(ConfigError, match="cannot prune after block 24"):
        create_model("vim_t", prune=PruneConfig(0.8, (24,)))


def test_too_few_tokens_left():
    with pytest.raises(ConfigError, match="at least 2"):
        create_model("vim_t", img_size=32, patch_size=16, stride=16, depth=3,
                      prune=PruneConfig(0.1, (1,)))


def test_preset_for_another_model():
    with pytest.raises(ConfigError, match="is for vim_s, not vim_t"):
        resolve("vim_s_paper", "vim_t")
    with pytest.raises(ConfigError, match="unknown pruning preset"):
        resolve("vim_x_paper", "vim_t")


def test_pruned_model_has_dense_parameters():
    dense = create_model("vim_t", img_size=32, depth=4)
    pruned = create_model("vim_t", img_size=32, depth=4, prune=PruneConfig(0.5, (2,)))
    assert dense.state_dict().keys() == pruned.state_dict().keys()
    assert all(PRESETS)
