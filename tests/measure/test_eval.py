"""``ssmprune eval`` (ssmprune/measure/accuracy.py, labelled.py): the digits accuracies of
benchmarks/RESULTS.md, an ImageFolder of photos against an independent computation, .npz,
--reference, and one-line errors for bad sets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from parity.engine_cases import fake_engine, pretend_tensorrt
from PIL import Image

from cli_helpers import assert_one_line_error, invoke
from ssmprune.models.construct import build_model

# benchmarks/RESULTS.md, "ToP on scikit-learn digits": held-out accuracy (360 scans) of
# the shipped weights, dense and with the presets (vim_digits_top = gap/clip at 0.9,
# plainmamba_digits_top = gap/l1 at 0.8): 97.5, 74.4, 98.3 and 95.6 %.
RESULTS_MD = [
    ("vim_digits", None, 351, "97.5"),
    ("vim_digits", "vim_digits_top", 268, "74.4"),
    ("plainmamba_digits", None, 354, "98.3"),
    ("plainmamba_digits", "plainmamba_digits_top", 344, "95.6"),
]


def eval_json(*args):
    result, stdout, stderr = invoke("eval", *args, "--json")
    assert result.exit_code == 0, stderr
    return json.loads(stdout)


@pytest.mark.parametrize("model, preset, correct, percent", RESULTS_MD)
def test_digits_accuracy_of_results_md(model, preset, correct, percent):
    record = eval_json(model, "--data", "digits:held_out",
                       *(["--prune", preset] if preset else []))
    assert record["samples"] == 360 and record["correct_top1"] == correct
    assert f"{100 * record['top1']:.1f}" == percent
    assert record["target"]["prune"] == preset
    assert record["data"]["source"] == "digits:held_out"


def test_export_with_reference_agrees_with_torch(pruned_export, digits_npz):
    """The pruned export (ONNX Runtime) against the preset in PyTorch: accuracies and the
    agreement (the share of equal argmaxes) computed here again, without ssmprune.measure."""
    from ssmprune.parity.runners import onnxrt_session

    record = eval_json(pruned_export, "--data", digits_npz, "--reference", "vim_digits_top",
                       "--threads", "1")
    with np.load(digits_npz) as npz:
        x, labels = npz["x"], npz["labels"]
    net, _ = build_model("vim_digits", prune="vim_digits_top")
    with torch.inference_mode():
        ref = net(torch.from_numpy(x)).numpy().argmax(-1)
    session = onnxrt_session(pruned_export / "model.onnx", threads=1)
    padded = np.concatenate([x, np.repeat(x[-1:], -len(x) % 8, axis=0)])  # static batch 8
    ours = np.concatenate([session.run(None, {"images": padded[i:i + 8]})[0]
                           for i in range(0, len(padded), 8)])[:len(x)].argmax(-1)
    assert record["agreeing"] == int((ours == ref).sum())
    assert record["correct_top1"] == int((ours == labels).sum())
    assert record["reference"]["correct_top1"] == int((ref == labels).sum())
    assert record["runtime"] == "onnxrt" and record["reference"]["runtime"] == "torch"


def _independent_logits(files, size=32):
    """vim_digits on image files, preprocessed here without ssmprune.images: shorter side
    to round(size / 0.875) (bicubic), centre crop, the config's mean / std."""
    net, _ = build_model("vim_digits")
    mean = np.array(net.config.mean, np.float32)[:, None, None]
    std = np.array(net.config.std, np.float32)[:, None, None]
    batch = []
    for path in files:
        img = Image.open(path).convert("RGB")
        short = round(size / 0.875)
        w, h = img.size
        scale = short / min(w, h)
        img = img.resize((max(short, round(w * scale)), max(short, round(h * scale))),
                         Image.BICUBIC)
        left, top = (img.size[0] - size) // 2, (img.size[1] - size) // 2
        img = img.crop((left, top, left + size, top + size))
        arr = np.asarray(img, np.float32).transpose(2, 0, 1) / 255.0
        batch.append((arr - mean) / std)
    with torch.inference_mode():
        return net(torch.from_numpy(np.stack(batch))).numpy()


def _expected(logits, labels):
    top1 = int((logits.argmax(-1) == labels).sum())
    top5 = int(sum(label in np.argsort(-row)[:5] for row, label in zip(logits, labels)))
    return top1, top5


def test_image_folder_of_photos_matches_an_independent_computation(photo_folder):
    root, files = photo_folder
    logits = _independent_logits([f for f, _ in files])
    labels = np.array([int(c[1:]) for _, c in files])  # c0..c9 sort as 0..9
    record = eval_json("vim_digits", "--data", root)
    assert (record["correct_top1"], record["correct_top5"]) == _expected(logits, labels)
    assert record["samples"] == 20 and record["data"]["classes"] == 10


def test_labels_file_sets_the_class_order(photo_folder, tmp_path):
    root, files = photo_folder
    order = [f"c{c}" for c in (3, 7, 0, 9, 1, 8, 2, 6, 4, 5)]
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(order) + "\n")
    logits = _independent_logits([f for f, _ in files])
    labels = np.array([order.index(c) for _, c in files])
    record = eval_json("vim_digits", "--data", root, "--labels", labels_file)
    assert (record["correct_top1"], record["correct_top5"]) == _expected(logits, labels)


def test_npz_set(tmp_path):
    from ssmprune.calibration.data import DigitsData

    net, _ = build_model("vim_digits")
    samples = DigitsData(net.config).load()
    path = tmp_path / "held_out.npz"
    np.savez(path, x=samples.x[:100], labels=samples.labels[:100])
    with torch.inference_mode():
        pred = net(torch.from_numpy(samples.x[:100])).numpy().argmax(-1)
    record = eval_json("vim_digits", "--data", path)
    assert record["correct_top1"] == int((pred == samples.labels[:100]).sum())


def _folder(tmp_path, classes, images_per_class=1):
    root = tmp_path / "set"
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(images_per_class):
            Image.new("RGB", (40, 40), (10 * i, 50, 90)).save(root / c / f"{i}.png")
    return root


def test_bad_sets_are_one_line_errors(tmp_path):
    empty = tmp_path / "empty"
    (empty / "a").mkdir(parents=True)
    result, _, stderr = invoke("eval", "vim_digits", "--data", empty)
    assert_one_line_error(result, stderr, "holds no images")

    loose = tmp_path / "loose"
    loose.mkdir()
    Image.new("RGB", (40, 40)).save(loose / "x.png")
    result, _, stderr = invoke("eval", "vim_digits", "--data", loose)
    assert_one_line_error(result, stderr, "no class folders")

    three = _folder(tmp_path / "three", ["a", "b", "c"])
    result, _, stderr = invoke("eval", "vim_digits", "--data", three)
    assert_one_line_error(result, stderr, "has 3 class folders but the model has 10 classes")

    ten = _folder(tmp_path / "ten", [f"c{i}" for i in range(10)])
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"d{i}" for i in range(10)))
    result, _, stderr = invoke("eval", "vim_digits", "--data", ten, "--labels", labels)
    assert_one_line_error(result, stderr, "class folder(s) c0, c1, c2, c3, c4 ...",
                          "are not in labels file")

    five = tmp_path / "five.txt"
    five.write_text("\n".join(f"c{i}" for i in range(5)))
    for data in (ten, "digits:held_out"):
        result, _, stderr = invoke("eval", "vim_digits", "--data", data, "--labels", five)
        assert_one_line_error(result, stderr, "names 5 classes but the model has 10")

    result, _, stderr = invoke("eval", "vim_digits", "--data", "digits:test")
    assert_one_line_error(result, stderr, "the parts are digits:held_out, digits:train")


def test_engine_without_gpu_is_an_error(pruned_export, tmp_path, monkeypatch):
    engine = fake_engine(pruned_export, tmp_path / "m.engine")
    pretend_tensorrt(monkeypatch, installed=True, gpu=None)
    result, _, stderr = invoke("eval", engine, "--data", "digits:held_out")
    assert_one_line_error(result, stderr, "running engine m.engine needs an NVIDIA GPU")
