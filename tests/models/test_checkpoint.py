"""Tests of ssmprune/models/checkpoint.py: official containers, round trips, refusals."""

import argparse
import os
import shlex

import pytest
import torch
from safetensors.torch import load_file

from ssmprune.errors import BadInputFileError, CheckpointError, SsmpruneError
from ssmprune.models import create_model, load_checkpoint, save_checkpoint
from ssmprune.models.checkpoint import read_state_dict

VIM_SMALL = dict(img_size=32, patch_size=8, stride=8, embed_dim=32, num_classes=10)
PLAIN_SMALL = dict(img_size=32, embed_dim=32, depth=2, num_classes=10)


def _vim_official_shapes(c=32, depth=1, patches=16, classes=10, n=16, d_conv=4, patch=8):
    """The official Vim key set (PAPER.md) with its shapes, for the VIM_SMALL sizes."""
    d, r = 2 * c, -(-c // 16)
    shapes = {
        "cls_token": (1, 1, c),
        "pos_embed": (1, patches + 1, c),
        "patch_embed.proj.weight": (c, 3, patch, patch),
        "patch_embed.proj.bias": (c,),
        "norm_f.weight": (c,),
        "head.weight": (classes, c),
        "head.bias": (classes,),
    }
    for i in range(depth):
        m = f"layers.{i}.mixer."
        shapes.update({
            m + "A_log": (d, n), m + "A_b_log": (d, n), m + "D": (d,), m + "D_b": (d,),
            m + "in_proj.weight": (2 * d, c),
            m + "conv1d.weight": (d, 1, d_conv), m + "conv1d.bias": (d,),
            m + "conv1d_b.weight": (d, 1, d_conv), m + "conv1d_b.bias": (d,),
            m + "x_proj.weight": (r + 2 * n, d), m + "x_proj_b.weight": (r + 2 * n, d),
            m + "dt_proj.weight": (d, r), m + "dt_proj.bias": (d,),
            m + "dt_proj_b.weight": (d, r), m + "dt_proj_b.bias": (d,),
            m + "out_proj.weight": (c, d),
            f"layers.{i}.norm.weight": (c,),
        })
    return shapes


def _randomise(model):
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    return model


def vim(seed=0, **overrides):
    torch.manual_seed(seed)
    return _randomise(create_model("vim_t", **{**VIM_SMALL, "depth": 1, **overrides})).eval()


def plain(seed=0, **overrides):
    torch.manual_seed(seed)
    return _randomise(create_model("plainmamba_l1", **{**PLAIN_SMALL, **overrides})).eval()


def _assert_same_outputs(source, target):
    torch.manual_seed(123)
    x = torch.randn(2, *source.input_shape())
    with torch.no_grad():
        assert not torch.equal(source(x), create_fresh_like(source)(x))  # the load matters
        assert torch.equal(source(x), target(x))


def create_fresh_like(model):
    torch.manual_seed(999)
    return _randomise(type(model)(model.config)).eval()


def _user_error(info) -> SsmpruneError:
    err = info.value
    assert isinstance(err, (CheckpointError, BadInputFileError))
    assert isinstance(err, SsmpruneError)
    assert str(err) and "\n" not in str(err)
    assert "\x1b" not in str(err)  # no terminal escape codes in a one-line message
    return err


# ---------------------------------------------------------------------------
# Official layouts and round trips
# ---------------------------------------------------------------------------

def test_vim_pth_is_official_container(tmp_path):
    source = vim()
    path = save_checkpoint(source, tmp_path / "vim.pth")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert list(obj) == ["model"]
    expected = _vim_official_shapes()
    assert {k: tuple(v.shape) for k, v in obj["model"].items()} == expected
    assert all(v.dtype == torch.float32 for v in obj["model"].values())
    target = load_checkpoint(create_fresh_like(source), path)
    _assert_same_outputs(source, target)
    assert not list(tmp_path.glob("*.tmp"))  # the atomic write left nothing behind


def test_vim_safetensors_round_trip(tmp_path):
    source = vim()
    path = save_checkpoint(source, tmp_path / "vim.safetensors")
    flat = load_file(str(path))
    assert {k: tuple(v.shape) for k, v in flat.items()} == _vim_official_shapes()
    _assert_same_outputs(source, load_checkpoint(create_fresh_like(source), path))


@pytest.mark.parametrize("container", ["model_ema", "bare", "training"])
def test_vim_other_containers(tmp_path, container):
    source = vim()
    state = source.state_dict()
    if container == "model_ema":
        obj = {"model_ema": state}
    elif container == "bare":
        obj = state
    else:  # the official training script's keys ('args' has its own test below)
        other = {k: torch.zeros_like(v) for k, v in state.items()}
        obj = {"model": state, "model_ema": other, "optimizer": {"state": {}, "param_groups": []},
               "lr_scheduler": {"last_epoch": 3}, "epoch": 299, "scaler": "none"}
    path = tmp_path / f"{container}.pth"
    torch.save(obj, path)
    assert read_state_dict(path).keys() == state.keys()
    _assert_same_outputs(source, load_checkpoint(create_fresh_like(source), path))


def test_vim_training_checkpoint_with_args_loads(tmp_path):
    # hustvl/Vim vim/main.py saves checkpoint.pth and best_checkpoint.pth as
    # {'model', 'optimizer', 'lr_scheduler', 'epoch', 'model_ema', 'scaler',
    # 'args': argparse.Namespace}. A Namespace holds plain values and runs no
    # code, so such a file must load, still without unrestricted unpickling.
    source = vim()
    path = tmp_path / "checkpoint.pth"
    args = argparse.Namespace(model="vim_tiny_patch16_224", lr=5e-6, epochs=30)
    torch.save({"model": source.state_dict(), "epoch": 29, "scaler": "none", "args": args}, path)
    _assert_same_outputs(source, load_checkpoint(create_fresh_like(source), path))


def test_half_precision_checkpoint_loads_as_fp32(tmp_path):
    source = vim()
    path = tmp_path / "half.pth"
    torch.save({"model": {k: v.half() for k, v in source.state_dict().items()}}, path)
    target = load_checkpoint(create_fresh_like(source), path)
    for key, value in target.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, source.state_dict()[key].half().float(), rtol=0, atol=0)


def test_plainmamba_pth_is_mmcv_checkpoint(tmp_path):
    source = plain()
    path = save_checkpoint(source, tmp_path / "plain.pth")
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert "state_dict" in obj
    keys = set(obj["state_dict"])
    assert all(k.startswith("backbone.") or k.startswith("head.fc.") for k in keys)
    assert {"backbone.pos_embed", "backbone.ln1.weight", "head.fc.weight", "head.fc.bias",
            "backbone.layers.1.mamba.direction_Bs"} <= keys
    assert obj["state_dict"]["backbone.pos_embed"].shape == (1, 4, 32)
    _assert_same_outputs(source, load_checkpoint(create_fresh_like(source), path))


def test_plainmamba_mmcv_file_with_meta_loads(tmp_path):
    source = plain()
    official = type(source).to_official_state_dict(source.state_dict())
    meta = {"mmcv_version": "1.7.0", "time": "Mon Jan  1 00:00:00 2024", "epoch": 300,
            "iter": 375300, "CLASSES": ["tench", "goldfish"], "config": "model = dict()"}
    path = tmp_path / "mmcv.pth"
    torch.save({"meta": meta, "state_dict": official, "optimizer": {"state": {}}}, path)
    _assert_same_outputs(source, load_checkpoint(create_fresh_like(source), path))


def test_plainmamba_safetensors_round_trip(tmp_path):
    source = plain()
    path = save_checkpoint(source, tmp_path / "plain.safetensors")
    assert "head.fc.weight" in load_file(str(path))
    _assert_same_outputs(source, load_checkpoint(create_fresh_like(source), path))


# ---------------------------------------------------------------------------
# Files that do not fit
# ---------------------------------------------------------------------------

def test_plainmamba_file_into_vim(tmp_path):
    path = save_checkpoint(plain(), tmp_path / "plain.pth")
    model = vim()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, path)
    message = str(_user_error(info))
    assert "missing" in message and "unexpected" in message
    assert "cls_token" in message and "backbone." in message
    for key, value in model.state_dict().items():  # nothing was half-loaded
        assert torch.equal(value, before[key])


def test_vim_file_into_plainmamba(tmp_path):
    path = save_checkpoint(vim(), tmp_path / "vim.pth")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(plain(), path)
    message = str(_user_error(info))
    assert "missing" in message and "unexpected" in message
    assert "unexpected: cls_token" in message and "missing: layers.0." in message


def test_other_width_lists_wrongly_shaped_keys(tmp_path):
    path = save_checkpoint(vim(embed_dim=48), tmp_path / "wide.safetensors")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(vim(), path)
    message = str(_user_error(info))
    assert "wrongly shaped" in message
    assert "cls_token (1, 1, 48) vs (1, 1, 32)" in message
    assert "missing" not in message and "unexpected" not in message


def test_other_depth_lists_unexpected_keys(tmp_path):
    path = save_checkpoint(vim(depth=2), tmp_path / "deep.pth")
    with pytest.raises(CheckpointError, match="unexpected: layers.1.") as info:
        load_checkpoint(vim(), path)
    _user_error(info)


# ---------------------------------------------------------------------------
# Unreadable and hostile files
# ---------------------------------------------------------------------------

def _truncated_pth(tmp_path):
    path = save_checkpoint(vim(), tmp_path / "whole.pth")
    data = path.read_bytes()
    cut = tmp_path / "truncated.pth"
    cut.write_bytes(data[: len(data) // 2])
    return cut


def _corrupt_safetensors(tmp_path):
    path = save_checkpoint(vim(), tmp_path / "whole.safetensors")
    data = bytearray(path.read_bytes())
    data[8:40] = b"\xff" * 32  # the JSON header is now garbage
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(bytes(data))
    return bad


def _truncated_safetensors(tmp_path):
    path = save_checkpoint(vim(), tmp_path / "whole.safetensors")
    data = path.read_bytes()
    bad = tmp_path / "short.safetensors"
    bad.write_bytes(data[: len(data) // 2])
    return bad


def _random_bytes(suffix):
    def make(tmp_path):
        path = tmp_path / f"random{suffix}"
        path.write_bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0),
                                       dtype=torch.uint8).numpy().tobytes())
        return path
    return make


def _empty_file(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    return path


def _no_tensors(tmp_path):
    path = tmp_path / "no_tensors.pth"
    torch.save({"model": {"epoch": 3}}, path)
    return path


def _empty_model(tmp_path):
    path = tmp_path / "empty_model.pth"
    torch.save({"model": {}}, path)
    return path


def _a_list(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], path)
    return path


BAD_FILES = {
    "truncated_pth": (_truncated_pth, CheckpointError),
    "corrupt_safetensors": (_corrupt_safetensors, CheckpointError),
    "truncated_safetensors": (_truncated_safetensors, CheckpointError),
    "random_pth": (_random_bytes(".pth"), CheckpointError),
    "random_safetensors": (_random_bytes(".safetensors"), CheckpointError),
    "random_bin": (_random_bytes(".bin"), CheckpointError),
    "empty_file": (_empty_file, CheckpointError),
    "no_tensors": (_no_tensors, CheckpointError),
    "empty_model": (_empty_model, CheckpointError),
    "a_list": (_a_list, CheckpointError),
    "missing_path": (lambda tmp_path: tmp_path / "nowhere.pth", BadInputFileError),
    "a_directory": (lambda tmp_path: tmp_path, BadInputFileError),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_unreadable_files_raise_one_line_user_errors(tmp_path, case):
    make, error = BAD_FILES[case]
    path = make(tmp_path)
    with pytest.raises(error) as info:
        load_checkpoint(vim(), path)
    assert str(path) in str(_user_error(info))
    with pytest.raises(error):
        read_state_dict(path)


class _RunsAShellCommand:
    """Unpickling this object runs ``command`` through os.system."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "hostile.pth"
    state = {k: v for k, v in vim().state_dict().items()}
    torch.save({"model": state, "payload": _RunsAShellCommand(f"touch {shlex.quote(str(marker))}")},
               path)
    with pytest.raises(CheckpointError, match="refused") as info:
        load_checkpoint(vim(), path)
    assert "system" in str(_user_error(info))  # the message names what was refused
    with pytest.raises(CheckpointError):
        read_state_dict(path)
    assert not marker.exists()

    # The payload is real: an unrestricted unpickler would have run it.
    probe = tmp_path / "probe"
    probe_path = tmp_path / "probe.pth"
    torch.save({"payload": _RunsAShellCommand(f"touch {shlex.quote(str(probe))}")}, probe_path)
    torch.load(probe_path, weights_only=False)
    assert probe.exists()


def test_save_creates_parent_folders_and_overwrites(tmp_path):
    first, second = vim(seed=1), vim(seed=2)
    path = tmp_path / "a" / "b" / "vim.pth"
    save_checkpoint(first, path)
    save_checkpoint(second, path)
    _assert_same_outputs(second, load_checkpoint(create_fresh_like(second), path))


# ---------------------------------------------------------------------------
# Files that are not checkpoints at all, and non-finite weights (issue 15)
# ---------------------------------------------------------------------------

def _text_pth(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello, these are not weights\n")  # was torch's KeyError: 101
    return path


def _lfs_pointer(tmp_path):
    path = tmp_path / "lfs.pth"
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:0123\nsize 99\n")
    return path


def _html_page(tmp_path):
    path = tmp_path / "download.safetensors"
    path.write_text("<!DOCTYPE html><html><body>403 Forbidden</body></html>\n")
    return path


def _foreign_zip(tmp_path):
    import zipfile

    path = tmp_path / "archive.pth"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "a zip, not a torch checkpoint")
    return path


def _empty_safetensors(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    return path


NOT_CHECKPOINTS = {
    "text_pth": (_text_pth, "not a PyTorch checkpoint"),
    "lfs_pointer": (_lfs_pointer, "Git LFS pointer"),
    "html_page": (_html_page, "HTML page"),
    "foreign_zip": (_foreign_zip, "corrupt or truncated"),
    "empty_pth": (_empty_file, "empty file"),
    "empty_safetensors": (_empty_safetensors, "empty file"),
}


@pytest.mark.parametrize("case", sorted(NOT_CHECKPOINTS))
def test_files_that_are_not_checkpoints_are_one_line(tmp_path, case):
    make, fragment = NOT_CHECKPOINTS[case]
    path = make(tmp_path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(_user_error(info))
    assert str(path) in message and fragment in message


def _flipped(data: bytes, seed: int) -> bytes:
    g = torch.Generator().manual_seed(seed)
    out = bytearray(data)
    n = int(torch.randint(1, 24, (1,), generator=g))
    for i, v in zip(torch.randint(0, len(out), (n,), generator=g).tolist(),
                    torch.randint(0, 256, (n,), generator=g).tolist()):
        out[i] = v
    return bytes(out)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_damaged_files_never_raise_anything_but_user_errors(tmp_path, suffix):
    """Bytes flipped at random in a real checkpoint (and random cuts): each either loads,
    or is one user error; never a KeyError, IndexError, TypeError, struct.error... (seen
    from torch's unpickler on such files)."""
    data = save_checkpoint(vim(), tmp_path / f"whole{suffix}").read_bytes()
    path = tmp_path / f"damaged{suffix}"
    for seed in range(150):
        g = torch.Generator().manual_seed(10_000 + seed)
        cut = int(torch.randint(0, len(data), (1,), generator=g))
        for variant in (_flipped(data, seed), data[:cut]):
            path.write_bytes(variant)
            try:
                read_state_dict(path)
            except SsmpruneError as err:
                assert "\n" not in str(err)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, suffix, bad):
    model = vim()
    with torch.no_grad():
        model.layers[0].mixer.x_proj.weight[1, 2] = bad
        model.head.bias[0] = bad
    path = save_checkpoint(model, tmp_path / f"nonfinite{suffix}")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(vim(), path)
    message = str(_user_error(info))
    # The first of the two in the file's order, and only it.
    first = next(k for k in read_state_dict_unchecked(path)
                 if k in ("layers.0.mixer.x_proj.weight", "head.bias"))
    assert str(path) in message and f"tensor {first} " in message
    assert sum(k in message for k in ("layers.0.mixer.x_proj.weight", "head.bias")) == 1
    kind = "NaN" if bad != bad else "inf"
    assert f"1 {kind}" in message


def read_state_dict_unchecked(path):
    """The file's tensor names in its own order, without ssmprune's checks."""
    if path.suffix == ".safetensors":
        return list(load_file(path))
    return list(torch.load(path, weights_only=True)["model"])


def test_non_finite_half_precision_weights_are_refused(tmp_path):
    from safetensors.torch import save_file

    state = {k: v.half() for k, v in vim().to_official_state_dict(vim().state_dict()).items()}
    state["norm_f.weight"][0] = float("inf")
    save_file(state, tmp_path / "half.safetensors")
    with pytest.raises(CheckpointError, match="norm_f.weight"):
        read_state_dict(tmp_path / "half.safetensors")


def test_non_finite_checkpoint_is_one_line_in_the_cli(tmp_path):
    from cli_helpers import assert_one_line_error, invoke

    model = create_model("vim_digits")
    with torch.no_grad():
        model.pos_embed[0, 0, 0] = float("nan")
    path = save_checkpoint(model, tmp_path / "nan.safetensors")
    for args in (["run", "vim_digits", "--checkpoint", path],
                 ["export", "vim_digits", "--checkpoint", path, "-o", tmp_path / "out"]):
        result, _, err = invoke(*args)
        assert_one_line_error(result, err, "pos_embed", "NaN")
    assert not (tmp_path / "out").exists()


def test_torch_load_is_weights_only():
    """Nothing pickled executes: every torch.load in the package passes weights_only=True."""
    import ast
    from pathlib import Path

    import ssmprune

    calls = []
    for file in Path(ssmprune.__file__).parent.rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name)
                    and node.func.value.id == "torch"):
                keywords = {k.arg: k.value for k in node.keywords}
                calls.append(file.name)
                assert (isinstance(keywords.get("weights_only"), ast.Constant)
                        and keywords["weights_only"].value is True), f"{file}:{node.lineno}"
    assert calls  # checkpoint.py's
