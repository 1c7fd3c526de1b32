"""The course's table exercises: fastpipes Learners against the course's hand-written loops.

For each exercise both sides make the same number of parameter updates on the same data, in one process:

- fastpipes: the factory of `fastpipes.course.tabular` with its defaults and the recipe of its docstring (fastai `Learner`, per-epoch validation,
  progress machinery on but not printed);
- course: the loop the course writes by hand, `yhat = net(X); loss = mse(yhat, y); loss.backward();
  opt.step(); opt.zero_grad()`, on the transformed features, with the course's optimiser settings (SGD at
  lr 0.01 for the regressions, as in the five-point exercise; raw λ at lr 0.05 for the MLE; Adam at lr 0.01
  for the autoencoder and the iris network).

Printed per exercise: wall time and final loss of each side, the distance of each to the closed-form optimum
(least-squares coefficients, the sample mean, PCA's reconstruction error) and the ratio course/fastpipes of
those distances (above 1: fastpipes is closer), and the ratio fastpipes/course of the wall times (fastai's
per-batch machinery against a bare loop). Iris has no closed form: the test accuracies are shown instead.
For the regressions also: how many updates, and how long, the course's loop needs to come within 1e-3 of the
optimum (capped), the time a user of the loop waits for the answer fastpipes gives.

Run: `python bench/tabular.py [--threads 1]` (tiny tensors: one thread is fastest). Wall times include building the
Learner and its DataLoaders; a warm-up fit runs first so import and first-call costs are not counted, and each
wall time is the best of 3 runs (`--repeat`).
"""
import argparse, math, sys, time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np, pandas as pd, torch
from torch import nn

from fastpipes.core import set_seed
from fastpipes.course.tabular import (IRIS_COLS, apply_transform, autoencoder_learner, coefs, course_split, exp_decay,
                               fit_mle, free_fall, iris_df, line_data, lstsq_coefs, overparam_learner, pca_mse,
                               regression_learner, table_classifier)

CAP = 20_000
REPEAT = 3


def timed(f, n=None):
    "Result of `f()` and its best wall time over `n` (default `REPEAT`) runs: on a shared machine the minimum is the least noisy."
    best = float('inf')
    for _ in range(n or REPEAT):
        t = time.perf_counter(); r = f(); best = min(best, time.perf_counter() - t)
    return r, best


def dist(a:dict, b:dict)->float: return math.sqrt(sum((a[k] - b[k])**2 for k in b))


def course_linear(F:np.ndarray, y:np.ndarray, steps:int, lr:float=0.01, init=None, target=None):
    "The course's loop for `y ≈ b0 + b1·F`, `steps` updates: coefs and final MSE; with `target`, the updates it needs instead."
    set_seed(0)
    X, Y = torch.tensor(F, dtype=torch.float32), torch.tensor(y, dtype=torch.float32).view(-1, 1)
    net = nn.Linear(X.shape[1], 1)
    if init is not None:
        with torch.no_grad(): net.bias.fill_(init[0]); net.weight.fill_(init[1])
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    for i in range(CAP if target else steps):
        loss = ((net(X) - Y)**2).mean()
        loss.backward(); opt.step(); opt.zero_grad()
        if target:
            if not math.isfinite(loss.item()): return f'never (diverges at update {i + 1})'
            if dist({'b0': net.bias.item(), 'b1': net.weight[0, 0].item()}, target) < 1e-3: return i + 1
    if target: return None
    with torch.no_grad(): return {'b0': net.bias.item(), 'b1': net.weight[0, 0].item()}, ((net(X) - Y)**2).mean().item()


def row(name, updates, fp, course, fp_d, co_d, extra=''):
    "One line; a distance below float32 round-off (1e-6) counts as 1e-6 in the ratio, shown as a lower bound."
    ratio = co_d/max(fp_d, 1e-6)
    r = ('>=' if fp_d < 1e-6 else '') + f'{ratio:.3g}'
    print(f"{name:<22}{updates:>8} | {fp[1]:7.3f}s {fp[0]:>11.6g} {fp_d:>10.2e} | {course[1]:7.3f}s {course[0]:>11.6g} "
          f"{co_d:>10.2e} | {r:>9} | {fp[1]/course[1]:6.1f}x  {extra}")


def fitted(learn, epochs:int, one_cycle:bool=False):
    "`learn` trained quietly with the factory's recipe (its docstring): `fit(epochs)`, or `fit_one_cycle(epochs)`."
    with learn.no_bar(), learn.no_logging(): (learn.fit_one_cycle if one_cycle else learn.fit)(epochs)
    return learn


def val(learn):
    with learn.no_bar(): return learn.validate()


def regression(name, df, x, y, tfm, init=None):
    ls = lstsq_coefs(df, x, y, tfm)
    learn, t = timed(lambda: fitted(regression_learner(df, x, y, tfm), 10))
    steps = len(learn.recorder.losses)
    F = apply_transform(tfm, df[[x]].to_numpy(), [x]).numpy()
    (cc, closs), tc = timed(lambda: course_linear(F, df[y].to_numpy(), steps, init=init))
    reached, tr = timed(lambda: course_linear(F, df[y].to_numpy(), steps, init=init, target=ls))
    fl = val(learn)[0]
    row(name, steps, (fl, t), (closs, tc), dist(coefs(learn), ls), dist(cc, ls) if math.isfinite(closs) else float('inf'),
        f"course loop to 1e-3: {f'{reached} updates, {tr:.3f}s' if isinstance(reached, int) else reached or f'not within {CAP} updates ({tr:.3f}s)'}")


def overparam():
    ld = line_data()
    ls = lstsq_coefs(ld, 'x', 'y')
    learn, t = timed(lambda: fitted(overparam_learner(ld, 'x', 'y', ('a0', 'b0'), ('a1', 'b1')), 60))
    steps = len(learn.recorder.losses)
    c = coefs(learn)
    fp = {'b0': c['a0'] + c['b0'], 'b1': c['a1'] + c['b1']}
    def course():
        set_seed(0)
        X, Y = torch.tensor(ld.x.values, dtype=torch.float32), torch.tensor(ld.y.values, dtype=torch.float32)
        p = torch.randn(4, requires_grad=True)
        opt = torch.optim.SGD([p], lr=0.01)
        for _ in range(steps):
            loss = ((p[0] + p[1] + (p[2] + p[3])*X - Y)**2).mean()
            loss.backward(); opt.step(); opt.zero_grad()
        return {'b0': (p[0] + p[1]).item(), 'b1': (p[2] + p[3]).item()}, ((p[0] + p[1] + (p[2] + p[3])*X - Y)**2).mean().item()
    (cc, closs), tc = timed(course)
    row('a0+b0+(a1+b1)x', steps, (val(learn)[0], t), (closs, tc), dist(fp, ls), dist(cc, ls))


def mle(scale):
    x = np.random.default_rng(0).exponential(scale, 200)
    def logpdf(x, lam): return -x/lam - torch.log(lam)
    (lam, hist), t = timed(lambda: fit_mle(logpdf, x, 1.))
    def course():
        X = torch.tensor(x)
        lam = torch.tensor(1., dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([lam], lr=0.05)
        for _ in range(1000):
            loss = -logpdf(X, lam).mean()
            loss.backward(); opt.step(); opt.zero_grad()
        return lam.item(), -logpdf(X, lam).mean().item()
    (cl, closs), tc = timed(course)
    row(f'MLE exp, mean {x.mean():.3g}', 1000, (hist.nll.iloc[-1], t), (closs, tc), abs(lam - x.mean()),
        abs(cl - x.mean()) if math.isfinite(cl) else float('inf'))


def autoencoder(X):
    best = pca_mse(X)
    learn, t = timed(lambda: fitted(autoencoder_learner(X), 40, one_cycle=True))
    steps = len(learn.recorder.losses)
    a = X.to_numpy(np.float32)
    def course():
        set_seed(0)
        Xs = torch.tensor((a - a.mean(0))/a.std(0))
        net = nn.Sequential(nn.Linear(4, 2), nn.Linear(2, 4))
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(steps):  # full batch, as the course
            loss = ((net(Xs) - Xs)**2).mean()
            loss.backward(); opt.step(); opt.zero_grad()
        return ((net(Xs) - Xs)**2).mean().item()
    closs, tc = timed(course)
    fl = val(learn)[0]
    row('autoencoder 4-2-4', steps, (fl, t), (closs, tc), fl - best, closs - best, f"(PCA optimum {best:.5f})")


def iris():
    df = iris_df()
    learn, t = timed(lambda: fitted(table_classifier(df, 'species'), 20, one_cycle=True))
    steps = len(learn.recorder.losses)
    tr, va = course_split(df)
    x = torch.tensor(df[IRIS_COLS[:4]].to_numpy(np.float32)); y = torch.tensor(df.species.astype('category').cat.codes.to_numpy(np.int64))
    def course():
        set_seed(0)
        net = nn.Sequential(nn.Linear(4, 20), nn.ReLU(), nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 3))
        opt = torch.optim.Adam(net.parameters(), lr=0.01)
        for _ in range(steps):
            loss = nn.functional.cross_entropy(net(x[tr]), y[tr])
            loss.backward(); opt.step(); opt.zero_grad()
        with torch.no_grad(): return loss.item(), (net(x[va]).argmax(1) == y[va]).float().mean().item()
    (closs, cacc), tc = timed(course)
    vl, _, acc = val(learn)
    print(f"{'iris (test accuracy)':<22}{steps:>8} | {t:7.3f}s {vl:>11.6g} {acc:>10.3f} | {tc:7.3f}s {closs:>11.6g} "
          f"{cacc:>10.3f} |       n/a | {t/tc:6.1f}x  (no closed form; test accuracy in the distance columns)")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--threads', type=int, default=1)
    ap.add_argument('--repeat', type=int, default=REPEAT, help='runs per timing; the best is printed')
    a = ap.parse_args()
    globals()['REPEAT'] = a.repeat
    torch.set_num_threads(a.threads)
    print(f"torch {torch.__version__}, {a.threads} thread(s), best of {a.repeat} run(s)")
    print(f"{'exercise':<22}{'updates':>8} | {'fastpipes: wall, final loss, distance':<40}| "
          f"{'course loop: wall, final loss, distance':<40}| dist ratio | wall ratio fastpipes/course")
    fitted(regression_learner(free_fall(), 'h', 't', 'sqrt'), 2)  # warm-up
    fitted(table_classifier(iris_df(), 'species'), 1, one_cycle=True)
    regression('free fall t~sqrt(h)', free_fall(), 'h', 't', 'sqrt')
    regression('exp y~exp(-x)', exp_decay(), 'x', 'y', 'exp(-x)')
    five = pd.DataFrame(dict(x=[11., 12, 13, 14, 15], y=[17.7, 18.5, 21.2, 23.6, 24.2]))
    regression('five points', five, 'x', 'y', None, init=(3., 3.))  # the course starts at (3, 3), lr 0.01
    overparam()
    mle(2.); mle(10.)
    autoencoder(iris_df()[IRIS_COLS[:4]])
    iris()


if __name__ == '__main__': main()
