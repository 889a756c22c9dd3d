"""`ssmprune bundle` and the run.py it ships: the layout and sums, run.py in an interpreter
where neither torch nor ssmprune can be imported (sum checks, preprocessing equal to
`ssmprune run`'s, one-line stops without TensorRT or a GPU), and the refusals."""

from __future__ import annotations

import ast
import hashlib
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, invoke
from ship.conftest import (RTX, TARGET, TRT_MODULES, engine_json, needs_rtx, run_clean,
                           stand_in_engine, sums_of)
from ssmprune.images import batch_from_files
from ssmprune.ship import bundle_run
from ssmprune.ship.bundle import min_cuda_for_ptx, run_script


def _one_error_line(result) -> str:
    """run.py's failure: exit 2, no traceback, exactly one stderr line ``error: ...``."""
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "LEAKED" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@needs_rtx
def test_bundle_holds_what_a_device_needs_and_its_sums(built_bundle, digits_export):
    name = f"{digits_export.name}.{TARGET}.engine"
    files = sorted(p.name for p in built_bundle.iterdir())
    assert files == sorted(["README.md", "SHA256SUMS", "run.py", name, name + ".json"])
    sums = sums_of(built_bundle)
    assert sorted(sums) == sorted(f for f in files if f != "SHA256SUMS")
    for file, sha in sums.items():  # what `sha256sum -c SHA256SUMS` checks
        assert hashlib.sha256((built_bundle / file).read_bytes()).hexdigest() == sha
    assert (built_bundle / "run.py").read_bytes() == run_script().read_bytes()
    manifest = engine_json(built_bundle)
    assert manifest["tensorrt"]["flavour"] == "tensorrt_rtx"
    assert manifest["gpu"]["targets"] == [TARGET] and manifest["plugin_form"] is None
    assert manifest["engine"]["sha256"] == sums[name]
    readme = (built_bundle / "README.md").read_text()
    version = manifest["tensorrt"]["version"]
    for fragment in (f"TensorRT-RTX {version} exactly", f"`{name}`", TARGET, "no JetPack",
                     "pruned (vim_digits_top", "sha256sum -c SHA256SUMS"):
        assert fragment in readme, fragment


def test_run_py_imports_only_the_standard_library_and_numpy_at_top_level():
    tree = ast.parse(run_script().read_text())
    top = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            top |= {a.name.partition(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            top.add(node.module.partition(".")[0])
    assert top - {"__future__", "numpy"} <= set(sys.stdlib_module_names), top


@needs_rtx
def test_run_py_prepares_images_as_ssmprune_run_does(bundle_copy, photos, tmp_path):
    out = tmp_path / "batch.npy"
    result = run_clean(bundle_copy / "run.py", *photos, "--preprocess-only", out)
    assert result.returncode == 0, result.stderr
    cfg = engine_json(bundle_copy)["source"]["config"]
    expected = batch_from_files(photos, cfg["img_size"], cfg["mean"], cfg["std"]).numpy()
    got = np.load(out)
    assert got.dtype == np.float32 and got.shape == expected.shape == (len(photos), 3, 32, 32)
    assert np.array_equal(got, expected)  # bit for bit, every mode and the EXIF rotation
    # The same in-process, through the module's own functions.
    engine = bundle_run.read_engine(bundle_copy, next(p.name for p in
                                                      bundle_copy.glob("*.engine.json")))
    x, names = bundle_run.prepare_inputs([str(p) for p in photos], engine, resize=True)
    assert np.array_equal(x, expected) and names == [str(p) for p in photos]


@needs_rtx
def test_run_py_takes_prepared_npy_inputs(bundle_copy, photos, tmp_path):
    cfg = engine_json(bundle_copy)["source"]["config"]
    x = batch_from_files(photos[:2], cfg["img_size"], cfg["mean"], cfg["std"]).numpy()
    np.save(tmp_path / "two.npy", x)
    np.save(tmp_path / "one.npy", x[0])
    out = tmp_path / "again.npy"
    result = run_clean(bundle_copy / "run.py", tmp_path / "two.npy", tmp_path / "one.npy",
                       "--preprocess-only", out)
    assert result.returncode == 0, result.stderr
    assert np.array_equal(np.load(out), np.concatenate([x, x[:1]]))
    np.save(tmp_path / "wrong.npy", x.astype(np.float64))
    line = _one_error_line(run_clean(bundle_copy / "run.py", tmp_path / "wrong.npy"))
    assert "float64" in line and "(3, 32, 32)" in line


@needs_rtx
def test_run_py_without_tensorrt_stops_in_one_line(bundle_copy, photos):
    result = run_clean(bundle_copy / "run.py", photos[0],
                       blocked=("torch", "ssmprune", *TRT_MODULES))
    line = _one_error_line(result)
    version = engine_json(bundle_copy)["tensorrt"]["version"]
    assert "TensorRT-RTX is not installed" in line and version in line
    assert result.stdout == ""


@needs_rtx
def test_run_py_with_tensorrt_but_no_gpu_stops_in_one_line(bundle_copy, photos):
    if bundle_run.ctypes.util.find_library("cuda"):
        pytest.skip("this machine has an NVIDIA driver: run.py would go on to the GPU")
    result = run_clean(bundle_copy / "run.py", photos[0])
    assert "no NVIDIA driver" in _one_error_line(result)


@needs_rtx
def test_run_py_check(bundle_copy):
    result = run_clean(bundle_copy / "run.py", "--check")
    assert result.returncode == 0, result.stderr
    assert "4 files match SHA256SUMS" in result.stdout


@needs_rtx
@pytest.mark.parametrize("tamper, fragment", [
    ("flip", "does not match its sha256 in SHA256SUMS"),
    ("truncate", "does not match its sha256 in SHA256SUMS"),
    ("remove", "is missing"),
    ("unlisted", "lists no engine manifest"),
])
def test_run_py_refuses_a_changed_engine_before_anything(bundle_copy, photos, tmp_path,
                                                         tamper, fragment):
    (engine,) = bundle_copy.glob("*.engine")
    if tamper == "flip":
        data = bytearray(engine.read_bytes())
        data[len(data) // 2] ^= 0x01
        engine.write_bytes(bytes(data))
    elif tamper == "truncate":
        engine.write_bytes(engine.read_bytes()[:-1000])
    elif tamper == "remove":
        engine.unlink()
    else:  # the engine and its manifest dropped from the sums
        sums = (bundle_copy / "SHA256SUMS").read_text().splitlines()
        (bundle_copy / "SHA256SUMS").write_text(
            "".join(s + "\n" for s in sums if ".engine" not in s))
    out = tmp_path / "never.npy"
    # Even preprocessing waits for the sums: nothing is read before they pass.
    line = _one_error_line(run_clean(bundle_copy / "run.py", photos[0],
                                     "--preprocess-only", out))
    assert fragment in line
    if tamper != "unlisted":
        assert engine.name in line
    assert not out.exists()


@needs_rtx
def test_run_py_refuses_a_bad_sums_file(bundle_copy, photos):
    (bundle_copy / "SHA256SUMS").write_text("deadbeef  ../../etc/passwd\n")
    assert "is not 'SHA256  FILE'" in _one_error_line(run_clean(bundle_copy / "run.py",
                                                                "--check"))
    (bundle_copy / "SHA256SUMS").unlink()
    assert "SHA256SUMS is missing" in _one_error_line(run_clean(bundle_copy / "run.py",
                                                                "--check"))


@needs_rtx
@pytest.mark.parametrize("args, message", [
    ([], "give at least one image"),
    (["x.png", "--top", "0"], "--top takes 1 to 100"),
])
def test_run_py_arguments(bundle_copy, args, message):
    result = run_clean(bundle_copy / "run.py", *args)
    assert result.returncode == 2 and message in result.stderr


def test_run_py_batches_like_ssmprune_run():
    """Static batch 4: five inputs are two batches, the second filled with its last input."""
    engine = bundle_run.Engine(
        file="e", flavour="tensorrt", version="10.13.0.35", version_compatible=False,
        targets=None, built_on="sm_90", hardware_compatible=False, plugin_form=None,
        ptx_version=None, input_name="images", input_shape=[4, 3, 2, 2], batch_range=None,
        img_size=2, in_chans=3, mean=[0.0] * 3, std=[1.0] * 3, model="m")
    x = np.arange(5 * 12, dtype=np.float32).reshape(5, 3, 2, 2)
    chunks, real = bundle_run.batches(x, engine)
    assert [c.shape[0] for c in chunks] == [4, 4] and real == [4, 1]
    assert np.array_equal(chunks[1], np.repeat(x[4:], 4, 0))
    engine.input_shape, engine.batch_range = [-1, 3, 2, 2], [2, 2, 3]  # dynamic 2..3
    chunks, real = bundle_run.batches(x, engine)
    assert [c.shape[0] for c in chunks] == [3, 2] and real == [3, 2]
    chunks, real = bundle_run.batches(x[:1], engine)
    assert [c.shape[0] for c in chunks] == [2] and real == [1]


def test_min_cuda_for_ptx():
    assert min_cuda_for_ptx("8.4") == "12.4"
    assert min_cuda_for_ptx("7.4") == "11.4"
    assert min_cuda_for_ptx("9.0") == "13.0"


# ---------------------------------------------------------------------------- refusals


@needs_rtx
def test_bundle_copies_given_engines_and_labels(built_bundle, tmp_path):
    (engine,) = built_bundle.glob("*.engine")
    labels = tmp_path / "labels.txt"
    labels.write_text("".join(f"digit {i}\n" for i in range(10)))
    out = tmp_path / "again"
    result, stdout, stderr = invoke("bundle", engine, "--labels", labels, "-o", out)
    assert result.exit_code == 0, stderr
    assert "(copied)" in stdout
    assert (out / engine.name).read_bytes() == engine.read_bytes()
    assert (out / "labels.txt").read_text() == labels.read_text()
    assert "labels.txt" in sums_of(out)
    assert "10 class names" in (out / "README.md").read_text()


@pytest.mark.parametrize("case, fragments", [
    ("exists", ["exists: a bundle is written into a new folder"]),
    ("no_target", ["is an export: give --target"]),
    ("jetson", ["sm_87 (Jetson Orin)", "device's own full TensorRT"]),
    ("v3", ["v3 form", "--plugin-form aot"]),
    ("bare_onnx", ["bare .onnx"]),
    ("labels", ["has 3 class names; the model has 10 classes"]),
    ("missing", ["does not exist"]),
])
def test_bundle_refusals_are_one_line_and_write_nothing(digits_export, tmp_path, case,
                                                       fragments):
    out = tmp_path / "bundle"
    args = [digits_export, "--target", TARGET, "--no-plugins"]
    if case == "exists":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "no_target":
        args = [digits_export]
    elif case == "jetson":
        if RTX is None:
            pytest.skip("the Jetson refusal names TensorRT-RTX's targets")
        args = [digits_export, "--target", "sm_86,sm_87"]
    elif case in ("v3", "bare_onnx"):
        engine = stand_in_engine(digits_export, tmp_path / "e.engine",
                                 plugin_form="v3" if case == "v3" else None,
                                 source=case != "bare_onnx")
        args = [engine]
    elif case == "labels":
        (tmp_path / "labels.txt").write_text("a\nb\nc\n")
        args += ["--labels", tmp_path / "labels.txt"]
    elif case == "missing":
        args = [tmp_path / "nowhere"]
    result, _, stderr = invoke("bundle", *args, "-o", out)
    assert_one_line_error(result, stderr, *fragments)
    if case == "exists":
        assert [p.name for p in out.iterdir()] == ["keep.txt"]
    else:
        assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bundle")]


def test_a_failed_build_leaves_nothing(digits_export, tmp_path, monkeypatch):
    """A build that fails after writing part of its engine: no folder, no temporary."""
    from ssmprune.engine import save
    from ssmprune.engine.errors import EngineBuildError
    from ssmprune.ship import bundle

    def failing_build(source, output, options, echo_level="none"):
        Path(output).write_bytes(b"half an engine")
        raise EngineBuildError("the build failed")

    monkeypatch.setattr(save, "build_to_file", failing_build)
    monkeypatch.setattr(bundle, "check_targets", lambda targets: (
        type("Flavour", (), {"name": "tensorrt_rtx"})(), list(targets)))
    with pytest.raises(EngineBuildError):
        bundle.make_bundle([str(digits_export)], tmp_path / "b",
                           bundle.BundleOptions(targets=("sm_86",), plugins=False))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- run.py's TensorRT
# part, against stand-ins for TensorRT and the CUDA driver (no GPU here): the buffers, the
# batches, the output as printed.


class FakeCuda:
    """Device memory as host arrays keyed by made-up pointers."""

    def __init__(self, arch="sm_86"):
        self.memory, self.next, self._arch = {}, 4096, arch

    def arch(self):
        return self._arch

    def driver_version(self):
        return (12, 4)

    def alloc(self, nbytes):
        self.next += 4096
        self.memory[self.next] = bytearray(nbytes)
        return self.next

    def free(self, ptr):
        del self.memory[ptr]

    def to_device(self, ptr, array):
        self.memory[ptr][:array.nbytes] = array.tobytes()

    def to_host(self, array, ptr):
        array[...] = np.frombuffer(bytes(self.memory[ptr][:array.nbytes]), array.dtype).reshape(
            array.shape)
        return array

    def stream_create(self):
        self.streams = getattr(self, "streams", set()) | {len(getattr(self, "streams", ())) + 7}
        return max(self.streams)

    def stream_destroy(self, stream):
        self.streams.remove(stream)

    def synchronize(self, stream):
        assert stream in self.streams


def fake_tensorrt(cuda: FakeCuda, version: str, weights: np.ndarray):
    """A TensorRT module whose engine computes logits = mean over pixels per channel @ weights."""
    from types import SimpleNamespace

    class Context:
        def __init__(self):
            self.shapes, self.addresses = {}, {}

        def set_input_shape(self, name, shape):
            self.shapes[name] = tuple(shape)
            return True

        def get_tensor_shape(self, name):
            return (self.shapes["images"][0], weights.shape[1])

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = ptr

        def execute_async_v3(self, stream):
            assert stream in cuda.streams  # never the default stream
            shape = self.shapes["images"]
            x = np.frombuffer(bytes(cuda.memory[self.addresses["images"]]), np.float32)
            x = x[:int(np.prod(shape))].reshape(shape)
            out = (x.mean(axis=(2, 3)) @ weights).astype(np.float32)
            cuda.memory[self.addresses["logits"]][:out.nbytes] = out.tobytes()
            return True

    class Engine:
        num_io_tensors = 2

        def get_tensor_name(self, i):
            return ("images", "logits")[i]

        def get_tensor_mode(self, name):
            return "in" if name == "images" else "out"

        def get_tensor_dtype(self, name):
            return np.float32

        def create_execution_context(self):
            return Context()

    class Runtime:
        def __init__(self, logger):
            self.engine_host_code_allowed = False

        def deserialize_cuda_engine(self, data):
            # TensorRT refuses a version-compatible plan's lean runtime unless allowed.
            if b"version-compatible" in data[:64] and not self.engine_host_code_allowed:
                return None
            return Engine()

    class Logger:
        WARNING = 2

        def __init__(self, level):
            pass

    return SimpleNamespace(__version__=version, Logger=Logger, Runtime=Runtime,
                           TensorIOMode=SimpleNamespace(INPUT="in"), nptype=lambda dtype: dtype)


@needs_rtx
def test_run_py_runs_an_engine_and_names_the_classes(bundle_copy, photos, monkeypatch,
                                                      capsys):
    """Three images through a batch-1 engine: three batches, each image its own logits,
    the classes named from labels.txt; then another TensorRT version, another GPU."""
    labels = [f"digit {i}" for i in range(10)]
    (bundle_copy / "labels.txt").write_text("\n".join(labels) + "\n")
    with open(bundle_copy / "SHA256SUMS", "a") as sums:
        sums.write(f"{hashlib.sha256((bundle_copy / 'labels.txt').read_bytes()).hexdigest()}"
                   "  labels.txt\n")
    version = engine_json(bundle_copy)["tensorrt"]["version"]
    weights = np.arange(30, dtype=np.float32).reshape(3, 10) / 10
    cuda = FakeCuda()
    monkeypatch.setattr(bundle_run, "Cuda", lambda: cuda)
    monkeypatch.setattr(bundle_run, "import_tensorrt",
                        lambda flavour, v: fake_tensorrt(cuda, version, weights))
    images = [str(p) for p in photos[:3]]
    assert bundle_run.main([*images, "--top", "2", "--repeats", "2"], folder=bundle_copy) == 0
    out = capsys.readouterr().out.splitlines()
    engine = bundle_run.read_engine(bundle_copy, next(p.name for p in
                                                      bundle_copy.glob("*.engine.json")))
    x, _ = bundle_run.prepare_inputs(images, engine, resize=True)
    expected = bundle_run.top_k(x.mean(axis=(2, 3)) @ weights, 2)
    assert out[0].startswith(f"{engine.file}: vim_digits on sm_86 with TensorRT-RTX {version}")
    for line, name, best in zip(out[1:4], images, expected):
        shown = ", ".join(f"{c} (digit {c}): {p:.4f}" for c, p in best)
        assert line == f"{name}: top-2 classes {shown}"
    assert out[4].startswith("latency ") and "batch of 1 (median of 2)" in out[4]
    assert cuda.memory == {}  # every buffer freed

    monkeypatch.setattr(bundle_run, "import_tensorrt",
                        lambda flavour, v: fake_tensorrt(cuda, "1.8.0.1", weights))
    assert bundle_run.main(images[:1], folder=bundle_copy) == 2
    assert "this machine has 1.8.0.1" in capsys.readouterr().err
    monkeypatch.setattr(bundle_run, "Cuda", lambda: FakeCuda("sm_90"))
    monkeypatch.setattr(bundle_run, "import_tensorrt",
                        lambda flavour, v: fake_tensorrt(cuda, version, weights))
    assert bundle_run.main(images[:1], folder=bundle_copy) == 2
    assert "built for sm_86, this GPU is sm_90" in capsys.readouterr().err


def test_run_py_picks_the_engine_for_this_gpu():
    def engine(file, targets, hardware_compatible=False):
        return bundle_run.Engine(
            file=file, flavour="tensorrt_rtx", version="1", version_compatible=False,
            targets=targets, built_on=None, hardware_compatible=hardware_compatible,
            plugin_form=None, ptx_version=None, input_name="images", input_shape=[1, 3, 2, 2],
            batch_range=None, img_size=2, in_chans=3, mean=[0.0] * 3, std=[1.0] * 3, model="m")

    engines = [engine("a.sm_86.engine", ["sm_86"]), engine("a.sm_89.engine", ["sm_89"])]
    assert bundle_run.pick_engine(engines, None, "sm_89").file == "a.sm_89.engine"
    assert bundle_run.pick_engine(engines, "a.sm_86.engine", "sm_89").file == "a.sm_86.engine"
    assert bundle_run.pick_engine(engines, None, None) is None  # not known before the GPU is
    with pytest.raises(bundle_run.BundleError, match="no engine of this bundle is built for"):
        bundle_run.pick_engine(engines, None, "sm_120")
    with pytest.raises(bundle_run.BundleError, match="--engine b: not an engine"):
        bundle_run.pick_engine(engines, "b", "sm_86")
    assert bundle_run.engine_runs_on(engine("h", None, hardware_compatible=True), "sm_90")
    assert not bundle_run.engine_runs_on(engine("h", None, hardware_compatible=True), "sm_75")
    # Engines are not portable across platforms: not onto a Jetson's integrated GPU.
    assert not bundle_run.engine_runs_on(engine("h", None, hardware_compatible=True), "sm_87")


def _engine_file(tmp_path, data: bytes, version_compatible: bool):
    (tmp_path / "e.engine").write_bytes(data)
    engine = bundle_run.Engine(
        file="e.engine", flavour="tensorrt", version="10.13.0.35",
        version_compatible=version_compatible, targets=["sm_86"], built_on="sm_86",
        hardware_compatible=False, plugin_form=None, ptx_version=None, input_name="images",
        input_shape=[-1, 3, 2, 2], batch_range=[1, 2, 4], img_size=2, in_chans=3,
        mean=[0.0] * 3, std=[1.0] * 3, model="m")
    return engine, hashlib.sha256(data).hexdigest()


def test_run_py_allows_a_version_compatible_engine_its_lean_runtime(tmp_path):
    """TensorRT runs the lean runtime inside a version-compatible plan only when allowed."""
    weights = np.eye(3, 10, dtype=np.float32)
    x = np.ones((3, 3, 2, 2), np.float32)
    cuda = FakeCuda()
    trt = fake_tensorrt(cuda, "10.13.0.35", weights)
    engine, digest = _engine_file(tmp_path, b"version-compatible plan", True)
    logits, _, batch = bundle_run.run_engine(trt, cuda, tmp_path, engine, digest, x, 1)
    assert batch == 3 and np.allclose(logits, x.mean(axis=(2, 3)) @ weights)
    assert cuda.memory == {} and cuda.streams == set()  # buffers and stream released
    engine, digest = _engine_file(tmp_path, b"version-compatible plan", False)
    with pytest.raises(bundle_run.BundleError, match="could not deserialize"):
        bundle_run.run_engine(trt, cuda, tmp_path, engine, digest, x, 1)


def test_run_py_refuses_a_shape_the_engine_does_not_take(tmp_path, monkeypatch):
    cuda = FakeCuda()
    trt = fake_tensorrt(cuda, "10.13.0.35", np.eye(3, 10, dtype=np.float32))
    engine, digest = _engine_file(tmp_path, b"plan", False)
    context = trt.Runtime(None).deserialize_cuda_engine(b"plan").create_execution_context()
    monkeypatch.setattr(type(context), "set_input_shape", lambda self, name, shape: False)
    with pytest.raises(bundle_run.BundleError, match="does not take a batch of 3"):
        bundle_run.run_engine(trt, cuda, tmp_path, engine, digest,
                              np.ones((3, 3, 2, 2), np.float32), 1)
    assert cuda.memory == {}


@needs_rtx
def test_run_py_refuses_an_engine_its_manifest_does_not_describe(bundle_copy):
    """Both listed with matching sums, but the manifest names another engine's sha256."""
    import json

    (path,) = bundle_copy.glob("*.engine.json")
    data = json.loads(path.read_text())
    data["engine"]["sha256"] = "0" * 64
    path.write_text(json.dumps(data))
    sums = (bundle_copy / "SHA256SUMS").read_text().splitlines()
    new = hashlib.sha256(path.read_bytes()).hexdigest()
    (bundle_copy / "SHA256SUMS").write_text("".join(
        (f"{new}  {path.name}" if s.endswith(path.name) else s) + "\n" for s in sums))
    line = _one_error_line(run_clean(bundle_copy / "run.py", "--check"))
    assert "its manifest records another sha256" in line
