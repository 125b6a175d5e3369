"""Tests of the FID Inception-v3 (ebgan_jax/inception.py) and of scoring with it.

The real weights cannot be downloaded here, so the port is checked against
pytorch-fid itself on random weights: tests/fixtures/make_inception_fixtures.py
ran pytorch-fid 0.3.0's InceptionV3 (torch CPU) on weights drawn by its
`random_state_dict(seed)` and saved the features; these tests draw the same
weights with NumPy, write them as a torch .pth file (`write_torch_file`, no
torch needed), load that file as the evaluator does and compare.
"""

import json
import pathlib
import struct
import subprocess
import sys
import zipfile

import ml_collections
import numpy as np
import pytest

from ebgan_jax import evaluation, inception, metrics
from experiments import evaluate
from experiments.configs import tiny
from tests.fixtures import make_inception_fixtures as fixtures
from tests.test_classifier import pattern_digits, write_pattern_idx_dir

REPO = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "fixtures"
# One compiled shape for every test: batches of 4 images at 299x299.
BATCH = 4

_STORAGES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


def write_torch_file(path, arrays: dict) -> None:
  """A state dict of float32 / int64 arrays in torch.save's zip format, written without torch.

  data.pkl is a protocol-2 pickle of an OrderedDict of
  torch._utils._rebuild_tensor_v2(storage, 0, shape, strides, False, OrderedDict()),
  each storage a persistent id ("storage", torch.<Type>Storage, key, "cpu", numel)
  whose bytes are the archive's data/<key>.
  """
  out = bytearray(b"\x80\x02")

  def text(value):
    encoded = value.encode()
    out.extend(b"X" + struct.pack("<I", len(encoded)) + encoded)

  def global_(module, name):
    out.extend(b"c" + f"{module}\n{name}\n".encode())

  def integers(values):
    out.extend(b"(" + b"".join(b"J" + struct.pack("<i", v) for v in values) + b"t")

  global_("collections", "OrderedDict")
  out.extend(b")R(")  # OrderedDict(), then the MARK of its items
  for key, (name, array) in enumerate(arrays.items()):
    text(name)
    global_("torch._utils", "_rebuild_tensor_v2")
    out.extend(b"((")
    text("storage")
    global_("torch", _STORAGES[array.dtype])
    text(str(key))
    text("cpu")
    out.extend(b"J" + struct.pack("<i", array.size) + b"tQ")  # the persistent id
    out.extend(b"J" + struct.pack("<i", 0))
    integers(array.shape)
    integers([int(np.prod(array.shape[i + 1:])) for i in range(array.ndim)])  # C order
    out.extend(b"\x89")  # requires_grad False
    global_("collections", "OrderedDict")
    out.extend(b")RtR")  # backward hooks, then the call
  out.extend(b"u.")
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", bytes(out))
    archive.writestr("archive/byteorder", "little")
    archive.writestr("archive/version", "3")
    for key, array in enumerate(arrays.values()):
      archive.writestr(f"archive/data/{key}", array.tobytes(order="C"))


@pytest.fixture(scope="module")
def expected():
  with np.load(FIXTURES / "inception_features.npz") as saved:
    return dict(saved)


@pytest.fixture(scope="module")
def random_weights():
  return fixtures.random_state_dict(inception.torch_shapes(), fixtures.WEIGHTS_SEED)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory, random_weights):
  """pytorch-fid's layout with the fixture's random weights, as a torch .pth file (95 MB)."""
  path = tmp_path_factory.mktemp("weights") / "random_inception.pth"
  write_torch_file(path, {**random_weights,
                          "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(0, np.int64)})
  return path


@pytest.fixture(scope="module")
def extractor(weights_file):
  return inception.FeatureExtractor(inception.load_variables(str(weights_file), sha256=None),
                                    batch_size=BATCH)


# --- The port ----------------------------------------------------------------------


def test_the_state_dict_is_pytorch_fids(expected):
  shapes = inception.torch_shapes()
  assert sorted(shapes) == list(expected["keys"])
  assert [str(shapes[key]) for key in sorted(shapes)] == list(expected["shapes"])
  assert sum(np.prod(shape) for shape in shapes.values()) == 23_885_392


def test_features_equal_pytorch_fids_on_random_weights(extractor, expected):
  outputs = extractor(fixtures.fixture_images())
  assert outputs["pool"].shape == (3, inception.FEATURE_DIM)
  assert outputs["logits"].shape == (3, inception.NUM_LOGITS)
  scale = np.abs(expected["pool"]).max()
  assert 1 < scale < 1e3  # the random net neither vanished nor exploded
  # float32 through 94 layers; measured: 2.3e-5 absolute, 6e-7 of the largest feature.
  np.testing.assert_allclose(outputs["pool"], expected["pool"], rtol=0, atol=2e-5 * scale)
  np.testing.assert_allclose(outputs["logits"], expected["logits"], rtol=0,
                             atol=2e-5 * np.abs(expected["logits"]).max())
  bias = extractor.variables["params"]["fc"]["bias"]
  np.testing.assert_allclose(outputs["logits_unbiased"], outputs["logits"] - bias, atol=1e-4)


def test_bilinear_resize_equals_torch_interpolate(expected):
  for i, ((height, width), (out_height, out_width)) in enumerate(fixtures.RESIZE_CASES):
    image = fixtures.resize_inputs()[i]
    resized = inception.resize(image, inception.bilinear_matrix(height, out_height),
                               inception.bilinear_matrix(width, out_width))
    np.testing.assert_allclose(resized, expected[f"resized_{i}"], rtol=0, atol=1e-6)


def test_inception_input_maps_pixels_to_signed_rgb_at_299():
  gray = np.full((2, 28, 28, 1), 255, np.uint8)
  gray[:, :, :14] = 0
  x = np.asarray(inception.to_inception_input(gray))
  assert x.shape == (2, 299, 299, 3) and x.min() == -1.0 and x.max() == 1.0
  np.testing.assert_array_equal(x[..., 0], x[..., 2])
  floats = gray.astype(np.float32) / 127.5 - 1
  np.testing.assert_allclose(inception.to_inception_input(floats), x, atol=1e-6)


# --- Weights files -----------------------------------------------------------------


def test_reads_files_torch_wrote_in_both_formats():
  weight = np.arange(12, dtype=np.float32).reshape(3, 4) / 4
  for name in ("torch_state_dict.pth", "torch_state_dict_legacy.pth"):
    state = inception.read_torch_file(str(FIXTURES / name))
    assert list(state) == ["layer.weight", "layer.weight_t", "layer.row", "half", "double",
                           "bn.num_batches_tracked", "mask", "bytes", "bf16", "param"]
    np.testing.assert_array_equal(state["layer.weight"], weight)
    np.testing.assert_array_equal(state["layer.weight_t"], weight.T)
    np.testing.assert_array_equal(state["layer.row"], weight[1])
    assert state["half"].dtype == np.float16
    np.testing.assert_array_equal(state["half"], np.linspace(-2, 2, 5, dtype=np.float16))
    assert state["double"].dtype == np.float64 and state["double"].tolist() == [[1.5, -2.25]]
    assert state["bn.num_batches_tracked"].shape == () and state["bn.num_batches_tracked"] == 7
    assert state["mask"].tolist() == [True, False, True]
    assert state["bytes"].dtype == np.uint8 and state["bytes"].tolist() == list(range(250, 256))
    assert np.asarray(state["bf16"], np.float32).tolist() == [1.0, -0.5, 3.0]
    np.testing.assert_array_equal(state["param"], np.ones((2, 2), np.float32))


def test_reads_back_what_it_wrote(tmp_path):
  arrays = {"a.weight": np.random.default_rng(0).normal(size=(3, 2, 5)).astype(np.float32),
            "a.count": np.array(3, np.int64)}
  write_torch_file(tmp_path / "small.pth", arrays)
  state = inception.read_torch_file(str(tmp_path / "small.pth"))
  assert set(state) == set(arrays)
  for name, array in arrays.items():
    assert state[name].dtype == array.dtype
    np.testing.assert_array_equal(state[name], array)


def test_a_pickle_naming_other_code_is_refused(tmp_path):
  path = tmp_path / "evil.pth"
  with zipfile.ZipFile(path, "w") as archive:
    archive.writestr("archive/data.pkl", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueR.")
  with pytest.raises(inception.WeightsError, match="os.system is not part of a state dict"):
    inception.read_torch_file(str(path))
  # A tensor larger than its storage would read memory outside it.
  write_torch_file(tmp_path / "fits.pth", {"w": np.zeros(4, np.float32)})
  too_big = tmp_path / "too_big.pth"
  with zipfile.ZipFile(tmp_path / "fits.pth") as fits, zipfile.ZipFile(too_big, "w") as archive:
    for name in fits.namelist():
      archive.writestr(name, np.zeros(2, np.float32).tobytes() if name == "archive/data/0"
                       else fits.read(name))
  with pytest.raises(inception.WeightsError, match="does not fit its storage of 2"):
    inception.read_torch_file(str(too_big))
  (tmp_path / "text.pth").write_text("not a torch file")
  with pytest.raises(inception.WeightsError, match="cannot read"):
    inception.read_torch_file(str(tmp_path / "text.pth"))


def test_the_sha256_must_be_pytorch_fids(weights_file):
  with pytest.raises(inception.WeightsError) as error:
    inception.load_variables(str(weights_file))
  actual = inception.file_sha256(str(weights_file))
  assert f"has SHA-256 {actual[:16]}..., not 6726825d0af5f729..." in str(error.value)
  assert inception.FID_WEIGHTS_URL in str(error.value)
  assert inception.check_weights_file(str(weights_file), actual) == actual


def test_another_state_dict_is_refused(tmp_path):
  write_torch_file(tmp_path / "other.pth", {"fc.weight": np.zeros((10, 4), np.float32)})
  with pytest.raises(inception.WeightsError, match="not the FID Inception's state dict: missing"):
    inception.load_variables(str(tmp_path / "other.pth"), sha256=None)


def test_a_missing_file_says_where_to_get_it_and_where_to_put_it(tmp_path):
  with pytest.raises(inception.WeightsError) as error:
    inception.load_variables(str(tmp_path / "absent.pth"))
  message = str(error.value)
  assert "absent.pth does not exist" in message and inception.FID_WEIGHTS_URL in message
  assert "--config.inception_weights=PATH" in message and "EBGAN_INCEPTION_WEIGHTS" in message
  with pytest.raises(inception.WeightsError, match="no Inception weights given"):
    inception.load_variables(None)


def test_cli_without_the_weights_file_fails_in_one_line(tmp_path):
  images, _ = pattern_digits(20, seed=3)
  np.savez(tmp_path / "samples.npz", images=images)
  result = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", "--features=inception",
       f"--config.inception_weights={tmp_path / 'absent.pth'}",
       f"--samples={tmp_path / 'samples.npz'}"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr
  assert "Traceback" not in result.stderr
  [line] = [text for text in result.stderr.splitlines() if text.strip()]
  assert line.startswith("error: ") and "absent.pth does not exist" in line
  assert inception.FID_WEIGHTS_FILE in line


# --- Scores ------------------------------------------------------------------------


def low_rank_frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
  """metrics.frechet_feature_distance for fewer samples than dimensions, in O(N^2 d).

  With centred rows A (n, d) and B (m, d), sigma_a sigma_b has the nonzero
  eigenvalues of (A B^T)(A B^T)^T / ((n-1)(m-1)), so tr sqrt(sigma_a sigma_b)
  is the sum of A B^T's singular values over sqrt((n-1)(m-1)): no 2048 x 2048
  eigendecomposition (seconds on this CPU) for a handful of test images.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  centred_a, centred_b = a - a.mean(axis=0), b - b.mean(axis=0)
  trace_sqrt = np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum() / np.sqrt(
      (len(a) - 1) * (len(b) - 1))
  return float(np.sum((a.mean(axis=0) - b.mean(axis=0)) ** 2)
               + np.sum(centred_a ** 2) / (len(a) - 1) + np.sum(centred_b ** 2) / (len(b) - 1)
               - 2 * trace_sqrt)


def test_low_rank_frechet_distance_is_metrics_one():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(5, 64)), rng.normal(size=(4, 64)) + 0.3
  assert low_rank_frechet_distance(a, b) == pytest.approx(
      metrics.frechet_feature_distance(a, b), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_blur(extractor):
  images, _ = pattern_digits(BATCH, seed=0)
  real = extractor(images)["pool"]
  fid = [low_rank_frechet_distance(
      real, extractor(evaluation.gaussian_blur(images, sigma) if sigma else images)["pool"])
         for sigma in (0, 1, 2, 4)]
  assert fid[0] == pytest.approx(0.0, abs=1e-6 * fid[1])
  assert 0 < fid[1] < fid[2] < fid[3]


def test_reference_statistics_round_trip(tmp_path):
  features = np.random.default_rng(0).normal(size=(30, 5)).astype(np.float32)
  inception.save_reference(str(tmp_path / "ref.npz"), features, split="test", size="30")
  loaded, mu, sigma, metadata = inception.load_reference(str(tmp_path / "ref.npz"))
  np.testing.assert_array_equal(loaded, features)
  np.testing.assert_allclose(mu, features.astype(np.float64).mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(features.astype(np.float64), rowvar=False), rtol=1e-12)
  assert metadata == {"split": "test", "size": "30"}


def inception_config(idx_dir, weights_file, stats_dir, **eval_fields):
  config = tiny.get_config()
  config.idx_dir = str(idx_dir)
  config.inception_weights = str(weights_file)
  config.eval = ml_collections.ConfigDict({
      "features": "inception", "inception_sha256": "", "inception_stats_dir": str(stats_dir),
      "inception_batch_size": BATCH, "is_splits": 2, "kid_subsets": 3, **eval_fields})
  return config


def test_evaluator_caches_the_reference_per_split_and_size(tmp_path, weights_file, extractor,
                                                           monkeypatch):
  del extractor  # compiled already
  idx_dir = write_pattern_idx_dir(tmp_path / "idx", num_train=16, num_test=8)
  config = inception_config(idx_dir, weights_file, tmp_path / "stats",
                            inception_reference_size=0)
  evaluator = evaluation.Evaluator(config)
  assert evaluator.description["real"] == f"idx:{idx_dir} test split (8 images)"
  assert evaluator.description["inception_sha256"] == inception.file_sha256(str(weights_file))
  assert evaluator.description["resize"] == inception.RESIZE
  assert evaluator.network.startswith(f"Inception-v3 {weights_file} (sha256 ")
  [saved] = (tmp_path / "stats").iterdir()
  assert saved.name.startswith("mnist_test_")
  features, mu, _, metadata = inception.load_reference(str(saved))
  assert features.shape == (8, inception.FEATURE_DIM) and mu.shape == (inception.FEATURE_DIM,)
  assert metadata["split"] == "test" and metadata["source"] == f"idx:{idx_dir}"

  # A second evaluator reads the saved features without loading the data.
  with monkeypatch.context() as patch:
    patch.setattr(evaluation.data, "load_split", lambda *args: pytest.fail("recomputed"))
    again = evaluation.Evaluator(config)
  np.testing.assert_array_equal(again._real_features, evaluator._real_features)

  train = evaluation.Evaluator(inception_config(
      idx_dir, weights_file, tmp_path / "stats", inception_split="train",
      inception_reference_size=8))
  assert train.description["real"] == f"idx:{idx_dir} train split (8 images)"
  assert len(list((tmp_path / "stats").iterdir())) == 2


def test_evaluate_scores_the_test_split_against_itself_with_inception(tmp_path, weights_file,
                                                                      extractor):
  del extractor  # compiled already
  idx_dir = write_pattern_idx_dir(tmp_path / "idx", num_train=16, num_test=8)
  config = inception_config(idx_dir, weights_file, tmp_path / "stats",
                            inception_reference_size=0, features="classifier")
  test_images, _ = evaluation.data.load_split(config, "test")
  np.savez(tmp_path / "samples.npz", images=test_images)
  [line] = evaluate.run(config, samples=str(tmp_path / "samples.npz"), features="inception")
  json.dumps(line)  # a JSON line
  assert line["features"] == "inception" and line["num_samples"] == 8
  assert line["inception_weights"] == str(weights_file)
  assert line["real"] == f"idx:{idx_dir} test split (8 images)"
  assert line["fid"] == pytest.approx(0.0, abs=1e-2)
  assert line["precision"] == line["recall"] == line["coverage"] == 1.0
  assert line["inception_score"] >= 1.0
  assert {"kid", "log_is", "i_prime", "i_prime_torch"} <= set(line)
  assert "class_histogram" not in line and "classes_1pct" not in line
