"""Training speed of the course's models through fastpipes/fastai against the course's plain PyTorch loop.

Same model (same initial weights), same data, same batch size, same optimizer, one process. The fastai side
adds its Learner machinery: metrics on training *and* validation batches, the per-epoch table and the
progress bar. The plain side is the course's loop: `torch.utils.data.DataLoader(TensorDataset(...))`, forward,
loss, backward, step. A second plain loop slices the tensors directly (no per-item collation): the fastest
loop one can write. Only training batches are timed on both sides (fastai's validation pass is excluded by
timing `fit` minus its validation time, measured by a callback).

Run: `python bench/course.py [--n 6000] [--bs 64] [--epochs 2] [--reps 3] [--threads 2]`
MNIST is used when it is on disk (`fastpipes.datasets.mnist_arrays`), otherwise scikit-learn's real digits
repeated to `--n` images.
"""
import argparse, copy, os, random, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from fastai.callback.core import Callback

from fastpipes.core import FastpipesError
from fastpipes.datasets import mnist_arrays, sklearn_digits, tensor_dls
from fastpipes.course import course_cnn, course_learner, mlp, mlp_learner


def data(n:int, digits=None):
    "MNIST from disk when there, else real scikit-learn digits repeated to `n` images."
    try:
        xt, yt, xv, yv = mnist_arrays(digits=digits); src = 'MNIST'
    except FastpipesError:
        x, y = sklearn_digits(digits=digits); src = 'sklearn digits (repeated)'
        reps = -(-n // len(x)); xt, yt, xv, yv = np.tile(x, (reps, 1, 1)), np.tile(y, reps), x, y
    return xt[:n], yt[:n], xv[:1000], yv[:1000], src


class TrainTimer(Callback):
    "Time spent in training batches only (from the first `before_batch` of training to `after_train`)."
    order = -100
    def before_fit(self): self.secs, self.n = 0., 0
    def before_train(self): self.t0 = time.perf_counter()
    def after_batch(self):
        if self.training: self.n += len(self.yb[0])
    def after_train(self): self.secs += time.perf_counter() - self.t0


def plain_loop(model, x, y, bs, epochs, opt, loss_fn, flat, fast=False):
    "The course's loop; with `fast`, batches are sliced from the tensors instead of a torch `DataLoader`."
    n, t = 0, 0.
    dl = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True)
    model.train()
    for _ in range(epochs):
        t0 = time.perf_counter()
        batches = ((x[i], y[i]) for i in torch.randperm(len(x)).split(bs)) if fast else dl
        for xb, yb in batches:
            out = model(xb)
            loss = loss_fn(out, yb)
            opt.zero_grad(); loss.backward(); opt.step()
            n += len(yb)
        t += time.perf_counter() - t0
    return n / t


def fastai_run(make_learner, dls, model, epochs):
    learn = make_learner(dls)
    learn.model.load_state_dict(model.state_dict())
    timer = TrainTimer()
    learn.fit(epochs, cbs=timer)
    return timer.n / timer.secs


def bench(name, make_model, make_learner, make_opt, loss_fn, dls, epochs, reps, flat):
    "Alternate the sides `reps` times; median images/s of each."
    x, y = dls.train.decode_x(dls.train.x), dls.train.y
    ref = make_model()
    res = {'fastai': [], 'plain': [], 'plain-sliced': []}
    for r in range(reps):
        res['fastai'].append(fastai_run(make_learner, dls, ref, epochs))
        for side, fast in (('plain', False), ('plain-sliced', True)):
            m = copy.deepcopy(ref)
            res[side].append(plain_loop(m, x, y, dls.train.bs, epochs, make_opt(m), loss_fn, flat, fast))
    med = {k: float(np.median(v)) for k, v in res.items()}
    print(f"{name:28s} fastai {med['fastai']:9.0f} img/s | course loop {med['plain']:9.0f} img/s | sliced loop "
          f"{med['plain-sliced']:9.0f} img/s | ratio fastai/course {med['fastai']/med['plain']:.2f}x, "
          f"fastai/sliced {med['fastai']/med['plain-sliced']:.2f}x", flush=True)
    return med


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=6000); p.add_argument('--bs', type=int, default=64)
    p.add_argument('--epochs', type=int, default=2); p.add_argument('--reps', type=int, default=3)
    p.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 2)))
    a = p.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(0); random.seed(0)
    print(f"torch {torch.__version__}, {a.threads} threads, device cpu, bs {a.bs}, {a.epochs} epochs x {a.reps} reps")

    xt, yt, xv, yv, src = data(a.n)
    print(f"data: {src}, {len(xt)} training images")
    dls = tensor_dls(xt, yt, xv, yv, bs=a.bs, norm=True, device='cpu')
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    bench("course_cnn('mnist')", lambda: course_cnn('mnist'), lambda d: course_learner(d, 'mnist'),
          sgd, F.nll_loss, dls, a.epochs, a.reps, False)
    bench("course_cnn('lenet', 1ch 28px)", lambda: course_cnn('lenet', in_ch=1, size=28),
          lambda d: course_learner(d, 'lenet'), sgd, F.cross_entropy, dls, a.epochs, a.reps, False)

    xt, yt, xv, yv, src = data(a.n, digits=(0, 1))
    dls = tensor_dls(xt, yt, xv, yv, bs=a.bs, flat=True, scale=False, device='cpu')
    adam = lambda m: torch.optim.Adam(m.parameters(), lr=3e-4)
    bce = lambda out, y: F.binary_cross_entropy_with_logits(out.reshape(-1), y.float())
    bench("mlp (784, 64, 1), 0 vs 1", lambda: mlp((784, 64, 1)), mlp_learner, adam, bce, dls, a.epochs, a.reps, True)


if __name__ == '__main__': main()
