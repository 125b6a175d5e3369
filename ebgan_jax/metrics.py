"""Sample-quality metrics on classifier outputs: IS, I', FD, KID, PRDC, class and mode counts.

Pure functions of NumPy (or JAX) arrays, computed in float64 NumPy: no
TensorFlow, no I/O. "Features" are the penultimate-layer activations of a
classifier (ebgan_jax/classifier.py), one row per image; "probabilities" are
its softmax outputs p(y|x), one row per image ("logits" or log-probabilities
where a confident p(y|x) would round to 0). `real` is the reference set
(the test split), `fake` the generated one.

References:
  IS:   Salimans et al. 2016, "Improved Techniques for Training GANs", Sec. 4.
  FD:   Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
        Converge to a Local Nash Equilibrium", Eq. 6 (FID); Dowson & Landau
        1982 for the Gaussian closed form.
  KID:  Binkowski et al. 2018, "Demystifying MMD GANs", Sec. 4 and App. D.
  PRDC: Kynkaanniemi et al. 2019 (precision, recall); Naeem et al. 2020,
        "Reliable Fidelity and Diversity Metrics for Generative Models",
        Eqs. 1-4 (density, coverage; k = 5).
  Stacked MNIST: Metz et al. 2017, "Unrolled GANs", Sec. 3.3; Srivastava et
        al. 2017 (VEEGAN) and Lin et al. 2018 (PacGAN) for modes covered and
        the KL of the mode distribution to uniform.
"""

from __future__ import annotations

import numpy as np
from scipy import special

# Rows of the (fake x real) distance matrices computed at once in PRDC:
# 1024 x 10,000 float64 distances are 80 MB.
_PRDC_CHUNK = 1024
# Negative eigenvalues of a PSD product smaller than this fraction of the
# largest are rounding (they would be the "tiny imaginary parts" of sqrtm).
_PSD_TOLERANCE = 1e-6


def _as_float64(x) -> np.ndarray:
  return np.asarray(x, dtype=np.float64)


def _entropy_terms(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """p * log(p / q) elementwise, with 0 * log(0 / q) = 0."""
  positive = p > 0
  return np.where(positive, p * (np.log(np.where(positive, p, 1.0)) - np.log(
      np.where(positive, q, 1.0))), 0.0)


def inception_score(probabilities, num_splits: int = 10) -> tuple[float, float]:
  """IS = exp(E_x KL(p(y|x) || p(y))), mean and std over `num_splits` splits.

  Salimans et al. (2016), Sec. 4; p(y) is the mean of p(y|x) over the split,
  as in their code. IS lies in [1, number of classes]: 1 when every x has
  the same p(y|x), the class count when predictions are confident (one-hot)
  and spread uniformly over the classes.

  Args:
    probabilities: (N, C) rows of p(y|x), each summing to 1.
    num_splits: the samples are cut, in order, into this many near-equal parts.

  Returns:
    (mean, std) of the per-split scores.
  """
  p = _as_float64(probabilities)
  if p.ndim != 2 or len(p) < num_splits or num_splits < 1:
    raise ValueError(
        f"inception_score needs (N, C) probabilities with N >= num_splits >= 1, got shape "
        f"{p.shape} and num_splits {num_splits}")
  scores = []
  for part in np.array_split(p, num_splits):
    marginal = part.mean(axis=0, keepdims=True)
    mean_kl = _entropy_terms(part, marginal).sum(axis=1).mean()
    scores.append(np.exp(mean_kl))
  return float(np.mean(scores)), float(np.std(scores))


def log_inception_score(probabilities) -> float:
  """log IS = E_x KL(p(y|x) || p(y)) over all samples at once (one split, no exp).

  In [0, log C]: 0 when every p(y|x) is the same, log C for confident
  predictions spread uniformly over the C classes.
  """
  p = _as_float64(probabilities)
  if p.ndim != 2 or len(p) < 1:
    raise ValueError(f"log_inception_score needs (N, C) probabilities, got shape {p.shape}")
  return float(_entropy_terms(p, p.mean(axis=0, keepdims=True)).sum(axis=1).mean())


# The clip of p(y|x) in I': confident predictions put ~0 on other classes, and
# log(p(y) / 0) is infinite. 1e-6 bounds one sample's term by about
# log(1e6) = 13.8; document a comparison's clip with its numbers.
I_PRIME_CLIP = 1e-6


def i_prime(probabilities, clip: float = I_PRIME_CLIP) -> float:
  """I' = E_x KL(p(y) || p(y|x)), the score of the EBGAN paper's grid search (its Sec. 4.1).

  The pair's order is the paper's: reversed from the inception score's, and
  no exp. p(y) is the mean of p(y|x) over the samples; both are clipped
  below at `clip` (I_PRIME_CLIP) so that the score stays finite. 0 when
  every p(y|x) equals p(y); larger for confident, balanced predictions, up
  to about (1 - 1/C) log(1 / (C clip)) for one-hot ones over C classes.
  i_prime_torch reads the same KL from log-probabilities, without a clip.
  """
  p = _as_float64(probabilities)
  if p.ndim != 2 or len(p) < 1:
    raise ValueError(f"i_prime needs (N, C) probabilities, got shape {p.shape}")
  if not 0 < clip < 1:
    raise ValueError(f"clip must be in (0, 1), got {clip}")
  marginal = np.maximum(p.mean(axis=0, keepdims=True), clip)
  conditional = np.maximum(p, clip)
  return float(np.sum(marginal * (np.log(marginal) - np.log(conditional)), axis=1).mean())


def i_prime_torch(logits) -> float:
  """I' as Torch7's nn.DistKLDivCriterion reads it: (1/C) E_x KL(p(y) || p(y|x)), no clip.

  The criterion's forward(input, target) is sum(target * (log(target) - input))
  over all elements, divided by their number under its default sizeAverage
  (torch/nn lib/THNN/generic/DistKLDivCriterion.c; elements with target = 0
  count 0). With input = log p(y|x), the classifier's LogSoftMax (N, C), and
  target = p(y) broadcast to (N, C), that is KL(target || exp(input)) = KL(p(y)
  || p(y|x)), the pair order of the paper's I' (its Sec. 4.1), averaged
  over the N samples and divided by the C classes. From log-probabilities a
  confident prediction's log p(y|x) = -1e4 is a finite term where its
  probability would underflow to 0, so no clip is needed; the scale is then set
  by the classifier's confidence: predictions spread evenly over C classes,
  each with its class's logit L above the others, give about
  ((1 - 1/C) L - log C) / C. p(y) = mean_x p(y|x) is computed in log space; a
  class it gives 0 adds 0.

  Args:
    logits: (N, C) logits, or log-probabilities (the log-softmax leaves those as
      they are).
  """
  logits = _as_float64(logits)
  if logits.ndim != 2 or len(logits) < 1:
    raise ValueError(f"i_prime_torch needs (N, C) logits, got shape {logits.shape}")
  log_conditional = special.log_softmax(logits, axis=1)
  log_marginal = special.logsumexp(log_conditional, axis=0) - np.log(len(logits))
  marginal = np.exp(log_marginal)
  # Torch's `target > 0`: a class of p(y) = 0 adds 0 (the limit of t log t), even where
  # log p(y|x) is -inf too.
  gap = np.subtract(log_marginal, log_conditional, out=np.zeros_like(log_conditional),
                    where=marginal > 0)
  return float(np.sum(marginal * gap) / logits.size)


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean (d,) and unbiased covariance (d, d) of (N, d) features, N >= 2."""
  x = _as_float64(features)
  if x.ndim != 2 or len(x) < 2:
    raise ValueError(f"features must be (N, d) with N >= 2, got shape {x.shape}")
  return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
  """Square root of a symmetric PSD matrix by eigendecomposition (rounding clipped)."""
  eigenvalues, eigenvectors = np.linalg.eigh(matrix)
  return (eigenvectors * np.sqrt(np.clip(eigenvalues, 0.0, None))) @ eigenvectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
  """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

  d^2 = |mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^(1/2))
  (Dowson & Landau 1982; Heusel et al. 2017, Eq. 6).

  tr((sigma1 sigma2)^(1/2)) is computed as the sum of the square roots of the
  eigenvalues of the symmetric PSD matrix s sigma2 s, s = sigma1^(1/2), which
  has the eigenvalues of sigma1 sigma2: stable also for singular covariances
  (more feature dimensions than samples, dead ReLU units), where scipy's sqrtm
  of the non-symmetric product sigma1 sigma2 is not. Negative eigenvalues
  within rounding of zero (sqrtm's tiny imaginary parts) count as zero; larger
  ones mean an input is not a covariance matrix, and raise.

  Raises:
    ValueError: shapes disagree, or sigma1 or sigma2 is not symmetric PSD.
  """
  mu1, mu2 = _as_float64(mu1), _as_float64(mu2)
  sigma1, sigma2 = _as_float64(sigma1), _as_float64(sigma2)
  d = mu1.shape[0]
  if mu1.shape != (d,) or mu2.shape != (d,) or sigma1.shape != (d, d) or sigma2.shape != (d, d):
    raise ValueError(
        f"frechet_distance needs means (d,) and covariances (d, d) of one d, got "
        f"{mu1.shape}, {sigma1.shape}, {mu2.shape}, {sigma2.shape}")
  for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
    scale = max(np.abs(sigma).max(), np.finfo(np.float64).tiny)
    if not np.allclose(sigma, sigma.T, rtol=0.0, atol=_PSD_TOLERANCE * scale):
      raise ValueError(f"{name} is not symmetric: not a covariance matrix")
  root1 = _psd_sqrt(sigma1)
  product = root1 @ sigma2 @ root1
  eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
  largest = max(np.abs(eigenvalues).max(), np.finfo(np.float64).tiny)
  if eigenvalues.min() < -_PSD_TOLERANCE * largest:
    raise ValueError(
        f"sigma1^(1/2) sigma2 sigma1^(1/2) has eigenvalue {eigenvalues.min():.3g} (largest "
        f"{largest:.3g}): the square root would be complex, so an input is not a covariance "
        "matrix")
  trace_sqrt = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
  distance = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt
  # Rounding can take a distance of zero slightly below it.
  return float(max(distance, 0.0))


def frechet_feature_distance(real_features, fake_features) -> float:
  """FD between Gaussians fitted to two (N, d) feature sets (FID with a custom network)."""
  return frechet_distance(*feature_statistics(real_features), *feature_statistics(fake_features))


def polynomial_kernel(x, y) -> np.ndarray:
  """k(x, y) = (x . y / d + 1)^3, the KID kernel (Binkowski et al. 2018, Sec. 4)."""
  x, y = _as_float64(x), _as_float64(y)
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x, y) -> float:
  """Unbiased MMD^2 of samples x (m, d) and y (n, d) under the polynomial kernel.

  MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1))
          + sum_{i != j} k(y_i, y_j) / (n (n - 1))
          - 2 sum_{i, j} k(x_i, y_j) / (m n)
  (Gretton et al. 2012, Lemma 6). Its expectation is the population MMD^2,
  so it is 0 on average (and may be negative) when x and y come from one
  distribution.
  """
  m, n = len(x), len(y)
  if m < 2 or n < 2:
    raise ValueError(f"mmd2_unbiased needs at least 2 samples on each side, got {m} and {n}")
  k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
  within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
  return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_inception_distance(real_features, fake_features, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """KID: unbiased MMD^2 (cubic polynomial kernel), mean and std over random subsets.

  Binkowski et al. (2018), App. D: each of `num_subsets` draws takes
  `subset_size` rows (without replacement) from each feature set; a set
  smaller than subset_size is used whole.

  Returns:
    (mean, std) of MMD^2_u over the subsets.
  """
  real, fake = _as_float64(real_features), _as_float64(fake_features)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"features must be (N, d) of one d, got {real.shape} and {fake.shape}")
  size = min(subset_size, len(real), len(fake))
  rng = np.random.default_rng(seed)
  estimates = [
      mmd2_unbiased(real[rng.choice(len(real), size, replace=False)],
                    fake[rng.choice(len(fake), size, replace=False)])
      for _ in range(num_subsets)
  ]
  return float(np.mean(estimates)), float(np.std(estimates))


def _squared_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """|a_i - b_j|^2 for all pairs, (len(a), len(b))."""
  squared = (a * a).sum(axis=1)[:, None] + (b * b).sum(axis=1)[None, :] - 2.0 * a @ b.T
  return np.clip(squared, 0.0, None)


def nearest_neighbour_radii(features, k: int = 5) -> np.ndarray:
  """Distance from each row to its k-th nearest other row (the row itself not counted)."""
  x = _as_float64(features)
  if not 1 <= k < len(x):
    raise ValueError(f"k-nearest neighbours need 1 <= k < N, got k = {k}, N = {len(x)}")
  radii = np.empty(len(x))
  for start in range(0, len(x), _PRDC_CHUNK):
    squared = _squared_distances(x[start:start + _PRDC_CHUNK], x)
    # Index 0 after partitioning is the row's zero distance to itself.
    radii[start:start + _PRDC_CHUNK] = np.partition(squared, k, axis=1)[:, k]
  return np.sqrt(radii)


def precision_recall_density_coverage(real_features, fake_features, k: int = 5, *,
                                      real_radii=None) -> dict[str, float]:
  """PRDC of fake features against real ones, with k-nearest-neighbour balls.

  With B(x, r) the closed ball, NND_k(x) the distance from x to its k-th
  nearest neighbour within its own set, N real points X and M fake points Y:
    precision = 1/M sum_j 1[exists i: Y_j in B(X_i, NND_k(X_i))]
    recall    = 1/N sum_i 1[exists j: X_i in B(Y_j, NND_k(Y_j))]
    density   = 1/(kM) sum_j sum_i 1[Y_j in B(X_i, NND_k(X_i))]
    coverage  = 1/N sum_i 1[exists j: Y_j in B(X_i, NND_k(X_i))]
  (Kynkaanniemi et al. 2019; Naeem et al. 2020, Eqs. 1-4, k = 5 there).
  Precision and density measure fidelity, recall and coverage diversity; a
  set against itself scores precision = recall = coverage = 1.

  Args:
    real_features: (N, d) features of the real images.
    fake_features: (M, d) features of the generated images.
    k: the neighbour whose distance is a ball's radius.
    real_radii: nearest_neighbour_radii(real_features, k), when already known
      (an evaluation repeated against one real set computes them once).

  Returns:
    {"precision", "recall", "density", "coverage"}.
  """
  real, fake = _as_float64(real_features), _as_float64(fake_features)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f"features must be (N, d) of one d, got {real.shape} and {fake.shape}")
  if real_radii is None:
    real_radii = nearest_neighbour_radii(real, k)
  real_radii = _as_float64(real_radii)
  fake_radii = nearest_neighbour_radii(fake, k)
  balls_containing_fake = np.empty(len(fake))  # per fake point: real balls around it
  real_covered = np.zeros(len(real), bool)      # some fake point in the real ball
  real_recalled = np.zeros(len(real), bool)     # inside some fake ball
  for start in range(0, len(fake), _PRDC_CHUNK):
    distances = np.sqrt(_squared_distances(fake[start:start + _PRDC_CHUNK], real))
    inside_real_ball = distances <= real_radii[None, :]
    balls_containing_fake[start:start + _PRDC_CHUNK] = inside_real_ball.sum(axis=1)
    real_covered |= inside_real_ball.any(axis=0)
    real_recalled |= (distances <= fake_radii[start:start + _PRDC_CHUNK, None]).any(axis=0)
  return {
      "precision": float(np.mean(balls_containing_fake > 0)),
      "recall": float(np.mean(real_recalled)),
      "density": float(balls_containing_fake.sum() / (k * len(fake))),
      "coverage": float(np.mean(real_covered)),
  }


def class_histogram(probabilities) -> np.ndarray:
  """Counts (C,) of argmax_y p(y|x) over the rows of (N, C) probabilities (or logits)."""
  p = np.asarray(probabilities)
  return np.bincount(np.argmax(p, axis=1), minlength=p.shape[1])


def classes_above(counts, fraction: float = 0.01) -> int:
  """Number of classes holding at least `fraction` of the samples (1%: a class is present)."""
  counts = _as_float64(counts)
  return int(np.sum(counts >= fraction * counts.sum()))


def kl_to_uniform(counts) -> float:
  """KL(q || U) = sum_c q_c log(q_c C) of the empirical class distribution q = counts / N.

  0 for a uniform spread, log C when every sample is in one class.
  """
  counts = _as_float64(counts)
  q = counts / counts.sum()
  return float(_entropy_terms(q, np.full_like(q, 1.0 / len(q))).sum())


def stacked_mode_labels(channel_labels, num_classes: int = 10) -> np.ndarray:
  """Mode of each stacked image: its channels' digits read as one base-10 number.

  (N, C) digit labels (R, G, B for C = 3) -> (N,) modes in [0, 10^C): e.g.
  digits (3, 0, 7) are mode 307.
  """
  labels = np.asarray(channel_labels, np.int64)
  weights = num_classes ** np.arange(labels.shape[1] - 1, -1, -1)
  return labels @ weights


def stacked_mode_log_probabilities(channel_log_probabilities) -> np.ndarray:
  """log p(mode|x) of stacked images from per-channel log p(digit|x_c), channels independent.

  (N, C, K) -> (N, K^C), the outer sum over channels (the log of the outer
  product of the probabilities), ordered as stacked_mode_labels: its argmax
  is the mode of the per-channel argmaxes.
  """
  log_p = _as_float64(channel_log_probabilities)
  joint = log_p[:, 0]
  for channel in range(1, log_p.shape[1]):
    joint = (joint[:, :, None] + log_p[:, channel, None, :]).reshape(len(log_p), -1)
  return joint


def mode_coverage(mode_labels, num_modes: int) -> dict[str, float]:
  """Modes with at least one sample, and the KL of the mode distribution to uniform.

  The stacked-MNIST mode-collapse measures (Srivastava et al. 2017, Table 2;
  Lin et al. 2018): out of num_modes (1000 for three digits), how many does a
  generator produce at all, and KL(q || U) of the empirical mode distribution.
  """
  counts = np.bincount(np.asarray(mode_labels, np.int64), minlength=num_modes)
  if len(counts) != num_modes:
    raise ValueError(f"mode labels must lie in [0, {num_modes}), got up to {len(counts) - 1}")
  return {"modes_covered": int(np.sum(counts > 0)), "kl_modes_to_uniform": kl_to_uniform(counts)}
