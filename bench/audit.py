"""`fastpipes.audit` on real photos with planted problems, against the in-sample loss order and the perceptual hash.

    .venv/bin/python bench/audit.py DATA [--seed 0] [--epochs 2] [--ft-size 160] [--no-finetune] [--keep DIR]

DATA is a folder of class folders (`../shared/data/ants-bees`: 245 photos of ants and bees). The bench copies it
into `{train,test}/<label>/` (a fifth of each class to `test`, by `--seed`), then plants problems with
`fastpipes.audit.inject_problems`: 10% of the photos moved to the other class; four GROUPS of generated off-topic
images (14 cartoons, 12 text images, 10 maps, 8 charts, each group filed under one class, a fifth of them in
`test`); 30 transformed copies of training photos (crops to 70–90% of each side, rescales to 40–80%, a text overlay,
re-encoding at JPEG quality 20–45; one to three of these each): 10 in their own class, 10 under the other label,
10 into `test`. Then, in one run:
- `audit_images(DATA)` with its defaults, cold (no cache) with onnxruntime (when installed, as `audit_images` does by
  default) and with PyTorch alone, then cached (a second run): wall and CPU time per 1000 images (scaled from the dataset's
  size), the network's one-time build (per process) timed apart, with the load average before each;
- label flips: AUROC and precision at k (k = number of flips) of `label_score` (1 − the out-of-sample probability
  of the given label) among the photos (flipped or not); the same for two in-sample orders: (a) the same logistic
  regression on the same embeddings fitted on all images with their noisy labels, ranked by its own loss; (b)
  fastai's `ImageClassifierCleaner` order: plain fastai, `vision_learner(dls, efficientnet_lite0)` (fastai's head,
  the same offline weights) `.fine_tune(--epochs)` on `ImageDataLoaders.from_folder(train='train', valid='test',
  item_tfms=Resize(--ft-size), batch_tfms=aug_transforms())` of the noisy folder (off-topic images and copies
  included), every image ranked by its loss from `learn.get_preds(dl=dls[i].new(shuffle=False, drop_last=False),
  with_loss=True)` as the cleaner does (training images in-sample, `test` images out-of-sample);
- off-topic: AUROC and precision at k of `offtopic_score`; the same for a pure nearest-neighbour test (mean cosine
  distance to the 5 nearest neighbours in the same class), which a group hides from;
- copies, pair by pair over all pairs of images: recall of the planted (original, copy) pairs and the fraction of
  flagged pairs that are not planted, at `audit_images`'s threshold; AUROC and precision at k; the same for the 64-bit
  perceptual hash (`fastpipes.clean.phash`, ImageHash's phash) at `clean_images`' default of 4 bits, and its best
  recall with at most 1% false pairs at any threshold;
- what `audit_images` flags (its `issue` column) against what was planted: precision and recall per kind.
"""
import argparse, os, shutil, sys, tempfile, time
from pathlib import Path

import numpy as np, pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
GROUPS = (('cartoon', 14), ('text', 12), ('map', 10), ('chart', 8))

def split_copy(src:Path, dest:Path, test_frac:float, seed:int):
    "Copy the class folders of `src` into `dest/{train,test}/<label>/`, `test_frac` of each class to `test`."
    rng = np.random.default_rng(seed)
    for c in sorted(p for p in src.iterdir() if p.is_dir()):
        fns = sorted(f for f in c.iterdir() if f.is_file())
        test = set(rng.permutation(len(fns))[:int(round(test_frac*len(fns)))].tolist())
        for i, f in enumerate(fns):
            d = dest/('test' if i in test else 'train')/c.name; d.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, d/f.name)

def auroc(y, s)->float:
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(np.asarray(y, bool), np.asarray(s, float)))

def p_at_k(y, s)->float:
    y = np.asarray(y, bool); k = int(y.sum()); return float(y[np.argsort(-np.asarray(s, float), kind='stable')[:k]].mean())

def load()->str: return ' '.join(f'{v:.2f}' for v in os.getloadavg())

def timed(f):
    t, c = time.perf_counter(), time.process_time(); r = f(); return r, time.perf_counter() - t, time.process_time() - c

def finetune_losses(dest:Path, epochs:int, size:int, seed:int)->tuple[pd.Series, float]:
    "Each image's loss under a model fine-tuned on the noisy labels, as fastai's cleaner ranks them; its accuracy."
    from fastai.vision.all import ImageDataLoaders, Resize, aug_transforms, vision_learner, accuracy, set_seed
    from fastpipes.arch import efficientnet_lite0
    set_seed(seed)
    dls = ImageDataLoaders.from_folder(dest, train='train', valid='test', item_tfms=Resize(size), batch_tfms=aug_transforms(),
                                       bs=32, num_workers=0, seed=seed)
    learn = vision_learner(dls, efficientnet_lite0, metrics=accuracy)
    out = {}
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(epochs)
        for i in (0, 1):   # fastai.vision.widgets._get_iw_info
            dl = learn.dls[i].new(shuffle=False, drop_last=False)
            _, _, losses = learn.get_preds(dl=dl, with_loss=True)
            out.update({Path(f).relative_to(dest).as_posix(): float(l) for f, l in zip(dl.dataset.items, losses)})
        acc = float(learn.validate()[1])
    return pd.Series(out), acc

def pair_table(n:int, i, j, s)->np.ndarray:
    "A dense `(n, n)` score matrix from scores `s` of pairs `(i, j)`; -1 elsewhere."
    M = np.full((n, n), -1., np.float32); M[i, j] = s; M[j, i] = s; return M

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('data', type=Path); p.add_argument('--seed', type=int, default=0)
    p.add_argument('--epochs', type=int, default=2); p.add_argument('--ft-size', type=int, default=160)
    p.add_argument('--no-finetune', action='store_true'); p.add_argument('--keep', type=Path, default=None)
    a = p.parse_args()
    from sklearn.linear_model import LogisticRegression
    from PIL import Image
    from fastpipes import audit as A
    from fastpipes.clean import phash, to_rgb
    from fastpipes.clean import _popcount

    tmp = Path(tempfile.mkdtemp(prefix='fastpipes-bench-audit-'))
    dest = a.keep or tmp/'data'
    if dest.exists(): shutil.rmtree(dest)
    split_copy(a.data, dest, 0.2, a.seed)
    truth = A.inject_problems(dest, flips=0.1, groups=GROUPS, copies=(10, 10, 10), seed=a.seed)
    print(f"{a.data} → {dest}: planted {dict(truth.kind.value_counts())}; cores: {os.cpu_count()}")

    def cold(engine:str):
        "A cold audit (no cache) with `engine` (onnxruntime or PyTorch alone): the network's build, then the audit."
        shutil.rmtree(dest/A.CACHE, ignore_errors=True); A._net.cache_clear()
        real = A._onnx
        if engine == 'torch': A._onnx = lambda net, size: None
        try:
            print(f"load before the cold audit ({engine}): {load()}", flush=True)
            (_, got), bw, bc = timed(lambda: A._net('efficientnet_lite0', 224))
            assert got == engine
            return (*timed(lambda: A.audit_images(dest, quiet=True)), bw, bc)
        finally: A._onnx = real; A._net.cache_clear()
    import importlib.util
    engines = ['onnxruntime', 'torch'] if importlib.util.find_spec('onnxruntime') else ['torch']
    runs = {e: cold(e) for e in reversed(engines)}   # the default engine last: its cache and table stay
    df = runs[engines[0]][0]; n = len(df)
    print(f"load before the cached audit: {load()}")
    df2, wall2, cpu2 = timed(lambda: A.audit_images(dest, quiet=True))
    print(f"\n== time ({n} images at 224 px, efficientnet_lite0, {os.cpu_count()} cores; per 1000 images: scaled from {n})")
    for e in engines:
        _, wall, cpu, bw, bc = runs[e]
        print(f"cold, {e + ':':13s} {1000*wall/n:6.1f} s wall per 1000 images ({1000*cpu/n:.1f} s CPU), "
              f"after building the network once: {bw:.1f} s wall ({bc:.1f} s CPU)")
    print(f"cached:              {1000*wall2/n:6.2f} s wall per 1000 images ({1000*cpu2/n:.2f} s CPU); "
          f"same table as cold: {df.equals(df2)}")
    if len(engines) > 1: print(f"same flags with either engine: {runs['torch'][0].issue.equals(df.issue)}")

    kind = df.file.map(dict(zip(truth.file, truth.kind))).fillna('clean')
    df = df.assign(kind=kind)
    d = A._Cache(A.cache_file(dest)).get(list(df.sha256))
    X = A._l2(d['emb'])
    classes = sorted(df.label.unique()); y = df.label.map(classes.index).to_numpy()

    print("\n== label flips (among the photos: flipped or not)")
    ph = df.kind.isin(['clean', 'flipped']).to_numpy(); fl = (df.kind == 'flipped').to_numpy()
    rows = [('audit: out-of-sample self-confidence (5-fold)', df.label_score.to_numpy())]
    P = LogisticRegression(C=1.0, max_iter=1000).fit(X, y).predict_proba(X)
    rows.append(('in-sample: same regression fitted on all', 1 - P[np.arange(n), y]))
    if not a.no_finetune:
        print(f"fine-tuning efficientnet_lite0 for the cleaner's order (load {load()}) ...", flush=True)
        (losses, acc), tft, _ = timed(lambda: finetune_losses(dest, a.epochs, a.ft_size, a.seed))
        ft = df.file.map(losses).to_numpy(dtype=float)
        rows.append((f'fastai cleaner order (fine_tune({a.epochs}), accuracy {acc:.2f}, {tft:.0f} s)', ft))
        tr = (df.split == 'train').to_numpy()
        rows.append(('   the same, training split only', np.where(tr, ft, np.nan)))
    for name, s in rows:
        m = ph & ~np.isnan(s)
        print(f"{name:62s} AUROC {auroc(fl[m], s[m]):.3f}  precision@{int(fl[m].sum())} {p_at_k(fl[m], s[m]):.2f}")
    flag = (df.issue == 'mislabeled').to_numpy()
    right = (df.suggested[fl & flag] == df.file[fl & flag].map(dict(zip(truth.file, truth.label)))).mean()
    print(f"flagged mislabeled: {int(flag[ph].sum())}, precision {fl[ph & flag].mean():.2f}, recall {flag[ph & fl].mean():.2f}; "
          f"suggested label right for {right:.2f} of the flagged flips")

    print("\n== off-topic (groups)")
    off = (df.kind == 'off-topic').to_numpy()
    knn = np.zeros(n)
    for c in range(len(classes)):
        m = np.flatnonzero(y == c); D = 1 - X[m] @ X[m].T; np.fill_diagonal(D, np.inf)
        knn[m] = np.sort(D, 1)[:, :5].mean(1)
    for name, s in [('audit: distance to the classes\' cores / their spread', df.offtopic_score.to_numpy()),
                    ('pure nearest-neighbour test: mean distance to 5 in-class', knn)]:
        print(f"{name:62s} AUROC {auroc(off, s):.3f}  precision@{int(off.sum())} {p_at_k(off, s):.2f}")
    flag = (df.issue == 'off-topic').to_numpy()
    print(f"flagged off-topic: {int(flag.sum())}, precision {off[flag].mean():.2f}, recall {flag[off].mean():.2f}; "
          f"planted groups: {len(GROUPS)}, audit's groups: {df.group[flag].replace('', np.nan).nunique()}")
    print("   flagged but not planted:", ', '.join(df.file[flag & ~off]) or '-')

    print("\n== transformed copies (pairs)")
    idx = {f: k for k, f in enumerate(df.file)}
    cp = truth[truth.kind.str.startswith('copy')]
    T = np.zeros((n, n), bool)
    for f, o in zip(cp.file, cp.of): T[idx[f], idx[o]] = T[idx[o], idx[f]] = True
    iu = np.triu_indices(n, 1); t = T[iu]
    flat = df.quality.str.contains('low-information').to_numpy()
    i, j, s, v = A.copy_pairs(X, d['thumb'], flat)
    S, V = pair_table(n, i, j, s)[iu], pair_table(n, i, j, v.astype(float))[iu] > 0
    hs = np.array([phash(to_rgb(Image.open(dest/f))) for f in df.file], dtype=np.uint64)
    H = _popcount(hs[:, None] ^ hs[None, :])[iu].astype(float)
    def at(pred):
        false = (~t[pred]).mean() if pred.any() else 0
        return f"recall {pred[t].mean():.2f}, false pairs {(~t[pred]).sum()}/{pred.sum()} ({false:.1%})"
    def best(score):
        o = np.argsort(-score, kind='stable'); tp = np.cumsum(t[o]); fp = np.cumsum(~t[o]); ok = fp <= 0.01*(tp + fp)
        return tp[ok].max()/t.sum() if ok.any() else 0.
    print(f"{'audit: embedding neighbours + thumbnail cross-correlation':62s} AUROC {auroc(t, S):.4f}  precision@{int(t.sum())} {p_at_k(t, S):.2f}  "
          f"as flagged: {at(V)}")
    print(f"{'perceptual hash (64 bits)':62s} AUROC {auroc(t, -H):.4f}  precision@{int(t.sum())} {p_at_k(t, -H):.2f}  "
          f"at <= 4 bits: {at(H <= 4)}; best recall with <= 1% false pairs: {best(-H):.2f}")
    ps = {(int(a), int(b)): (float(w), bool(x)) for a, b, w, x in zip(i, j, s, v)}
    pair = lambda f, o: ps.get((min(idx[f], idx[o]), max(idx[f], idx[o])), (-1., False))
    for k in ('copy', 'copy-two-labels', 'copy-leak'):
        sel = cp[cp.kind == k]
        print(f"   {k:16s} planted {len(sel):3d}, found {sum(pair(f, o)[1] for f, o in zip(sel.file, sel.of)):3d}")
    missed = [f"{f} ({h}: {pair(f, o)[0]:.2f})" for f, o, h in zip(cp.file, cp.of, cp.how) if not pair(f, o)[1]]
    false = [f"{df.file[a]} ~ {df.file[b]} ({w:.2f})" for (a, b), (w, x) in ps.items() if x and not T[a, b]]
    print("   missed:", ', '.join(missed) or '-'); print("   false pairs:", ', '.join(false) or '-')

    print("\n== audit's issue column against what was planted")
    planted = {'mislabeled': df.kind == 'flipped', 'off-topic': df.kind == 'off-topic',
               'copy (any kind)': df.kind.str.startswith('copy') | df.file.isin(cp.of[cp.kind == 'copy-two-labels'])}
    got = {'mislabeled': df.issue == 'mislabeled', 'off-topic': df.issue == 'off-topic',
           'copy (any kind)': df.issue.str.startswith('copy')}
    for k in planted:
        print(f"{k:16s} flagged {int(got[k].sum()):3d}, planted {int(planted[k].sum()):3d}, "
              f"precision {planted[k][got[k]].mean():.2f}, recall {got[k][planted[k]].mean():.2f}")
    print('\n' + A.audit_summary(df.drop(columns='kind')))
    if not a.keep: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
