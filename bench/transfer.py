"""Transfer learning offline, on real photos: is fastpipes' CAM-ready fine-tuning as accurate as plain fastai with the
very same weights, and at what cost? For seeds 0, 1, 2 (the seed picks the 20% of photos held out and seeds the
training), three sides train the pretrained `efficientnet_lite0` (ImageNet weights from the registry package) at
224 px for 3 epochs and are judged on the held-out photos:

  plain fastai:  `vision_learner(dls, efficientnet_lite0).fine_tune(3)`: fastai's own head (1 frozen + 3 epochs).
  library:       `train_classifier(dls, 'efficientnet_lite0', epochs=3)` on DataLoaders built the same way: its defaults.
  CLI:           `fastpipes train DATA --out RUN --valid 0.2 --seed S --arch efficientnet_lite0 --epochs 3 --size 224`
                 in a subprocess: its defaults, checkpoints and report included (so its wall time counts them).

The DataLoaders are `image_dls(DATA, valid=None, valid_pct=0.2, size=224, seed=S)` with their defaults (batch 32,
fastai's `aug_transforms`), rebuilt for each side; the CLI builds the same split from the same folder. Plain fastai
and the library run in this process, one after the other for each seed (the same imports paid); wall times are
the training alone (for the CLI: the whole command). A 49-photo validation set is a noisy judge (one photo is 2
points): the mean and the spread over the seeds are printed, and the ratios compare the sides measured in this run.

Run: `python bench/transfer.py ../shared/data/ants-bees` (a folder with one sub-folder of photos per class; the
photos are copied and cleaned first). Target: the library's mean >= plain fastai's, at <= 1.2x its wall time.

`--folds K` judges every photo once instead: K stratified folds (fold k is `test/`, the rest `train/`, hard links),
each side trained K times (`image_dls(FOLD, valid='test', seed=k)`; the CLI with `--valid test --seed k`); the
accuracy is over all the photos, and the side-by-side count says on how many photos the two sides disagree."""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ARCH = 'efficientnet_lite0'

def _dls(data:Path, seed:int, size:int):
    "The seed's random 20% held out; a fold's folder (`train/`, `test/`) is split by its folders."
    from fastpipes.data import image_dls
    if (data/'test').is_dir(): return image_dls(data, valid='test', size=size, seed=seed, num_workers=0)
    return image_dls(data, valid=None, valid_pct=0.2, size=size, seed=seed, num_workers=0)

def _folds(data:Path, k:int, root:Path)->list[Path]:
    "`k` stratified folds of `data`'s class folders as dataset folders (`train/`, `test/`) of hard links."
    import random
    out = [root/f'fold{i}' for i in range(k)]
    for cls in sorted(d for d in data.iterdir() if d.is_dir()):
        files = sorted(f for f in cls.iterdir() if f.is_file())
        random.Random(0).shuffle(files)
        for j, f in enumerate(files):
            for i, fold in enumerate(out):
                dest = fold/('test' if j % k == i else 'train')/cls.name/f.name
                dest.parent.mkdir(parents=True, exist_ok=True); os.link(f, dest)
    return out

def plain(data:Path, seed:int, size:int, epochs:int)->dict:
    "fastai as the course writes it: `vision_learner` with fastai's own head, `fine_tune`."
    from fastai.vision.all import vision_learner, accuracy, set_seed
    from fastpipes.arch import efficientnet_lite0   # the same weights (plain fastai would download timm's)
    from fastpipes.train import evaluate
    dls = _dls(data, seed, size)
    t0 = time.time()
    set_seed(seed)
    learn = vision_learner(dls, efficientnet_lite0, metrics=accuracy)
    with learn.no_bar(), learn.no_logging(): learn.fine_tune(epochs)
    return dict(wall=time.time() - t0, **_score(evaluate(learn)), right=_right(learn))

def library(data:Path, seed:int, size:int, epochs:int)->dict:
    "fastpipes' `train_classifier` with its defaults."
    from fastpipes.train import train_classifier, evaluate
    dls = _dls(data, seed, size)
    t0 = time.time()
    learn = train_classifier(dls, ARCH, epochs=epochs, seed=seed, quiet=True)
    return dict(wall=time.time() - t0, **_score(evaluate(learn)), right=_right(learn))

def cli(data:Path, seed:int, size:int, epochs:int, out:Path)->dict:
    "The `fastpipes train` command with its defaults, in a fresh process."
    valid = 'test' if (data/'test').is_dir() else '0.2'
    cmd = [sys.executable, '-m', 'fastpipes.cli', 'train', str(data), '--out', str(out), '--valid', valid, '--seed', str(seed),
           '--arch', ARCH, '--epochs', str(epochs), '--size', str(size), '--quiet']
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
    t0 = time.time()
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    wall = time.time() - t0
    if r.returncode: raise SystemExit(f"fastpipes train failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return dict(wall=wall, **_score(json.loads((out/'metrics.json').read_text())))

def _score(ev:dict)->dict: return dict(accuracy=ev['accuracy'], n=ev['n'])

def _right(learn)->dict:
    "Whether each held-out photo (by file name) is classified right."
    with learn.no_bar(), learn.no_logging(): probs, targs = learn.get_preds(dl=learn.dls.valid)
    return {Path(f).name: bool(ok) for f, ok in zip(learn.dls.valid.items.file, (probs.argmax(1) == targs).tolist())}

def _summary(rs:list[dict])->dict:
    accs = [r['accuracy'] for r in rs]
    return dict(mean=statistics.mean(accs), spread=max(accs) - min(accs), sd=statistics.stdev(accs) if len(accs) > 1 else 0.,
                wall=statistics.mean(r['wall'] for r in rs))

def _photo_by_photo(plain_rs:list[dict], lib_rs:list[dict]):
    "Both sides on the same photos: how many each gets right, and on how many they disagree (which way)."
    n = p_ok = l_ok = only_p = only_l = 0
    for p, l in zip(plain_rs, lib_rs):
        for f, ok in p['right'].items():
            n += 1; p_ok += ok; l_ok += l['right'][f]; only_p += ok and not l['right'][f]; only_l += l['right'][f] and not ok
    print(f"\nphoto by photo, {n} judgements: plain fastai right on {p_ok} ({p_ok/n:.3f}), the library on {l_ok} "
          f"({l_ok/n:.3f}); only plain fastai right on {only_p}, only the library on {only_l}")

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('dir', type=Path, help="folder of class folders of photos")
    ap.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    ap.add_argument('--size', type=int, default=224); ap.add_argument('--epochs', type=int, default=3)
    ap.add_argument('--threads', type=int, default=2)
    ap.add_argument('--folds', type=int, default=0, help="judge every photo once, in this many folds (instead of seeds)")
    a = ap.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    from fastpipes.clean import clean_images
    sides = {'plain fastai': [], 'fastpipes library': [], 'fastpipes CLI': []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)/'photos'
        shutil.copytree(a.dir, data)
        print(clean_images(data, quiet=True))
        units = ([(f'fold {i}', i, d) for i, d in enumerate(_folds(data, a.folds, Path(tmp)/'folds'))] if a.folds
                 else [(f'seed {s}', s, data) for s in a.seeds])
        print(f"{a.threads} torch threads, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; {ARCH}, {a.size} px, "
              f"{a.epochs} epochs, " + (f"{a.folds} folds" if a.folds else f"valid_pct 0.2, seeds {a.seeds}"))
        for name, s, d in units:
            sides['plain fastai'].append(plain(d, s, a.size, a.epochs))
            sides['fastpipes library'].append(library(d, s, a.size, a.epochs))
            sides['fastpipes CLI'].append(cli(d, s, a.size, a.epochs, Path(tmp)/f'run{s}'))
            print(f"{name} (n={sides['plain fastai'][-1]['n']}): " + ", ".join(
                  f"{k} {v[-1]['accuracy']:.3f} in {v[-1]['wall']:.0f} s" for k,v in sides.items()), flush=True)
        print(f"load average at the end {os.getloadavg()[0]:.1f}")
    sm = {k: _summary(v) for k,v in sides.items()}
    _photo_by_photo(sides['plain fastai'], sides['fastpipes library'])
    print(f"\n| side | {' | '.join(n for n, _, _ in units)} | mean | spread (max-min) | sd | wall (s, mean) |")
    print("|---|" + "---|"*len(units) + "---|---|---|---|")
    for k,v in sides.items():
        m = sm[k]
        accs = ' | '.join(f"{r['accuracy']:.3f}" for r in v)
        print(f"| {k} | {accs} | {m['mean']:.3f} | {m['spread']:.3f} | {m['sd']:.3f} | {m['wall']:.1f} |")
    p = sm['plain fastai']
    for k in ('fastpipes library', 'fastpipes CLI'):
        m = sm[k]
        print(f"{k} / plain fastai: accuracy {m['mean'] - p['mean']:+.3f} ({100*(m['mean'] - p['mean']):+.1f} points), "
              f"wall time {m['wall']/p['wall']:.2f}x")
    lib = sm['fastpipes library']
    print(f"target (library mean >= plain's at <= 1.2x its wall time): {lib['mean'] >= p['mean'] and lib['wall'] <= 1.2*p['wall']}; "
          f"stretch (+2 points): {lib['mean'] >= p['mean'] + 0.02}")

if __name__ == '__main__': main()
