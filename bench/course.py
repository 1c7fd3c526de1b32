"""Training speed of the course's models through fastpipes/fastai against the course's plain PyTorch loop.

Peer: the same model (same initial weights), same data, same batch size and the same torch optimizer, trained by
the course's loop: `torch.utils.data.DataLoader(TensorDataset(...), shuffle=True)`, forward, loss, `zero_grad`,
`backward`, `step`. A second plain loop slices the tensors directly (no per-item collation): the fastest loop
one can write in Python. Target: fastpipes >= 0.9x the course's loop, while adding what the loop does not have:
the training and validation metrics, the smoothed loss, the per-epoch table and the progress bar (its output
goes to /dev/null: written, not shown).

Only training is timed. On the fastpipes side that is the wall time of `learn.fit(1)` minus its validation
pass, so the per-fit work (progress bars, the table, the recorder) counts against fastpipes.

Load noise: the sides run in turns, one epoch (MLP: 5 epochs) each per round, the order rotating every round,
for `--reps` rounds; the script prints the best and the median round of each side and their ratios. With one
thread it also prints the ratio of thread CPU time, which other processes on the machine disturb much less.

Run: `OMP_NUM_THREADS=1 python bench/course.py [--n 6000] [--bs 64] [--reps 7] [--threads 1]`
MNIST is used when it is on disk (`fastpipes.course.datasets.mnist_arrays`), otherwise scikit-learn's real digits
repeated to `--n` images (the CIFAR-shaped LeNet sees them padded to 32x32 and repeated over 3 channels).
"""
import argparse, contextlib, copy, os, random, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset
from fastai.callback.core import Callback

from fastpipes.core import FastpipesError
from fastpipes.course.datasets import mnist_arrays, sklearn_digits, tensor_dls
from fastpipes.course.cnn import course_learner, mlp_learner

CLOCKS = {'wall': time.perf_counter, 'cpu': time.thread_time}


def data(n:int, digits=None):
    "MNIST from disk when there, else real scikit-learn digits repeated to `n` images."
    try:
        xt, yt, xv, yv = mnist_arrays(digits=digits); src = 'MNIST'
    except FastpipesError:
        x, y = sklearn_digits(digits=digits); src = 'sklearn digits (repeated)'
        reps = -(-n // len(x)); xt, yt, xv, yv = np.tile(x, (reps, 1, 1)), np.tile(y, reps), x, y
    return xt[:n], yt[:n], xv[:1000], yv[:1000], src


def cifar_shaped(x:np.ndarray)->np.ndarray:
    "Digits (n,28,28) as colour images (n,3,32,32)."
    return np.repeat(np.pad(x, ((0, 0), (2, 2), (2, 2)))[:, None], 3, axis=1)


class _Mark(Callback):
    "Reads the clocks at the first (`order=-1000`) or the last (`order=1000`) handler of an event."
    def __init__(self, order, event, log):
        self.order, self.log = order, log
        setattr(self, event, lambda: log.append({k: c() for k, c in CLOCKS.items()}))


def fastai_epochs(learn, epochs:int, sink)->dict:
    "Seconds of training in `learn.fit(epochs)`: the whole `fit` minus its validation passes."
    start, end = [], []
    cbs = [_Mark(-1000, 'before_validate', start), _Mark(1000, 'after_validate', end)]
    t0 = {k: c() for k, c in CLOCKS.items()}
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink): learn.fit(epochs, cbs=cbs)
    return {k: c() - t0[k] - sum(e[k] - s[k] for s, e in zip(start, end)) for k, c in CLOCKS.items()}


def plain_epochs(model, opt, loss_fn, x, y, bs:int, epochs:int, sliced:bool)->dict:
    "Seconds of `epochs` epochs of the course's loop; with `sliced`, batches are cut from the tensors directly."
    t0 = {k: c() for k, c in CLOCKS.items()}
    model.train()
    for _ in range(epochs):
        batches = ((x[i], y[i]) for i in torch.randperm(len(x)).split(bs)) if sliced else \
                  DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True)
        for xb, yb in batches:
            loss = loss_fn(model(xb), yb)
            opt.zero_grad(); loss.backward(); opt.step()
    return {k: c() - t0[k] for k, c in CLOCKS.items()}


def bench(name, learn, make_opt, loss_fn, epochs:int, reps:int, cpu:bool):
    "Rounds of one turn per side, in rotating order; prints best and median images/s and the ratios."
    dl = learn.dls.train
    x, y = dl.decode_x(dl.x), dl.y                     # the plain loops get the same inputs, already decoded
    n_img = epochs * len(x)
    plain = {side: copy.deepcopy(learn.model) for side in ('course', 'sliced')}
    opts = {side: make_opt(m) for side, m in plain.items()}
    turns = {'fastpipes': lambda: fastai_epochs(learn, epochs, sink),
             'course': lambda: plain_epochs(plain['course'], opts['course'], loss_fn, x, y, dl.bs, epochs, False),
             'sliced': lambda: plain_epochs(plain['sliced'], opts['sliced'], loss_fn, x, y, dl.bs, epochs, True)}
    res = {side: [] for side in turns}
    with open(os.devnull, 'w') as sink:
        for f in turns.values(): f()                   # warm-up: first calls, optimizer state, allocator
        order = list(turns)
        for r in range(reps):
            for side in order[r % 3:] + order[:r % 3]: res[side].append(turns[side]())
    ips = {s: {k: np.array([n_img/t[k] for t in ts]) for k in CLOCKS} for s, ts in res.items()}
    best = {s: v['wall'].max() for s, v in ips.items()}; med = {s: float(np.median(v['wall'])) for s, v in ips.items()}
    line = (f"{name:38s} img/s best|median: fastpipes {best['fastpipes']:7.0f}|{med['fastpipes']:7.0f}  "
            f"course loop {best['course']:7.0f}|{med['course']:7.0f}  sliced loop {best['sliced']:7.0f}|{med['sliced']:7.0f}  "
            f"ratio vs course {best['fastpipes']/best['course']:.2f}x|{med['fastpipes']/med['course']:.2f}x  "
            f"vs sliced {best['fastpipes']/best['sliced']:.2f}x|{med['fastpipes']/med['sliced']:.2f}x")
    if cpu:
        c = {s: v['cpu'].max() for s, v in ips.items()}
        line += f"  cpu-time ratio vs course {c['fastpipes']/c['course']:.2f}x, vs sliced {c['fastpipes']/c['sliced']:.2f}x"
    print(line, flush=True)
    return best, med


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--n', type=int, default=6000); p.add_argument('--bs', type=int, default=64)
    p.add_argument('--reps', type=int, default=7)
    p.add_argument('--threads', type=int, default=int(os.environ.get('OMP_NUM_THREADS', 1)))
    a = p.parse_args()
    torch.set_num_threads(a.threads); torch.manual_seed(0); random.seed(0)
    print(f"torch {torch.__version__}, {a.threads} thread(s), cpu, bs {a.bs}, {a.reps} rounds, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores", flush=True)

    xt, yt, xv, yv, src = data(a.n)
    print(f"data: {src}, {len(xt)} training images; ratio = fastpipes / peer images per second (target >= 0.90x)")
    sgd = lambda m: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9)
    cpu = a.threads == 1
    dls = tensor_dls(xt, yt, xv, yv, bs=a.bs, norm=True, device='cpu')
    bench("course_cnn('mnist'), MNIST 1x28x28", course_learner(dls, 'mnist'), sgd, F.nll_loss, 1, a.reps, cpu)
    dls = tensor_dls(cifar_shaped(xt), yt, cifar_shaped(xv), yv, bs=a.bs, norm=True, device='cpu')
    bench("course_cnn('lenet'), CIFAR 3x32x32", course_learner(dls, 'lenet'), sgd, F.cross_entropy, 1, a.reps, cpu)

    xt, yt, xv, yv, src = data(a.n, digits=(0, 1))
    dls = tensor_dls(xt, yt, xv, yv, bs=a.bs, flat=True, scale=False, device='cpu')
    adam = lambda m: torch.optim.Adam(m.parameters(), lr=3e-4)
    bce = lambda out, y: F.binary_cross_entropy_with_logits(out.reshape(-1), y.float())
    bench("mlp (784, 64, 1), 0 vs 1, raw pixels", mlp_learner(dls), adam, bce, 5, a.reps, cpu)
    print(f"load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == '__main__': main()
