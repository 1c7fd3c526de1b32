"""Benchmark `train_classifier` against the same training written directly in fastai, and presized vs large files.

1. Overhead: `image_dls` + `train_classifier(cam=True, pretrained=False)` against `ImageDataLoaders.from_folder` +
   `vision_learner(custom_head=<the course's CAM head>)` + the same schedule, on the same folder, arch, size, bs
   and seed, both in PyTorch's default memory format (`channels_last=False`), so the two do the same arithmetic
   and the ratio is the wrapper's overhead. Rounds are interleaved (ours, fastai, ours, ...) and the median is
   compared: target <= 1.05x.
   `--fine-tune` compares `train_classifier(freeze_epochs=1)` with `fine_tune(1)` (two epochs each) instead of
   one cycle of one epoch (what `train_classifier` does for `pretrained=False`).
2. Presizing: one epoch of `train_classifier` on large JPEG originals against the same images presized to
   `--max-size` by `fastpipes.clean.clean_images(max_size=...)` (or, when that is not available, by PIL's
   `thumbnail`, which is what the clean stage does; the output says which).
3. Memory format: one epoch of `train_classifier` in channels-last format (its default on the CPU) against the
   same call with `channels_last=False` (PyTorch's default format, what the plain fastai flow trains in).

    OMP_NUM_THREADS=2 .venv/bin/python bench/train.py            # from the repository root
"""
import argparse, os, shutil, statistics, sys, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import torch
from PIL import Image

def timed(f):
    t = time.perf_counter(); f(); return time.perf_counter() - t

def ours(path, a, **kw):
    from fastpipes.data import image_dls
    from fastpipes.train import train_classifier
    dls = image_dls(path, size=a.size, bs=a.bs, seed=a.seed, num_workers=a.workers)
    fe = dict(freeze_epochs=1) if a.fine_tune else {}
    return train_classifier(dls, a.arch, epochs=1, pretrained=False, cam=True, quiet=True, seed=a.seed, **fe, **kw)

def plain_fastai(path, a):
    "The course's flow, written directly in fastai: what `train_classifier` must not be slower than."
    from fastai.vision.all import (ImageDataLoaders, Resize, aug_transforms, Normalize, imagenet_stats, vision_learner,
                                   models, accuracy, error_rate, set_seed, nn, Flatten)
    set_seed(a.seed)
    dls = ImageDataLoaders.from_folder(path, train='train', valid='test', item_tfms=Resize(a.size), bs=a.bs, seed=a.seed,
                                       batch_tfms=[*aug_transforms(), Normalize.from_stats(*imagenet_stats)],
                                       num_workers=a.workers)
    set_seed(a.seed)
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), Flatten(), nn.Linear(512, dls.c, bias=False))
    learn = vision_learner(dls, getattr(models, a.arch), pretrained=False, custom_head=head, metrics=[accuracy, error_rate])
    with learn.no_bar(), learn.no_logging():
        if a.fine_tune: learn.fine_tune(1)
        else: learn.unfreeze(); learn.fit_one_cycle(1, 2e-3)
    return learn

def presize(src:Path, dst:Path, max_size:int)->str:
    if dst.exists(): shutil.rmtree(dst)
    shutil.copytree(src, dst)
    try: from fastpipes.clean import clean_images
    except ImportError: clean_images = None
    if clean_images is not None:
        clean_images(dst, max_size=max_size, quiet=True)
        return f"fastpipes.clean.clean_images(max_size={max_size})"
    for fn in dst.rglob('*.jpg'):
        with Image.open(fn) as im: im = im.convert('RGB'); im.thumbnail((max_size, max_size)); im.save(fn, quality=90)
    return f"PIL thumbnail to {max_size} px (emulating clean_images(max_size={max_size}), not yet available)"

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--data', default='/tmp/fastpipes-bench-train'); p.add_argument('--n-train', type=int, default=100)
    p.add_argument('--n-test', type=int, default=25); p.add_argument('--orig-size', type=int, default=1024)
    p.add_argument('--max-size', type=int, default=192); p.add_argument('--size', type=int, default=128)
    p.add_argument('--bs', type=int, default=32); p.add_argument('--arch', default='resnet18')
    p.add_argument('--seed', type=int, default=42); p.add_argument('--rounds', type=int, default=3)
    p.add_argument('--workers', type=int, default=0); p.add_argument('--fine-tune', action='store_true')
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', 2)))
    from fastpipes.synth import make_marks
    data = Path(a.data); orig, small = data/'orig', data/'presized'
    if not (orig/'boxes.csv').exists():
        t = timed(lambda: make_marks(orig, n_train=a.n_train, n_test=a.n_test, size=a.orig_size, seed=a.seed))
        print(f"made {2*(a.n_train+a.n_test)} marks images of {a.orig_size} px in {t:.1f}s")
    how = presize(orig, small, a.max_size)
    mb = lambda d: sum(f.stat().st_size for f in d.rglob('*.jpg'))/2**20
    print(f"data: {2*a.n_train} train + {2*a.n_test} test images; originals {a.orig_size} px ({mb(orig):.1f} MiB), "
          f"presized by {how} ({mb(small):.1f} MiB)")
    print(f"{a.arch} at {a.size} px, bs={a.bs}, pretrained=False, num_workers={a.workers}, torch threads={torch.get_num_threads()}, "
          f"{'fine_tune(1) = 2 epochs' if a.fine_tune else 'one cycle of 1 epoch'}; load average {os.getloadavg()[0]:.2f}")

    # warm-up: imports, first-call allocations
    ours(small, a); plain_fastai(small, a)
    t_ours, t_fai = [], []
    for r in range(a.rounds):
        t_ours.append(timed(lambda: ours(small, a, channels_last=False))); t_fai.append(timed(lambda: plain_fastai(small, a)))
        print(f"  round {r+1}: train_classifier {t_ours[-1]:.2f}s   plain fastai {t_fai[-1]:.2f}s")
    mo, mf = statistics.median(t_ours), statistics.median(t_fai)
    print(f"overhead: train_classifier {mo:.2f}s vs vision_learner+fit written in fastai {mf:.2f}s (medians of {a.rounds}) "
          f"-> ratio {mo/mf:.3f} (target <= 1.05); median of the paired per-round ratios "
          f"{statistics.median(o/f for o,f in zip(t_ours, t_fai)):.3f}")

    t_big, t_small = [], []
    for r in range(max(1, a.rounds-1)):
        t_big.append(timed(lambda: ours(orig, a))); t_small.append(timed(lambda: ours(small, a)))
        print(f"  round {r+1}: originals {t_big[-1]:.2f}s   presized {t_small[-1]:.2f}s")
    mb_, ms = statistics.median(t_big), statistics.median(t_small)
    print(f"presizing: epoch on {a.orig_size} px originals {mb_:.2f}s vs on {a.max_size} px presized files {ms:.2f}s "
          f"-> originals take {mb_/ms:.2f}x as long (presized is {mb_/ms:.2f}x faster)")

    t_cl, t_cf = [], []
    for r in range(a.rounds):
        t_cl.append(timed(lambda: ours(small, a, channels_last=True))); t_cf.append(timed(lambda: ours(small, a, channels_last=False)))
        print(f"  round {r+1}: channels-last {t_cl[-1]:.2f}s   contiguous {t_cf[-1]:.2f}s")
    ml, mc = statistics.median(t_cl), statistics.median(t_cf)
    print(f"memory format: channels-last {ml:.2f}s vs contiguous {mc:.2f}s (medians of {a.rounds}) -> ratio {ml/mc:.3f}")

if __name__ == '__main__': main()
