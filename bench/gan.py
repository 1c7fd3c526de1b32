"""fastpipes' default digit GAN vs fastai's own recipe (`GANLearner.wgan` + `basic_generator`/`basic_critic` at 32 px).

Same data (half of scikit-learn's 8s, framed like MNIST at 28x28), same wall-clock budget for each side. Both are
judged by a small CNN trained on the rest of the set: share of samples it calls 8, Fréchet distance to the held-out
real 8s in its feature space, and diversity (mean pairwise distance of samples / of real 8s).

    python bench/gan.py [--budget 90] [--n 500]
"""
import argparse, sys, time, warnings
from functools import partial
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings('ignore')
import numpy as np, torch, torch.nn.functional as F
from fastai.callback.core import Callback, CancelFitException
from fastai.optimizer import Adam
from fastai.vision.gan import GANLearner, basic_generator, basic_critic
from fastpipes.core import set_seed
from fastpipes.course.datasets import sklearn_digits
from fastpipes.course.gan import gan_learner, gan_dls, generate, digit_classifier, sample_scores

class TimeBudget(Callback):
    "Stop training once `secs` seconds have passed since `before_fit`."
    order = 99
    def __init__(self, secs): self.secs = secs
    def before_fit(self): self.t0, self.steps = time.time(), 0
    def after_batch(self):
        self.steps += 1
        if time.time() - self.t0 > self.secs: raise CancelFitException()

def fit_for(learn, secs, **kw):
    "Train `learn` for `secs` seconds of wall-clock time; return the number of optimiser steps."
    tb = TimeBudget(secs)
    with learn.no_bar(), learn.no_logging(): learn.fit(10_000, cbs=tb, **kw)
    return tb.steps

def fastai_samples(learn, n, seed, nz):
    "`n` samples of the fastai baseline, resized from 32 back to 28 px, in [0, 1]."
    g = learn.model.generator.eval()
    z = torch.randn(n, nz, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad(): x = (g(z) + 1)/2
    return F.interpolate(x.clamp(0, 1), size=(28, 28), mode='bilinear', antialias=True, align_corners=False)

def main(budget=90., n=500, nz=6, seed=0):
    x, y = sklearn_digits(28)
    idx = np.where(y == 8)[0]
    gan = np.sort(np.random.default_rng(seed).permutation(idx)[:len(idx)//2])
    rest = np.setdiff1d(np.arange(len(y)), gan)
    clf = digit_classifier(x[rest], y[rest])
    real8 = x[rest][y[rest] == 8]
    print(f"data: {len(gan)} eights for the GANs, classifier on the other {len(rest)} images; budget {budget:.0f}s each, "
          f"{torch.get_num_threads()} threads")
    ref = sample_scores(x[gan], real8, clf, 8)
    print(f"real 8s (GAN half) vs held-out 8s: share {ref['share']:.3f}  frechet {ref['frechet']:.1f}  diversity {ref['diversity']:.3f}")

    set_seed(seed)
    ours = gan_learner(x[gan], nz=nz)
    steps = fit_for(ours, budget)
    a = sample_scores(generate(ours, n, seed=seed+1), real8, clf, 8)

    set_seed(seed)
    x32 = F.interpolate(torch.tensor(x[gan]).float()[:, None]/255, size=(32, 32), mode='bilinear', align_corners=False)
    base = GANLearner.wgan(gan_dls(x32.clamp(0, 1), nz=nz), basic_generator(32, 1, nz), basic_critic(32, 1),
                           opt_func=partial(Adam, mom=0.))
    base.recorder.train_metrics, base.recorder.valid_metrics = True, False
    bsteps = fit_for(base, budget, lr=2e-4, wd=0.)
    b = sample_scores(fastai_samples(base, n, seed+1, nz), real8, clf, 8)

    print(f"{'':34}{'share of 8s':>12}{'frechet':>10}{'diversity':>11}{'steps':>7}")
    print(f"{'fastpipes gan_learner (bce, 28px)':34}{a['share']:12.3f}{a['frechet']:10.1f}{a['diversity']:11.3f}{steps:7d}")
    print(f"{'fastai GANLearner.wgan (32px)':34}{b['share']:12.3f}{b['frechet']:10.1f}{b['diversity']:11.3f}{bsteps:7d}")
    print(f"frechet ratio fastpipes/fastai: {a['frechet']/b['frechet']:.3f} (target <= 0.5); "
          f"share {a['share']:.3f} (target >= 0.9); diversity ratio {a['diversity']:.3f} (> 0.5: no collapse)")

if __name__ == '__main__':
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--budget', type=float, default=90., help='seconds of training per side')
    p.add_argument('--n', type=int, default=500, help='samples per side')
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    main(args.budget, args.n, seed=args.seed)
