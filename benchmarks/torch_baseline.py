"""PyTorch eager reference of the EBGAN train step, the baseline of the README's performance table.

The same nets (models.py "conv28", "mlp" and "conv64"), the same objective (losses.py)
and the same step (train.py: one D update, then one G update on fresh z) as
ebgan_jax, written as plain PyTorch eager code (no torch.compile: it was
measured slower on this CPU), so that benchmarks/step_throughput.py has a
baseline measured on the same machine. Each family uses its experiment
config's objective: conv28 as mnist_conv (per-pixel mean energy, m = 0.3,
Adam lr 2e-4 for both nets: G's default of 4e-4 changes no work; conv64, on
64x64x3 images with z_dim 100, the same), mlp as
mnist_mlp (L2-norm energy, m = 10, Adam lr 1e-3); lambda_pt = 0.1, Adam b1
0.5, b2 0.999, eps 1e-8 for both. Only the weight initialisation differs
(torch's defaults), which does not change the work.

torch is NOT a dependency of the project; install it in a separate venv:

  python3 -m venv /tmp/torchenv
  /tmp/torchenv/bin/pip install torch==2.13.0 numpy   # or a local CPU wheel of it
  /tmp/torchenv/bin/python benchmarks/torch_baseline.py --family conv28 --batch 64
  /tmp/torchenv/bin/python benchmarks/torch_baseline.py --all --threads 2
  /tmp/torchenv/bin/python benchmarks/torch_baseline.py --family conv64 --steps 20 --warmup 4

Like step_throughput.py: 8 distinct random batches in [-1, 1] cycled, --warmup
steps untimed, then --repeats timed runs of --steps steps; one JSON line per
setting with the median steps/s.
"""

import argparse
import contextlib
import json
import os
import statistics
import time

import numpy as np
import torch
from torch import nn

import machine

LAMBDA_PT = 0.1
NUM_BATCHES = 8
# Per family, as in experiments/configs/mnist_conv.py and mnist_mlp.py; conv64
# takes mnist_conv's objective, as benchmarks/step_throughput.py does.
OBJECTIVE = {"conv28": {"reduction": "mean", "margin": 0.3, "lr": 2e-4},
             "mlp": {"reduction": "norm", "margin": 10.0, "lr": 1e-3},
             "conv64": {"reduction": "mean", "margin": 0.3, "lr": 2e-4}}
Z_DIM = {"conv28": 64, "mlp": 64, "conv64": 100}
IMAGE_SHAPE = {"conv28": (1, 28, 28), "mlp": (1, 28, 28), "conv64": (3, 64, 64)}  # (C, H, W)


def _dense_bn_relu(n_in, n_out):
  # No bias before BatchNorm, as in models.py. BatchNorm: momentum 0.1, eps 1e-5.
  return [nn.Linear(n_in, n_out, bias=False), nn.BatchNorm1d(n_out), nn.ReLU()]


def _convt2x(c_in, c_out, bias):
  # Kernel 4, stride 2, padding 1 doubles H and W, as flax's padding="SAME" does.
  return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=bias)


def _conv2x(c_in, c_out, bias):
  # Kernel 4, stride 2, padding 1 halves H and W, as flax's padding="SAME" does.
  return nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=bias)


def conv28_generator():
  return nn.Sequential(
      *_dense_bn_relu(Z_DIM["conv28"], 1024), *_dense_bn_relu(1024, 7 * 7 * 128),
      nn.Unflatten(1, (128, 7, 7)),
      _convt2x(128, 64, bias=False), nn.BatchNorm2d(64), nn.ReLU(),   # 14x14
      _convt2x(64, 1, bias=True), nn.Tanh())                          # 28x28


class Conv28Discriminator(nn.Module):
  """Conv 64 (14x14) -> Dense 32 (= S) -> Dense 14*14*64, BN, ReLU -> ConvT 1, tanh."""

  def __init__(self, embedding_dim=32):
    super().__init__()
    self.encoder = nn.Sequential(nn.Conv2d(1, 64, 4, stride=2, padding=1), nn.ReLU(),
                                 nn.Flatten(), nn.Linear(14 * 14 * 64, embedding_dim))
    self.decoder = nn.Sequential(*_dense_bn_relu(embedding_dim, 14 * 14 * 64),
                                 nn.Unflatten(1, (64, 14, 14)), _convt2x(64, 1, bias=True),
                                 nn.Tanh())

  def forward(self, x):
    embedding = self.encoder(x)
    return self.decoder(embedding), embedding


def conv64_generator(g_width=512, z_dim=100, channels=3):
  """z -> Linear 4*4*512 -> BN, ReLU -> 3 x [ConvT, BN, ReLU] (halving) -> ConvT C (64x64), tanh."""
  layers = [nn.Linear(z_dim, 4 * 4 * g_width, bias=False), nn.Unflatten(1, (g_width, 4, 4)),
            nn.BatchNorm2d(g_width), nn.ReLU()]
  width = g_width
  for _ in range(3):  # 8x8, 16x16, 32x32
    layers += [_convt2x(width, width // 2, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU()]
    width //= 2
  return nn.Sequential(*layers, _convt2x(width, channels, bias=True), nn.Tanh())


class Conv64Discriminator(nn.Module):
  """Encoder (64)4c2s-(128)4c2s-(256)4c2s, leaky ReLU 0.2 (its output is S), decoder the mirror.

  BatchNorm after every layer but the first encoder one and the last decoder one.
  """

  def __init__(self, d_width=64, channels=3):
    super().__init__()
    w = d_width
    self.encoder = nn.Sequential(
        _conv2x(channels, w, bias=True), nn.LeakyReLU(0.2),
        _conv2x(w, 2 * w, bias=False), nn.BatchNorm2d(2 * w), nn.LeakyReLU(0.2),
        _conv2x(2 * w, 4 * w, bias=False), nn.BatchNorm2d(4 * w), nn.LeakyReLU(0.2))
    self.decoder = nn.Sequential(
        _convt2x(4 * w, 2 * w, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
        _convt2x(2 * w, w, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
        _convt2x(w, channels, bias=True), nn.Tanh())

  def forward(self, x):
    h = self.encoder(x)
    return self.decoder(h), h.flatten(1)


def mlp_generator(n_layer_g=5, size_g=1600):
  layers, n_in = [], Z_DIM["mlp"]
  for _ in range(n_layer_g - 1):
    layers += _dense_bn_relu(n_in, size_g)
    n_in = size_g
  return nn.Sequential(*layers, nn.Linear(n_in, 28 * 28), nn.Tanh(), nn.Unflatten(1, (1, 28, 28)))


class MLPDiscriminator(nn.Module):
  """Encoder 1 x [Dense 1024, ReLU] (its output is S), decoder Dense 784, tanh (dropout_d = 0)."""

  def __init__(self, size_d=1024):
    super().__init__()
    self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, size_d), nn.ReLU())
    self.decoder = nn.Sequential(nn.Linear(size_d, 28 * 28), nn.Tanh())

  def forward(self, x):
    embedding = self.encoder(x)
    return self.decoder(embedding).view_as(x), embedding


def energy(x, rec, reduction):
  """Per-sample reconstruction energy (losses.energy)."""
  squared = (rec - x).square().flatten(1).sum(1)
  if reduction == "mean":
    return squared / x[0].numel()
  nonzero = squared > 0  # sqrt only where the error is non-zero: finite gradient at 0
  return torch.where(nonzero, torch.where(nonzero, squared, 1.0).sqrt(), 0.0)


def pulling_away(s):
  """PT(S) = 1/(N(N-1)) sum_{i != j} cos(S_i, S_j)^2, computed as losses.pulling_away."""
  n = s.shape[0]
  scale = s.detach().abs().amax(1, keepdim=True)
  u = s / torch.where(scale > 0, scale, 1.0)
  unit = u / (u.square().sum(1, keepdim=True) + 1e-12).sqrt()
  cosine = unit @ unit.T
  off_diagonal = 1.0 - torch.eye(n, dtype=s.dtype)
  return (cosine.square() * off_diagonal).sum() / (n * (n - 1))


@contextlib.contextmanager
def frozen_bn_stats(net):
  """Train mode (batch statistics) without updating the running averages.

  train.py advances only the updated net's statistics; with momentum 0 torch's
  update running = (1 - m) running + m batch leaves them as they were.
  """
  bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
  for bn in bns:
    bn.momentum = 0.0
  try:
    yield
  finally:
    for bn in bns:
      bn.momentum = 0.1


def adam(params, lr):
  kwargs = dict(lr=lr, betas=(0.5, 0.999), eps=1e-8)
  try:
    return torch.optim.Adam(params, fused=True, **kwargs)
  except (RuntimeError, ValueError, TypeError):  # no fused Adam for this device / version
    return torch.optim.Adam(params, foreach=True, **kwargs)


def make_step(family):
  g, d = {"conv28": (conv28_generator, Conv28Discriminator),
          "mlp": (mlp_generator, MLPDiscriminator),
          "conv64": (conv64_generator, Conv64Discriminator)}[family]
  g, d = g(), d()
  g.train(), d.train()
  obj = OBJECTIVE[family]
  z_dim = Z_DIM[family]
  opt_g, opt_d = adam(g.parameters(), obj["lr"]), adam(d.parameters(), obj["lr"])
  g_params = list(g.parameters())

  def step(real):
    n = real.shape[0]
    # D update: G(z) is a constant; real and fake go through D separately.
    with torch.no_grad(), frozen_bn_stats(g):
      fake = g(torch.rand(n, z_dim) * 2 - 1)
    rec_real, _ = d(real)
    rec_fake, _ = d(fake)
    e_real = energy(real, rec_real, obj["reduction"])
    e_fake = energy(fake, rec_fake, obj["reduction"])
    d_loss = e_real.mean() + (obj["margin"] - e_fake).clamp(min=0).mean()  # hinge per sample
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()

    # G update on fresh z: G(z) is both D's input and the (not detached) target.
    fake = g(torch.rand(n, z_dim) * 2 - 1)
    with frozen_bn_stats(d):
      rec_fake, embedding = d(fake)
    g_loss = energy(fake, rec_fake, obj["reduction"]).mean() + LAMBDA_PT * pulling_away(embedding)
    # Gradients w.r.t. G's params only: autograd skips D's weight gradients, as XLA does.
    for p, grad in zip(g_params, torch.autograd.grad(g_loss, g_params)):
      p.grad = grad
    opt_g.step()

  return step


def measure(family, batch, args):
  torch.manual_seed(0)
  step = make_step(family)
  rng = np.random.default_rng(0)
  batches = [torch.from_numpy(rng.uniform(-1, 1, (batch, *IMAGE_SHAPE[family])).astype(np.float32))
             for _ in range(NUM_BATCHES)]

  def run(num_steps):  # eager CPU ops are synchronous: the loop's end is the work's end
    for i in range(num_steps):
      step(batches[i % NUM_BATCHES])

  run(args.warmup)
  rates = []
  for _ in range(args.repeats):
    start = time.perf_counter()
    run(args.steps)
    rates.append(args.steps / (time.perf_counter() - start))
  steps_per_s = statistics.median(rates)
  return {
      "impl": "pytorch-eager",
      "family": family,
      "batch": batch,
      "threads": torch.get_num_threads(),
      "torch_version": torch.__version__,
      "steps_per_s": round(steps_per_s, 2),
      "images_per_s": round(steps_per_s * batch),
      "steps_per_s_repeats": [round(r, 2) for r in rates],
      "steps": args.steps,
      "cpu_count": os.cpu_count(),
      "loadavg_1m": round(os.getloadavg()[0], 2),
      **machine.cpu_info(),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--family", choices=["conv28", "mlp", "conv64"], default="conv28")
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--steps", type=int, default=200, help="steps timed per repeat")
  parser.add_argument("--warmup", type=int, default=20, help="steps run before timing")
  parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
  parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
  parser.add_argument("--all", action="store_true",
                      help="conv28 and mlp at batch 64 and 256, conv64 at 64 (overrides --family "
                      "and --batch)")
  args = parser.parse_args()
  torch.set_num_threads(args.threads)
  settings = ([(f, b) for f in ("conv28", "mlp") for b in (64, 256)] + [("conv64", 64)]
              if args.all else [(args.family, args.batch)])
  for family, batch in settings:
    print(json.dumps(measure(family, batch, args)), flush=True)


if __name__ == "__main__":
  main()
