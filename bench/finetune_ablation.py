"""Where the points go: an ablation of fine-tuning recipes on real photos, the pretrained `efficientnet_lite0` (ImageNet
weights from the registry package) on every row, judged on held-out photos, over several seeds (split and training
seed together: a 49-photo validation set is a noisy judge, one photo is 2 points).

Run: `python bench/finetune_ablation.py ../shared/data/ants-bees --size 128 --epochs 1 --seeds 0 1 2 --variants plain fp ...`
(the photos are copied and cleaned once into `--cache`; `--list` names the variants). Each row prints the accuracy per
seed, the mean and the spread (max - min) and the mean training wall time; `--log` appends one JSON line per run."""
import argparse, json, shutil, statistics, time
from functools import partial
from pathlib import Path

ARCH = 'efficientnet_lite0'

def _dls(data, seed, size, bs, aug=True, resize_method='crop'):
    from fastpipes.data import image_dls
    return image_dls(data, valid=None, valid_pct=0.2, size=size, bs=bs, seed=seed, aug=aug, resize_method=resize_method,
                     num_workers=0)

def _plain(dls, seed, epochs, fe, **_):
    "Plain fastai: `vision_learner(dls, efficientnet_lite0).fine_tune(epochs)`, fastai's own head and defaults."
    from fastai.vision.all import vision_learner, accuracy, set_seed
    from fastpipes.arch import efficientnet_lite0
    set_seed(seed)
    learn = vision_learner(dls, efficientnet_lite0, metrics=accuracy)
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(epochs, freeze_epochs=fe)
    return learn

def _fp(dls, seed, epochs, fe, _fe='arg', _e=0, **kw):
    "fastpipes' `train_classifier` with `kw`; `_fe`: frozen epochs ('arg': as plain fastai's, None: the library's default); `_e`: more epochs."
    from fastpipes.train import train_classifier
    return train_classifier(dls, ARCH, epochs=epochs+_e, freeze_epochs=fe if _fe == 'arg' else _fe, quiet=True, seed=seed, **kw)


def _plain_l0(dls, seed, epochs, fe, **_):
    "Plain fastai on DataLoaders normalised with the statistics the weights expect ([-1, 1])."
    from fastpipes.train import _set_norm
    _set_norm(dls, ([0.5]*3, [0.5]*3))
    return _plain(dls, seed, epochs, fe)

def _nf(): return 1280  # efficientnet_lite0's body channels

class ScaleNorm1d(__import__('torch').nn.Module):
    "Divide each channel by its running root mean square (no centering): folds exactly into the next Linear."
    def __init__(self, nf, momentum=0.1):
        import torch
        super().__init__(); self.momentum = momentum
        self.register_buffer('rms', torch.ones(nf)); self.register_buffer('seen', torch.zeros(()))
    def forward(self, x):
        import torch
        if self.training:
            with torch.no_grad():
                ms = x.detach().pow(2).mean(0).sqrt()
                self.rms.copy_(ms if self.seen == 0 else (1-self.momentum)*self.rms + self.momentum*ms); self.seen += 1
            return x / ms.clamp_min(1e-5)
        return x / self.rms.clamp_min(1e-5)

def _head(norm:str, n_out:int, zero:bool=False):
    import torch.nn as nn
    from fastai.layers import Flatten
    lin = nn.Linear(_nf(), n_out, bias=False)
    mid = dict(none=[], bn=[nn.BatchNorm1d(_nf())], bnna=[nn.BatchNorm1d(_nf(), affine=False)], scale=[ScaleNorm1d(_nf())])[norm]
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), Flatten(), *mid, lin)

class _ZeroHead(__import__('fastai.callback.core', fromlist=['Callback']).Callback):
    order = -10
    def before_fit(self):
        if not getattr(self, 'done', False):
            import torch
            with torch.no_grad(): self.learn.model[1][-1].weight.zero_()
            self.done = True

def _fp_head(dls, seed, epochs, fe, norm='none', zero=False, **kw):
    "train_classifier with a probe head (pool, flatten, a normalisation, Linear without bias)."
    cbs = [_ZeroHead()] if zero else []
    return _fp(dls, seed, epochs, fe, cam=False, custom_head=_head(norm, dls.c), init=None if zero else __import__('torch').nn.init.kaiming_normal_, cbs=cbs, **kw)

def _fp_fe(dls, seed, epochs, fe, _fe=1, **kw): return _fp(dls, seed, epochs, _fe, **kw)

def _ls(): from fastai.losses import LabelSmoothingCrossEntropyFlat; return LabelSmoothingCrossEntropyFlat()

def _pooled(learn, items):
    "Pooled body features `(n, nf)` and targets of `items`, with the validation transforms (no augmentation)."
    import torch
    dl = learn.dls.test_dl(items, with_labels=True)
    body = learn.model[0]; was = body.training; body.eval()
    fs, ys = [], []
    with torch.no_grad():
        for xb, yb in dl: fs.append(body(xb).mean((2, 3)).as_subclass(torch.Tensor)); ys.append(yb.as_subclass(torch.Tensor))
    body.train(was)
    return torch.cat(fs), torch.cat(ys)

def _probe(learn, wd=1e-3, iters=100):
    "Fit the CAM layer (Linear without bias) on the pooled features of the training set with L-BFGS, body frozen."
    import torch, torch.nn.functional as F
    feats, ys = _pooled(learn, learn.dls.train.items)
    lin = learn.model[1][-1]
    w = torch.zeros_like(lin.weight, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=iters, line_search_fn='strong_wolfe')
    def closure():
        opt.zero_grad(); loss = F.cross_entropy(feats @ w.T, ys) + wd/2 * (w**2).sum(); loss.backward(); return loss
    opt.step(closure)
    with torch.no_grad(): lin.weight.copy_(w.detach())

def _fp_probe(dls, seed, epochs, fe, _fe=0, wd=1e-3, lr=None, **kw):
    "Linear probe (L-BFGS) for the CAM layer on the frozen pretrained body, then `fine_tune` (frozen epochs `_fe`)."
    from fastpipes.train import build_learner, TrainHistory
    from fastpipes.distrib import resumable_fine_tune, resumable_one_cycle
    from fastpipes.core import set_seed
    from fastai.metrics import accuracy
    set_seed(seed)
    learn = build_learner(dls, ARCH, metrics=[accuracy], **kw)
    _probe(learn, wd)
    with learn.no_bar(), learn.no_logging():
        if _fe: resumable_fine_tune(learn, epochs, base_lr=lr or 2e-3, freeze_epochs=_fe, seed=seed)
        else:
            learn.unfreeze()
            lr = lr or 1e-3
            learn.fit_one_cycle(epochs, slice(lr/100, lr), pct_start=0.3, div=5.0)
    return learn

def _course_probe(dls, seed, epochs, fe, wd=1e-3, **kw):
    "The course's flow: fastai's head and `fine_tune`, then a CAM layer fitted (L-BFGS) on the trained, frozen body."
    from fastpipes.train import to_cam_learner
    learn = _fp(dls, seed, epochs, fe, cam=False, **kw)
    new = to_cam_learner(learn, epochs=0)
    _probe(new, wd)
    return new

VARIANTS = {
    'plain':        (_plain, {}, {}),
    'plain_l0stats':(_plain_l0, {}, {}),
    'fp':           (_fp, {}, {}),
    'fp_imnstats':  (_fp, dict(normalize=False), {}),
    'fp_fastaihead':(_fp, dict(cam=False), {}),
    'fp_lr5e-3':    (_fp, dict(lr=5e-3), {}),
    'fp_lr1e-2':    (_fp, dict(lr=1e-2), {}),
    'fp_lr2e-2':    (_fp, dict(lr=2e-2), {}),
    'fp_lrfind':    (_fp, dict(lr='find'), {}),
    'fp_fe0':       (_fp_fe, dict(_fe=0), {}),
    'fp_fe2':       (_fp_fe, dict(_fe=2), {}),
    'fp_bs16':      (_fp, {}, dict(bs=16)),
    'fp_bs64':      (_fp, {}, dict(bs=64)),
    'fp_squish':    (_fp, {}, dict(resize_method='squish')),
    'fp_noaug':     (_fp, {}, dict(aug=False)),
    'fp_ls':        (_fp, dict(loss_func=_ls()), {}),
    'fp_tta':       (_fp, dict(_tta=True), {}),
    'plain_tta':    (_plain, dict(_tta=True), {}),
    'fp_zero':      (_fp_head, dict(norm='none', zero=True), {}),
    'fp_bn':        (_fp_head, dict(norm='bn'), {}),
    'fp_bnna':      (_fp_head, dict(norm='bnna'), {}),
    'fp_scale':     (_fp_head, dict(norm='scale'), {}),
    'fp_scale_zero':(_fp_head, dict(norm='scale', zero=True), {}),
    'fp_bn_zero':   (_fp_head, dict(norm='bn', zero=True), {}),
    'probe_fe0':    (_fp_probe, dict(_fe=0), {}),
    'probe_fe1':    (_fp_probe, dict(_fe=1), {}),
    'probe_fe0_wd1e-2': (_fp_probe, dict(_fe=0, wd=1e-2), {}),
    'course_probe': (_course_probe, {}, {}),
    # after the change: `train_classifier`'s default (the CAM layer probed, then fine_tune's unfrozen phase) and variations on it
    'before':       (_fp, dict(probe=False), {}),
    'default':      (_fp, dict(_fe=None), {}),
    'default_e+1':  (_fp, dict(_fe=None, _e=1), {}),
    'default_fe1':  (_fp, dict(_fe=1), {}),
    'default_lr1e-2': (_fp, dict(_fe=None, lr=1e-2), {}),
    'default_lr5e-3': (_fp, dict(_fe=None, lr=5e-3), {}),
    'default_lrfind': (_fp, dict(_fe=None, lr='find'), {}),
    'default_lrmult10': (_fp, dict(_fe=None, lr_mult=10, lr=2e-3), {}),
    'default_lrmult3': (_fp, dict(_fe=None, lr_mult=3, lr=2e-3), {}),
    'default_lrmult1': (_fp, dict(_fe=None, lr_mult=1, lr=2e-3), {}),
    'lrmult10_bs16': (_fp, dict(_fe=None, lr_mult=10, lr=2e-3), dict(bs=16)),
    'lrmult10_ls': (_fp, dict(_fe=None, lr_mult=10, loss_func=_ls(), lr=2e-3), {}),
    'lrmult10_lr4e-3': (_fp, dict(_fe=None, lr_mult=10, lr=4e-3), {}),
    'lrmult10_lr1e-3': (_fp, dict(_fe=None, lr_mult=10, lr=1e-3), {}),
    'lrmult10_lr8e-3': (_fp, dict(_fe=None, lr_mult=10, lr=8e-3), {}),
    'lrmult30': (_fp, dict(_fe=None, lr_mult=30, lr=2e-3), {}),
    'lrmult100': (_fp, dict(_fe=None, lr_mult=100, lr=2e-3), {}),  # = the default before (probe, then fine_tune's rates)
    'default_bs16': (_fp, dict(_fe=None), dict(bs=16)),
    'default_squish': (_fp, dict(_fe=None), dict(resize_method='squish')),
    'default_noaug': (_fp, dict(_fe=None), dict(aug=False)),
    'default_ls':   (_fp, dict(_fe=None, loss_func=_ls()), {}),
    'default_tta':  (_fp, dict(_fe=None, _tta=True), {}),
}

def _evaluate(learn, tta:bool)->float:
    from fastpipes.train import evaluate
    if not tta: return evaluate(learn)['accuracy']
    with learn.no_bar(), learn.no_logging(): probs, targs = learn.tta()
    return float((probs.argmax(1) == targs).float().mean())

def run(data, name, seed, size, epochs, fe, bs):
    fn, kw, dkw = VARIANTS[name]
    kw, dkw = dict(kw), dict(dkw)
    tta = kw.pop('_tta', False)
    dls = _dls(data, seed, size, dkw.pop('bs', bs), **dkw)
    t0 = time.time()
    learn = fn(dls, seed, epochs, fe, **kw)
    wall = time.time() - t0
    return dict(variant=name, seed=seed, size=size, epochs=epochs, freeze_epochs=fe, bs=bs, accuracy=_evaluate(learn, tta), wall=wall)

def _prepare(src:Path, cache:Path)->Path:
    from fastpipes.clean import clean_images
    data = cache/'photos'
    if not (cache/'done').exists():
        shutil.rmtree(cache, ignore_errors=True); shutil.copytree(src, data)
        print(clean_images(data, quiet=True)); (cache/'done').write_text('')
    return data

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('dir', type=Path, nargs='?', help="folder of class folders of photos")
    ap.add_argument('--variants', nargs='+', default=['plain', 'fp']); ap.add_argument('--list', action='store_true')
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--size', type=int, default=128); ap.add_argument('--epochs', type=int, default=1)
    ap.add_argument('--freeze-epochs', type=int, default=1); ap.add_argument('--bs', type=int, default=32)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--cache', type=Path, default=Path('/tmp/fastpipes-ablation'))
    ap.add_argument('--log', type=Path, default=None)
    a = ap.parse_args()
    if a.list:
        for k,(fn,kw,dkw) in VARIANTS.items(): print(f"{k:>16}: {fn.__name__} {kw} {dkw}")
        return
    import torch
    torch.set_num_threads(a.threads)
    data = _prepare(a.dir, a.cache)
    print(f"{a.size} px, {a.freeze_epochs} frozen + {a.epochs} epochs, batch {a.bs}, seeds {a.seeds}, {a.threads} threads")
    print("| variant | " + " | ".join(f"seed {s}" for s in a.seeds) + " | mean | spread | wall (s) |")
    print("|---|" + "---|"*len(a.seeds) + "---|---|---|")
    for name in a.variants:
        rs = []
        for s in a.seeds:
            r = run(data, name, s, a.size, a.epochs, a.freeze_epochs, a.bs)
            rs.append(r)
            if a.log:
                with open(a.log, 'a') as f: f.write(json.dumps(r) + '\n')
        accs = [r['accuracy'] for r in rs]
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in accs) +
              f" | {statistics.mean(accs):.3f} | {max(accs)-min(accs):.3f} | {statistics.mean(r['wall'] for r in rs):.1f} |", flush=True)

if __name__ == '__main__': main()
