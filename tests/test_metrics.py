"""Tests of ebgan_jax.metrics on constructed inputs whose answers are known in closed form."""

import itertools
import math
import re

from hypothesis import given, settings
from hypothesis import strategies as st
import numpy as np
import pytest
from scipy import special

from ebgan_jax import metrics


def random_spd(rng, d):
  """A random symmetric positive-definite d x d matrix."""
  a = rng.normal(size=(d, d))
  return a @ a.T + 0.1 * np.eye(d)


# --- Inception Score ------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 10, 1000])
def test_inception_score_of_confident_uniform_predictions_is_the_class_count(num_classes):
  # Every split holds each class equally often, one-hot.
  labels = np.arange(10 * num_classes) % num_classes
  mean, std = metrics.inception_score(np.eye(num_classes)[labels], num_splits=10)
  assert mean == pytest.approx(num_classes, rel=1e-12)
  assert std == pytest.approx(0.0, abs=1e-9)


@given(st.integers(2, 20), st.integers(0, 2**31 - 1))
@settings(max_examples=20)
def test_inception_score_of_identical_predictions_is_one(num_classes, seed):
  p = np.random.default_rng(seed).dirichlet(np.ones(num_classes))
  mean, std = metrics.inception_score(np.tile(p, (50, 1)), num_splits=10)
  assert mean == pytest.approx(1.0, abs=1e-12) and std == pytest.approx(0.0, abs=1e-12)


def test_inception_score_of_two_soft_classes_follows_its_definition():
  # Half the samples predict (0.9, 0.1), half (0.1, 0.9): p(y) = (0.5, 0.5).
  p = np.array([[0.9, 0.1], [0.1, 0.9]] * 10)
  expected = math.exp(0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5))
  assert metrics.inception_score(p, num_splits=2)[0] == pytest.approx(expected, rel=1e-12)


@given(st.integers(2, 12), st.integers(0, 2**31 - 1))
@settings(max_examples=20)
def test_inception_score_lies_between_one_and_the_class_count(num_classes, seed):
  p = np.random.default_rng(seed).dirichlet(np.full(num_classes, 0.3), size=40)
  mean, _ = metrics.inception_score(p, num_splits=4)
  assert 1.0 - 1e-9 <= mean <= num_classes + 1e-9


def test_inception_score_rejects_fewer_samples_than_splits():
  with pytest.raises(ValueError, match="N >= num_splits"):
    metrics.inception_score(np.eye(3), num_splits=10)


# --- Frechet distance ---------------------------------------------------------------


def test_frechet_distance_of_a_set_with_itself_is_zero():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(500, 16)) @ rng.normal(size=(16, 16))
  assert metrics.frechet_feature_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_a_set_with_itself_is_zero_for_singular_covariances():
  # 20 samples of 64-dimensional ReLU features: rank <= 19, many dead units.
  features = np.maximum(np.random.default_rng(1).normal(size=(20, 64)) - 0.5, 0.0)
  assert metrics.frechet_feature_distance(features, features) == pytest.approx(0.0, abs=1e-8)


def test_frechet_distance_of_diagonal_gaussians_matches_the_closed_form():
  rng = np.random.default_rng(2)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  var1, var2 = rng.uniform(0.1, 3.0, size=8), rng.uniform(0.1, 3.0, size=8)
  # Commuting covariances: tr((S1 S2)^(1/2)) = sum sqrt(var1 var2).
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(var1) - np.sqrt(var2)) ** 2)
  assert metrics.frechet_distance(mu1, np.diag(var1), mu2, np.diag(var2)) == pytest.approx(
      expected, rel=1e-10)


@given(st.integers(0, 2**31 - 1))
@settings(max_examples=30)
def test_frechet_distance_of_two_dimensional_gaussians_matches_the_closed_form(seed):
  rng = np.random.default_rng(seed)
  mu1, mu2 = rng.normal(size=2), rng.normal(size=2)
  sigma1, sigma2 = random_spd(rng, 2), random_spd(rng, 2)
  # For a 2x2 matrix A with non-negative eigenvalues, tr(A^(1/2)) = sqrt(tr A + 2 sqrt(det A)),
  # and here A = sigma1 sigma2 need not be symmetric.
  trace_sqrt = math.sqrt(np.trace(sigma1 @ sigma2)
                         + 2 * math.sqrt(np.linalg.det(sigma1) * np.linalg.det(sigma2)))
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)
  assert metrics.frechet_distance(mu1, sigma1, mu2, sigma2) == pytest.approx(
      expected, rel=1e-8, abs=1e-10)


def test_frechet_distance_of_samples_approaches_that_of_their_gaussians():
  rng = np.random.default_rng(3)
  mu1, mu2 = np.zeros(4), np.full(4, 0.5)
  sigma1, sigma2 = random_spd(rng, 4), random_spd(rng, 4)
  exact = metrics.frechet_distance(mu1, sigma1, mu2, sigma2)
  x = rng.multivariate_normal(mu1, sigma1, size=200_000)
  y = rng.multivariate_normal(mu2, sigma2, size=200_000)
  assert metrics.frechet_feature_distance(x, y) == pytest.approx(exact, rel=0.02)


def test_frechet_distance_is_symmetric():
  rng = np.random.default_rng(4)
  x, y = rng.normal(size=(300, 6)), rng.normal(1.0, 2.0, size=(300, 6))
  assert metrics.frechet_feature_distance(x, y) == pytest.approx(
      metrics.frechet_feature_distance(y, x), rel=1e-9)


def test_frechet_distance_rejects_a_matrix_that_is_not_a_covariance():
  rng = np.random.default_rng(5)
  sigma = random_spd(rng, 3)
  with pytest.raises(ValueError, match="would be complex"):
    metrics.frechet_distance(np.zeros(3), sigma, np.zeros(3), -sigma)
  with pytest.raises(ValueError, match="not symmetric"):
    metrics.frechet_distance(np.zeros(3), sigma + np.triu(np.ones((3, 3))), np.zeros(3), sigma)
  with pytest.raises(ValueError, match="of one d"):
    metrics.frechet_distance(np.zeros(3), sigma, np.zeros(2), np.eye(2))


# --- KID -------------------------------------------------------------------------


def mmd2_by_loops(x, y):
  """The unbiased MMD^2 estimator written out term by term."""
  def k(a, b):
    return (np.dot(a, b) / len(a) + 1.0) ** 3
  m, n = len(x), len(y)
  within_x = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  within_y = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  across = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return within_x + within_y - 2 * across


def test_mmd2_unbiased_matches_its_formula():
  rng = np.random.default_rng(6)
  x, y = rng.normal(size=(7, 3)), rng.normal(0.3, 1.2, size=(9, 3))
  assert metrics.mmd2_unbiased(x, y) == pytest.approx(mmd2_by_loops(x, y), rel=1e-10)


def test_kid_is_unbiased_for_two_draws_of_one_distribution():
  # The mean of independent estimates is within sampling error of 0; the
  # biased (V-statistic) estimator would sit well above it at this size.
  rng = np.random.default_rng(7)
  estimates = [metrics.mmd2_unbiased(rng.normal(size=(20, 4)), rng.normal(size=(20, 4)))
               for _ in range(400)]
  standard_error = np.std(estimates) / math.sqrt(len(estimates))
  assert abs(np.mean(estimates)) < 4 * standard_error
  # Some single estimates are negative, as an unbiased estimate of 0 must be.
  assert min(estimates) < 0


def test_kid_separates_shifted_distributions_from_equal_ones():
  rng = np.random.default_rng(8)
  real = rng.normal(size=(2000, 8))
  same, _ = metrics.kernel_inception_distance(real, rng.normal(size=(2000, 8)),
                                              num_subsets=20, subset_size=500)
  shifted, shifted_std = metrics.kernel_inception_distance(
      real, rng.normal(0.5, 1.0, size=(2000, 8)), num_subsets=20, subset_size=500)
  assert abs(same) < 0.01
  assert shifted > 0.05 and shifted > 10 * shifted_std / math.sqrt(20)


def test_kid_subsets_are_seeded():
  rng = np.random.default_rng(9)
  x, y = rng.normal(size=(300, 4)), rng.normal(size=(300, 4))
  run = lambda seed: metrics.kernel_inception_distance(x, y, num_subsets=5, subset_size=50,
                                                       seed=seed)
  assert run(0) == run(0) and run(0) != run(1)


# --- Precision, recall, density, coverage ------------------------------------------


def prdc_by_loops(real, fake, k):
  """Naeem et al. (2020), Eqs. 1-4, written out with explicit loops."""
  def radius(points, i):
    distances = sorted(np.linalg.norm(points[i] - points[j]) for j in range(len(points)) if j != i)
    return distances[k - 1]
  real_radii = [radius(real, i) for i in range(len(real))]
  fake_radii = [radius(fake, j) for j in range(len(fake))]
  inside = [[np.linalg.norm(f - r) <= real_radii[i] for i, r in enumerate(real)] for f in fake]
  return {
      "precision": np.mean([any(row) for row in inside]),
      "recall": np.mean([any(np.linalg.norm(r - f) <= fake_radii[j] for j, f in enumerate(fake))
                         for r in real]),
      "density": sum(map(sum, inside)) / (k * len(fake)),
      "coverage": np.mean([any(row[i] for row in inside) for i in range(len(real))]),
  }


def test_prdc_matches_its_definition(monkeypatch):
  # Small chunks, so that the chunked loops of the implementation are exercised.
  monkeypatch.setattr(metrics, "_PRDC_CHUNK", 7)
  rng = np.random.default_rng(10)
  real, fake = rng.normal(size=(40, 3)), rng.normal(0.5, 1.3, size=(33, 3))
  result = metrics.precision_recall_density_coverage(real, fake, k=3)
  expected = prdc_by_loops(real, fake, k=3)
  assert result == pytest.approx(expected, abs=1e-12)


def test_prdc_of_a_set_with_itself():
  features = np.random.default_rng(11).normal(size=(500, 10))
  result = metrics.precision_recall_density_coverage(features, features, k=5)
  assert result["precision"] == result["recall"] == result["coverage"] == 1.0
  assert 0.5 < result["density"] < 2.0


def test_prdc_of_far_away_samples_is_zero():
  rng = np.random.default_rng(12)
  real = rng.normal(size=(300, 10))
  fake = rng.normal(size=(300, 10)) + 100.0
  assert metrics.precision_recall_density_coverage(real, fake) == {
      "precision": 0.0, "recall": 0.0, "density": 0.0, "coverage": 0.0}


def test_mode_collapsed_samples_keep_precision_but_lose_recall_and_coverage():
  rng = np.random.default_rng(13)
  real = rng.normal(size=(1000, 2))
  collapsed = rng.normal(scale=0.05, size=(1000, 2))  # all near one real point: the origin
  result = metrics.precision_recall_density_coverage(real, collapsed)
  assert result["precision"] > 0.99
  assert result["recall"] < 0.05 and result["coverage"] < 0.05


def test_precomputed_real_radii_give_the_same_result():
  rng = np.random.default_rng(14)
  real, fake = rng.normal(size=(200, 4)), rng.normal(0.2, 1.0, size=(150, 4))
  radii = metrics.nearest_neighbour_radii(real, 5)
  assert metrics.precision_recall_density_coverage(real, fake, real_radii=radii) == (
      metrics.precision_recall_density_coverage(real, fake))


def test_nearest_neighbour_radii_on_a_line():
  # Points 0, 1, 3, 6, 10: the 2nd-nearest other point of each.
  points = np.array([[0.0], [1.0], [3.0], [6.0], [10.0]])
  np.testing.assert_allclose(metrics.nearest_neighbour_radii(points, 2), [3, 2, 3, 4, 7])
  with pytest.raises(ValueError, match="1 <= k < N"):
    metrics.nearest_neighbour_radii(points, 5)


# --- Class and mode counts --------------------------------------------------------------


def test_class_histogram_counts_argmax_predictions():
  probabilities = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.3, 0.5], [0.0, 0.9, 0.1]])
  np.testing.assert_array_equal(metrics.class_histogram(probabilities), [1, 2, 1])
  # Classes nobody predicts still have their zero count.
  np.testing.assert_array_equal(metrics.class_histogram(np.eye(5)[[0, 0, 3]]), [2, 0, 0, 1, 0])


def test_classes_above_one_percent():
  counts = np.array([500, 300, 190, 10, 0])  # 1000 samples: 10 is exactly 1%
  assert metrics.classes_above(counts, 0.01) == 4
  assert metrics.classes_above(counts, 0.2) == 2


def test_kl_to_uniform():
  assert metrics.kl_to_uniform([7, 7, 7, 7]) == pytest.approx(0.0, abs=1e-15)
  assert metrics.kl_to_uniform([0, 12, 0, 0]) == pytest.approx(math.log(4), rel=1e-12)
  # q = (1/2, 1/4, 1/4, 0) against 1/4 each: (1/2) log 2.
  assert metrics.kl_to_uniform([2, 1, 1, 0]) == pytest.approx(0.5 * math.log(2), rel=1e-12)


def test_stacked_mode_labels_read_the_channel_digits_as_a_number():
  triples = np.array([[3, 0, 7], [0, 0, 0], [9, 9, 9], [0, 0, 1], [1, 0, 0]])
  np.testing.assert_array_equal(metrics.stacked_mode_labels(triples), [307, 0, 999, 1, 100])
  all_triples = np.array(list(itertools.product(range(10), repeat=3)))
  np.testing.assert_array_equal(metrics.stacked_mode_labels(all_triples), np.arange(1000))


def test_stacked_mode_probabilities_are_the_product_of_the_channels():
  rng = np.random.default_rng(15)
  channel_probabilities = rng.dirichlet(np.ones(10), size=(50, 3))
  joint = np.exp(metrics.stacked_mode_log_probabilities(np.log(channel_probabilities)))
  assert joint.shape == (50, 1000)
  np.testing.assert_allclose(joint.sum(axis=1), 1.0, rtol=1e-12)
  triple = np.array([4, 2, 8])
  np.testing.assert_allclose(joint[:, 428], np.prod(channel_probabilities[:, [0, 1, 2], triple],
                                                    axis=1), rtol=1e-12)
  np.testing.assert_array_equal(
      np.argmax(joint, axis=1),
      metrics.stacked_mode_labels(np.argmax(channel_probabilities, axis=2)))


def test_mode_coverage_on_hand_built_stacked_triples():
  # 3 modes: 307 twice, 0 once, 999 once; 997 modes never produced.
  modes = metrics.stacked_mode_labels([[3, 0, 7], [3, 0, 7], [0, 0, 0], [9, 9, 9]])
  result = metrics.mode_coverage(modes, 1000)
  assert result["modes_covered"] == 3
  # q = (1/2, 1/4, 1/4): KL = sum q log(1000 q).
  expected = 0.5 * math.log(500) + 2 * 0.25 * math.log(250)
  assert result["kl_modes_to_uniform"] == pytest.approx(expected, rel=1e-12)
  every_mode = metrics.mode_coverage(np.arange(1000).repeat(3), 1000)
  assert every_mode["modes_covered"] == 1000
  assert every_mode["kl_modes_to_uniform"] == pytest.approx(0.0, abs=1e-12)


def test_mode_coverage_rejects_labels_outside_the_modes():
  with pytest.raises(ValueError, match=r"lie in \[0, 1000\)"):
    metrics.mode_coverage([5, 1000], 1000)


# ------------------------------------------------------------- I' and log-IS


def _one_hot(labels, num_classes=10):
  return np.eye(num_classes)[labels]


def test_i_prime_is_zero_when_every_prediction_is_the_marginal():
  rng = np.random.default_rng(0)
  row = rng.dirichlet(np.ones(10))
  assert metrics.i_prime(np.tile(row, (50, 1))) == pytest.approx(0.0, abs=1e-12)
  assert metrics.log_inception_score(np.tile(row, (50, 1))) == pytest.approx(0.0, abs=1e-12)


def test_i_prime_of_confident_balanced_predictions_is_the_clipped_bound():
  """One-hot rows spread evenly over C classes: p(y) = 1/C, so each sample's KL is
  (C - 1)/C * log((1/C) / clip) + (1/C) * log(1/C)."""
  probabilities = _one_hot(np.arange(100) % 10)
  clip, c = 1e-6, 10
  expected = (c - 1) / c * np.log(1 / (c * clip)) + np.log(1 / c) / c
  assert metrics.i_prime(probabilities, clip) == pytest.approx(expected, rel=1e-9)
  assert metrics.log_inception_score(probabilities) == pytest.approx(np.log(c), rel=1e-9)
  # A looser clip caps it lower: the clip sets the scale, and results name it.
  assert metrics.i_prime(probabilities, 1e-3) < expected


def test_i_prime_grows_with_confidence_and_balance():
  rng = np.random.default_rng(1)
  labels = np.arange(200) % 10
  scores = []
  for confidence in (0.2, 0.5, 0.9, 0.999):
    p = np.full((200, 10), (1 - confidence) / 9)
    p[np.arange(200), labels] = confidence
    scores.append(metrics.i_prime(p))
  assert scores == sorted(scores) and scores[0] > 0
  # Confident but collapsed onto one class: p(y) is that class, and I' is ~0 again.
  collapsed = _one_hot(np.zeros(200, int))
  assert metrics.i_prime(collapsed) == pytest.approx(0.0, abs=1e-9)
  # Half the classes, confidently: less than all ten.
  half = _one_hot(rng.integers(0, 5, 200))
  assert 0 < metrics.i_prime(half) < metrics.i_prime(_one_hot(labels))


def test_log_inception_score_is_the_log_of_one_split_inception_score():
  p = np.random.default_rng(2).dirichlet(np.full(10, 0.3), size=300)
  mean, _ = metrics.inception_score(p, num_splits=1)
  assert metrics.log_inception_score(p) == pytest.approx(np.log(mean), rel=1e-12)


@pytest.mark.parametrize("bad, message", [(np.ones(10), "(N, C)"), (np.ones((0, 10)), "(N, C)")])
def test_i_prime_rejects_bad_shapes(bad, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    metrics.i_prime(bad)
  with pytest.raises(ValueError, match=re.escape(message)):
    metrics.log_inception_score(bad)


# ------------------------------------------------- I' as Torch7's DistKLDivCriterion


def _torch_dist_kl_div(input_, target):
  """Torch7's nn.DistKLDivCriterion forward with its default sizeAverage, written out:
  sum over elements of target * (log target - input), target > 0 only, over their number."""
  terms = [t * (math.log(t) - x) if t > 0 else 0.0 for x, t in zip(input_.flat, target.flat)]
  return sum(terms) / input_.size


def test_i_prime_torch_is_zero_when_every_prediction_is_the_marginal():
  logits = np.tile(np.random.default_rng(3).normal(size=10), (50, 1))
  assert metrics.i_prime_torch(logits) == pytest.approx(0.0, abs=1e-12)


def test_i_prime_torch_is_finite_without_a_clip_on_confident_logits():
  labels = np.arange(100) % 10
  logits = np.where(_one_hot(labels) > 0, 1e4, -1e4)
  # p(y) = 1/10; log p(y|x) is 0 for the label, -2e4 for the 9 others.
  expected = (np.log(0.1) + 0.9 * 2e4) / 10
  assert metrics.i_prime_torch(logits) == pytest.approx(expected, rel=1e-12)
  # The same logits as probabilities: their zeros are what I' needs a clip for.
  assert metrics.i_prime(special.softmax(logits, axis=1)) < expected
  # A class that no sample predicts adds 0, as in Torch (its target is 0).
  five = np.where(_one_hot(labels % 5) > 0, 1e4, -1e4)
  assert metrics.i_prime_torch(five) == pytest.approx((np.log(0.2) + 0.8 * 2e4) / 10, rel=1e-12)


def test_i_prime_torch_is_torchs_formula_and_the_kl_over_the_classes():
  rng = np.random.default_rng(4)
  logits = rng.normal(scale=3.0, size=(40, 7))
  log_p = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  target = np.broadcast_to(np.exp(log_p).mean(axis=0), log_p.shape)
  expected = _torch_dist_kl_div(log_p, target)
  assert metrics.i_prime_torch(logits) == pytest.approx(expected, rel=1e-12)
  assert metrics.i_prime_torch(log_p) == pytest.approx(expected, rel=1e-12)
  # I' with a clip below every probability is the same KL, not divided by C.
  assert metrics.i_prime(np.exp(log_p), clip=1e-300) == pytest.approx(7 * expected, rel=1e-12)
  # A class of probability 0 everywhere (log -inf) adds 0 and still counts in N * C.
  with_empty = np.concatenate([log_p, np.full((40, 1), -np.inf)], axis=1)
  assert metrics.i_prime_torch(with_empty) == pytest.approx(
      _torch_dist_kl_div(with_empty, np.concatenate([target, np.zeros((40, 1))], axis=1)),
      rel=1e-12)
  assert metrics.i_prime_torch(with_empty) == pytest.approx(7 / 8 * expected, rel=1e-12)
  with pytest.raises(ValueError, match=re.escape("(N, C)")):
    metrics.i_prime_torch(np.ones(10))
