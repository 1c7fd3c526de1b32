"""Near-duplicate search of `fastpipes.clean` (multi-index hashing) against the all-pairs loop it replaced, on the same hashes.

    .venv/bin/python bench/near_dups.py [--n 10000] [--family 1600] [--copies 4] [--seed 0] [--repeat 3]

Makes `n` images: one photo-like original with `family - 1` near copies (the issue's case: 1600 copies of one image),
and originals with `copies` near copies each for the rest (rescaled 80–100%, re-encoded as JPEG at quality 60–95,
brightness shifted a little). Computes each image's perceptual hash and 4×4 colour thumbnail as `clean_images` does
(`_hashes`), then times, on those same arrays,
- all pairs: the implementation before multi-index hashing (kept here verbatim: a NumPy popcount over all pairs,
  then a Python loop comparing thumbnails pair by pair, then union-find), once (it is the slow side);
- fastpipes: `_near_pairs` (hashes bucketed on `near_dup + 1` blocks of bits, candidates checked in bulk) and
  `_groups` (connected components), best and median of `repeat`;
checks that both give the same groups and prints the times and their ratio.
"""
import argparse, io, sys, time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

def all_pairs(ph:np.ndarray, thumbs:np.ndarray, near_dup:int, colour_tol:float=24.)->list[tuple[int,int]]:
    "The all-pairs `_near_pairs` as it was before multi-index hashing."
    from fastpipes.clean import _popcount
    pairs, chunk = [], max(1, (1<<24)//max(len(ph), 1))   # at most 16M hash pairs (128 MB) at a time
    for s in range(0, len(ph), chunk):
        d = _popcount(ph[s:s+chunk, None] ^ ph[None, :])
        for i,j in zip(*np.nonzero(d <= near_dup)):
            i += s
            if i < j and np.abs(thumbs[i] - thumbs[j]).mean() <= colour_tol: pairs.append((int(i), int(j)))
    return pairs

def union_find(n:int, pairs)->list[list[int]]:
    "The union-find `_groups` as it was before."
    parent = list(range(n))
    def find(i):
        while parent[i] != i: parent[i] = parent[parent[i]]; i = parent[i]
        return i
    for i,j in pairs: parent[find(i)] = find(j)
    comps = {}
    for i in range(n): comps.setdefault(find(i), []).append(i)
    return [c for c in comps.values() if len(c) > 1]

def photo(rng, size=(96, 72))->Image.Image:
    g = rng.random((5, 6, 3))
    return Image.fromarray((g*255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)

def near_copy(im:Image.Image, rng)->Image.Image:
    "A rescaled, re-encoded, slightly brightened copy of `im`."
    s = rng.uniform(0.8, 1.0)
    im = im.resize((max(8, int(im.width*s)), max(8, int(im.height*s))), Image.Resampling.BICUBIC)
    a = np.clip(np.asarray(im).astype(np.int16) + int(rng.integers(-6, 7)), 0, 255).astype(np.uint8)
    buf = io.BytesIO(); Image.fromarray(a).save(buf, 'JPEG', quality=int(rng.integers(60, 96)))
    return Image.open(buf).convert('RGB')

def make_hashes(n:int, family:int, copies:int, seed:int)->tuple[np.ndarray,np.ndarray]:
    "Hashes and thumbnails of `n` images: one family of `family` near copies, the rest in families of `copies+1`."
    from fastpipes.clean import _hashes
    rng = np.random.default_rng(seed)
    hs, ts = [], []
    def add(im): h,t = _hashes(im); hs.append(h); ts.append(t)
    first = photo(rng); add(first)
    for _ in range(family - 1): add(near_copy(first, rng))
    while len(hs) < n:
        im = photo(rng); add(im)
        for _ in range(min(copies, n - len(hs))): add(near_copy(im, rng))
    return np.array(hs, dtype=np.uint64), np.stack(ts)

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=10_000); p.add_argument('--family', type=int, default=1600)
    p.add_argument('--copies', type=int, default=4); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--repeat', type=int, default=3); p.add_argument('--near-dup', type=int, default=4)
    a = p.parse_args()
    from fastpipes.clean import _near_pairs, _groups
    t = time.perf_counter(); ph, th = make_hashes(a.n, a.family, a.copies, a.seed)
    print(f"{len(ph)} images (a family of {a.family} near copies, the rest in families of {a.copies+1}); hashed in {time.perf_counter()-t:.1f} s")
    _groups(2, *_near_pairs(ph[:2], th[:2], a.near_dup))   # warm up: SciPy's import is not part of the search
    times = []
    for _ in range(a.repeat):
        t = time.perf_counter(); new = _groups(len(ph), *_near_pairs(ph, th, a.near_dup)); times.append(time.perf_counter() - t)
    t = time.perf_counter(); old = union_find(len(ph), all_pairs(ph, th, a.near_dup)); t_old = time.perf_counter() - t
    same = sorted(map(sorted, old)) == sorted(map(sorted, new))
    sizes = sorted(map(len, new), reverse=True)
    print(f"groups: {len(new)} (largest {sizes[:3]}); same groups as all pairs: {same}")
    print(f"all pairs (before):            {t_old:8.2f} s")
    print(f"multi-index hashing (now):     {min(times):8.2f} s best, {np.median(times):.2f} s median of {a.repeat}")
    print(f"speed-up: {t_old/min(times):.0f}x (best), {t_old/np.median(times):.0f}x (median)")
    if not same: sys.exit("the groups differ")

if __name__ == '__main__': main()
