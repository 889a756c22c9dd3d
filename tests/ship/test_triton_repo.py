"""`ssmprune triton-repo`: the model repository's layout, and every config.pbtxt parsed with
Triton's own model-config protobuf (``tritonclient.grpc.model_config_pb2``); the refusals.

No Triton server can be installed here (PyPI's ``tritonserver`` is a placeholder or an
in-process API that needs the server's libraries): the configs are checked against the
schema the server reads them with, field by field."""

from __future__ import annotations

import dataclasses
import shutil

import onnx
import pytest

from cli_helpers import assert_one_line_error, invoke
from ship.conftest import ENGINE_BYTES, stand_in_engine
from ssmprune.exporter.manifest import MANIFEST_FILE, MODEL_FILE, read_export, sha256_file
from ssmprune.ship import triton_repo
from ssmprune.ship.sources import Batch, ExportSource, batch_of, read_source

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="tritonclient[grpc] (requirements.txt) carries Triton's model-config protobuf")
from google.protobuf import text_format  # noqa: E402  (protobuf comes with tritonclient)

DataType = model_config_pb2.DataType
Kind = model_config_pb2.ModelInstanceGroup.Kind


def parse_config(path) -> "model_config_pb2.ModelConfig":
    """config.pbtxt as Triton reads it: text format into ModelConfig; unknown fields fail."""
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.fixture
def full_engine(digits_export, tmp_path):
    """What full TensorRT 10.13 would write with the aot plugins (a stand-in: it cannot be
    installed here)."""
    return stand_in_engine(digits_export, tmp_path / "engines" / "vim_digits.engine")


def test_repository_of_an_export_and_an_engine(digits_export, full_engine, tmp_path):
    labels = tmp_path / "digits.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    repo = tmp_path / "repo"
    result, stdout, stderr = invoke("triton-repo", f"vim_digits_onnx={digits_export}",
                                    f"vim_digits_trt={full_engine}", "--labels", labels,
                                    "--instances", 2, "-o", repo)
    assert result.exit_code == 0, stderr
    files = sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file())
    assert files == sorted(f"{m}/{f}" for m, model in (("vim_digits_onnx", "model.onnx"),
                                                       ("vim_digits_trt", "model.plan"))
                           for f in ("config.pbtxt", "labels.txt", "ssmprune.json",
                                     f"1/{model}"))
    assert (repo / "vim_digits_onnx/1/model.onnx").read_bytes() == \
        (digits_export / MODEL_FILE).read_bytes()
    assert (repo / "vim_digits_trt/1/model.plan").read_bytes() == full_engine.read_bytes()
    assert (repo / "vim_digits_onnx/ssmprune.json").read_bytes() == \
        (digits_export / MANIFEST_FILE).read_bytes()
    assert (repo / "vim_digits_trt/labels.txt").read_text() == labels.read_text()

    onnx_cfg = parse_config(repo / "vim_digits_onnx/config.pbtxt")
    assert onnx_cfg.name == "vim_digits_onnx" and onnx_cfg.platform == "onnxruntime_onnx"
    assert onnx_cfg.max_batch_size == 0 and not onnx_cfg.HasField("dynamic_batching")
    (inp,) = onnx_cfg.input
    (out,) = onnx_cfg.output
    assert (inp.name, inp.data_type, list(inp.dims)) == ("images", DataType.TYPE_FP32,
                                                          [1, 3, 32, 32])
    assert (out.name, out.data_type, list(out.dims)) == ("logits", DataType.TYPE_FP32, [1, 10])
    assert out.label_filename == "labels.txt"
    assert [(g.kind, g.count) for g in onnx_cfg.instance_group] == [(Kind.KIND_CPU, 2)]

    trt_cfg = parse_config(repo / "vim_digits_trt/config.pbtxt")
    assert trt_cfg.platform == "tensorrt_plan" and trt_cfg.max_batch_size == 0
    assert [list(t.dims) for t in (*trt_cfg.input, *trt_cfg.output)] == [[1, 3, 32, 32], [1, 10]]
    assert [(g.kind, g.count) for g in trt_cfg.instance_group] == [(Kind.KIND_GPU, 2)]
    text = (repo / "vim_digits_trt/config.pbtxt").read_text()
    assert "TensorRT 10.13.0.35 exactly" in text and "aot plugin kernels are inside" in text
    assert "tensorrt_plan" in stdout and "server needs" in stdout


def test_onnx_on_gpu_and_default_names(digits_export, tmp_path):
    repo = tmp_path / "repo"
    result, _, stderr = invoke("triton-repo", digits_export, "--onnx-device", "gpu", "-o", repo)
    assert result.exit_code == 0, stderr
    (model,) = repo.iterdir()
    assert model.name == digits_export.name
    cfg = parse_config(model / "config.pbtxt")
    assert [g.kind for g in cfg.instance_group] == [Kind.KIND_GPU]
    assert not cfg.output[0].label_filename and not (model / "labels.txt").exists()


def test_dynamic_batch_config_parses(digits_export):
    """A dynamic batch (up to 8): max_batch_size 8, dims without the batch axis,
    dynamic_batching."""
    source = read_source(str(digits_export))
    text = triton_repo.config_text("m", source, Batch(True, 1, 8), 8,
                                   triton_repo.RepoOptions(), labels=False)
    cfg = text_format.Parse(text, model_config_pb2.ModelConfig())
    assert cfg.max_batch_size == 8 and cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [3, 32, 32] and list(cfg.output[0].dims) == [10]


def test_batch_is_read_in_one_place(digits_export, full_engine):
    """Static, or dynamic as the manifests write it (an export's ``max_batch`` and
    ``"batch"`` axis, an engine's ``batch_range`` and -1 axis)."""
    export, engine = read_source(str(digits_export)), read_source(str(full_engine))
    assert batch_of(export) == batch_of(engine) == Batch(False, 1, 1)
    m = export.manifest
    dynamic_export = dataclasses.replace(export, manifest=dataclasses.replace(
        m, max_batch=8, input={**m.input, "shape": ["batch", *m.input["shape"][1:]]}))
    assert batch_of(dynamic_export) == Batch(True, 1, 8)
    e = engine.manifest
    inputs = [{**e.onnx["inputs"][0], "shape": [-1, *e.onnx["inputs"][0]["shape"][1:]]}]
    dynamic = dataclasses.replace(engine, manifest=dataclasses.replace(
        e, batch_range=[2, 4, 16], onnx={**e.onnx, "inputs": inputs}))
    assert batch_of(dynamic) == Batch(True, 2, 16)
    with pytest.raises(triton_repo.ConfigError, match="batch-range 1:OPT:MAX"):
        triton_repo.max_batch_size(dynamic, batch_of(dynamic), None)
    assert triton_repo.max_batch_size(export, Batch(True, 1, 8), 4) == 4
    with pytest.raises(triton_repo.ConfigError, match="above the largest batch 8"):
        triton_repo.max_batch_size(export, Batch(True, 1, 8), 9)


def test_a_dynamic_batch_export_gets_the_dynamic_batcher(tmp_path):
    """`export --batch dynamic:4`: max_batch_size 4, dims without the batch axis."""
    from ssmprune.exporter import ExportOptions, export

    folder = export(ExportOptions("vim_digits", max_batch=4), tmp_path / "dyn").directory
    repo = tmp_path / "repo"
    result, _, stderr = invoke("triton-repo", folder, "--max-batch-size", 3, "-o", repo)
    assert result.exit_code == 0, stderr
    cfg = parse_config(repo / "dyn/config.pbtxt")
    assert cfg.max_batch_size == 3 and cfg.HasField("dynamic_batching")
    assert list(cfg.input[0].dims) == [3, 32, 32] and list(cfg.output[0].dims) == [10]


def test_external_data_travels_with_the_onnx(digits_export, tmp_path):
    """An export whose weights lie in a second file: both copied, both checked."""
    folder = tmp_path / "external"
    folder.mkdir()
    model = onnx.load(str(digits_export / MODEL_FILE))
    onnx.save(model, str(folder / MODEL_FILE), save_as_external_data=True,
              location="weights.bin", size_threshold=0)
    _, manifest = read_export(digits_export)
    files = {name: {"sha256": sha256_file(folder / name), "bytes": (folder / name).stat().st_size}
             for name in (MODEL_FILE, "weights.bin")}
    (folder / MANIFEST_FILE).write_text(dataclasses.replace(manifest, files=files).to_json())
    repo = tmp_path / "repo"
    result, _, stderr = invoke("triton-repo", folder, "-o", repo)
    assert result.exit_code == 0, stderr
    assert (repo / "external/1/weights.bin").read_bytes() == (folder / "weights.bin").read_bytes()
    parse_config(repo / "external/config.pbtxt")


@pytest.mark.parametrize("case, fragments", [
    ("exists", ["exists: a model repository is written into a new folder"]),
    ("rtx", ["TensorRT-RTX", "cannot load it"]),
    ("v3", ["v3 form", "Triton's TensorRT backend loads C++ plugin libraries"]),
    ("same_name", ["both give the model name 'm'", "NAME=PATH"]),
    ("static_max", ["--max-batch-size 4", "static batch of 1"]),
    ("bad_name", ["is not usable as a folder name"]),
    ("labels", ["has 2 class names; the model has 10"]),
    ("instances", ["--instances 0 is out of range"]),
    ("tampered", ["does not match the sha256 in its manifest"]),
])
def test_refusals_are_one_line_and_write_nothing(digits_export, tmp_path, case, fragments):
    repo = tmp_path / "repo"
    args = [digits_export]
    if case == "exists":
        repo.mkdir()
        (repo / "keep.txt").write_text("mine")
    elif case in ("rtx", "v3"):
        engine = stand_in_engine(digits_export, tmp_path / "e.engine",
                                 flavour="tensorrt_rtx" if case == "rtx" else "tensorrt",
                                 version="1.7.1.116" if case == "rtx" else "10.13.0.35",
                                 plugin_form="v3" if case == "v3" else None)
        args = [digits_export, engine]
    elif case == "same_name":
        args = [f"m={digits_export}", f"m={stand_in_engine(digits_export, tmp_path / 'e.engine')}"]
    elif case == "static_max":
        args += ["--max-batch-size", 4]
    elif case == "bad_name":
        args = [f".hidden={digits_export}"]
    elif case == "labels":
        (tmp_path / "l.txt").write_text("zero\none\n")
        args += ["--labels", tmp_path / "l.txt"]
    elif case == "instances":
        args += ["--instances", 0]
    elif case == "tampered":
        engine = stand_in_engine(digits_export, tmp_path / "e.engine")
        engine.write_bytes(ENGINE_BYTES[::-1])
        args = [engine]
    result, _, stderr = invoke("triton-repo", *args, "-o", repo)
    assert_one_line_error(result, stderr, *fragments)
    if case == "exists":
        assert [p.name for p in repo.iterdir()] == ["keep.txt"]
    else:
        assert not repo.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".repo")]


def test_a_failed_copy_leaves_nothing(digits_export, tmp_path, monkeypatch):
    """The repository is renamed into place only when whole."""
    calls, copy = [], shutil.copyfile

    def copy_then_fail(src, dst, **kwargs):
        calls.append(dst)
        if len(calls) == 2:
            raise triton_repo.BadInputFileError("the disk went away")
        return copy(src, dst, **kwargs)

    monkeypatch.setattr(triton_repo.shutil, "copyfile", copy_then_fail)
    with pytest.raises(triton_repo.BadInputFileError):
        triton_repo.make_repo([str(digits_export)], tmp_path / "repo")
    assert list(tmp_path.iterdir()) == []
    assert isinstance(read_source(str(digits_export)), ExportSource)


def test_labels_need_a_batch_dimension_or_a_batch_of_one(digits_export, tmp_path, monkeypatch):
    """Triton ranks a [b, C] output without a batch dimension as one vector of b x C values:
    labels on a static batch above 1 would mix images, so they are refused."""
    from ssmprune.ship.sources import Batch

    monkeypatch.setattr(triton_repo, "batch_of", lambda source: Batch(False, 2, 2))
    (tmp_path / "l.txt").write_text("".join(f"digit {i}\n" for i in range(10)))
    repo = tmp_path / "repo"
    result, _, stderr = invoke("triton-repo", digits_export, "--labels", tmp_path / "l.txt",
                               "-o", repo)
    assert_one_line_error(result, stderr, "static batch of 2", "--batch dynamic")
    assert not repo.exists()
