"""Files per second of `fastpipes.clean.clean_images` against fastai's `verify_images` on the same folder.

    .venv/bin/python bench/clean.py [--n 400] [--seed 0] [--repeat 3]

Generates `n` photo-like JPEGs (400–800 px, two classes, train/test) plus a few broken files (truncated, HTML,
empty), copies the folder fresh for each side and each repeat, and times
- fastai: `verify_images(get_image_files(path))` (opens each file, decodes it at 1/8 scale in a process pool), and
  the usual `.map(Path.unlink)` of what it finds;
- fastpipes: `clean_images(path, quiet=True)` (every byte decoded, unchanged JPEGs DCT-scaled as fastai does;
  RGB conversion, exact and near-duplicate detection, leakage, manifest), and again with `full_decode=True`
  (unchanged JPEGs decoded at full resolution too).
Prints the best and the median of `repeat` interleaved runs for each side and the ratios (fastpipes / fastai files per second).
"""
import argparse, os, shutil, sys, tempfile, time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def make_folder(dest:Path, n:int, seed:int)->int:
    "Write `n` photo-like JPEGs and some broken files under `dest/{train,test}/<label>/`; the number of files."
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = rng.integers(400, 801, 2)
        grid = rng.random((6, 8, 3))
        im = Image.fromarray((grid*255).astype(np.uint8)).resize((int(w), int(h)), Image.Resampling.BICUBIC)
        a = np.asarray(im).astype(np.int16) + rng.integers(-12, 13, (int(h), int(w), 1), dtype=np.int16)   # texture
        im = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        split = 'test' if i % 5 == 0 else 'train'
        fn = dest/split/('a' if i % 2 else 'b')/f'{i:05d}.jpg'
        fn.parent.mkdir(parents=True, exist_ok=True)
        im.save(fn, quality=int(rng.integers(75, 96)))
    broken = sorted(dest.rglob('*.jpg'))[:max(3, n//50)]
    for j,fn in enumerate(broken):
        b = fn.read_bytes()
        bad = [b[:len(b)//3], b'<!doctype html><html><body>404</body></html>', b''][j % 3]
        (fn.parent/f'broken-{j}.jpg').write_bytes(bad)
    return len(list(dest.rglob('*.jpg')))

def time_fastai(path:Path)->float:
    from fastai.vision.utils import verify_images
    from fastai.data.transforms import get_image_files
    t = time.perf_counter()
    failed = verify_images(get_image_files(path))
    failed.map(Path.unlink)
    return time.perf_counter() - t

def time_fastpipes(path:Path, **kw)->tuple[float,object]:
    from fastpipes.clean import clean_images
    t = time.perf_counter()
    res = clean_images(path, quiet=True, **kw)
    return time.perf_counter() - t, res

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=400); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--repeat', type=int, default=5)
    a = p.parse_args()
    import fastai.vision.utils, fastpipes.clean, imagehash  # imports are not timed
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp)/'src'
        n = make_folder(src, a.n, a.seed)
        fa, fp, ff, f1 = [], [], [], []
        sides = [('fastai', time_fastai, fa), ('fastpipes', lambda p: time_fastpipes(p)[0], fp),
                 ('full', lambda p: time_fastpipes(p, full_decode=True)[0], ff),
                 ('one', lambda p: time_fastpipes(p, num_workers=1)[0], f1)]
        for r in range(a.repeat):
            for name,fn,acc in sides:
                dst = Path(tmp)/f'{name}-{r}'; shutil.copytree(src, dst)
                acc.append(fn(dst)); shutil.rmtree(dst)
        dst = Path(tmp)/'last'; shutil.copytree(src, dst); _, res = time_fastpipes(dst)
    med = lambda v: sorted(v)[len(v)//2]
    print(f"{n} files ({a.n} photo-like JPEGs 400-800 px + broken ones), {os.cpu_count()} CPUs, load average "
          f"{os.getloadavg()[0]:.1f}; best and median of {a.repeat} interleaved runs, each on a fresh copy")
    for name,v in [('fastai verify_images + unlink', fa), ('fastpipes clean_images', fp),
                   ('  with full_decode=True', ff), ('  with num_workers=1 (no threads)', f1)]:
        print(f"{name:32s}: {n/min(v):7.1f} files/s best, {n/med(v):7.1f} median")
    print(f"ratio fastpipes / fastai        : {min(fa)/min(fp):7.2f}x best, {med(fa)/med(fp):7.2f}x median"
          f"   (full_decode=True: {min(fa)/min(ff):.2f}x best, {med(fa)/med(ff):.2f}x median)")
    print(f"fastpipes: {res}")

if __name__ == '__main__': main()
