"""Wall time and peak memory of `fastpipes demo` (fine-tuning the pretrained efficientnet_lite0) against the previous
demo recipe (ResNet18 from scratch: 8 epochs with MixUp and augmentation) and against the same pipeline written as
the course writes it in plain fastai, all on the same generated images served from the same kind of loopback server:

  fastpipes: `fastpipes demo` (download → clean → CAM-ready fine-tuning in one run → batched CAM grid → report).
  scratch:   the same fastpipes pipeline with the previous recipe (resnet18, pretrained=False, 8 epochs, MixUp).
  plain:     fastai `download_images` per class and split → `verify_images(...).map(Path.unlink)` →
             `ImageDataLoaders.from_folder` → `vision_learner` (the same pretrained EfficientNet-Lite0 weights) →
             `fine_tune` → rebuild the head for CAM (AdaptiveAvgPool2d → Flatten → Linear(1280, n, bias=False)) → a
             second `fine_tune` → a per-image CAM loop (`predict` + a hooked forward pass per file) drawing the 5×5 grid.

Each side runs in a fresh Python process (same imports to pay); peak memory is that process's max RSS.
Run: `python bench/demo.py` (add `--epochs/--size/--n-train` to change the demo's workload).
Targets: the demo ≤ 60 s on 2 cores, accuracy ≥ 0.95, pointing game ≥ 0.9."""
import argparse, json, os, resource, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

def _peak_mb()->float: return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

def plain(urls_json:Path, dest:Path, size:int, epochs:int, bs:int):
    "The course's flow, in plain fastai."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt, torch
    from torch import nn
    from fastai.vision.all import (download_images, verify_images, get_image_files, ImageDataLoaders, Resize, vision_learner,
                                   error_rate, Flatten, hook_output, first, TensorImage, set_seed)
    from fastpipes.arch import efficientnet_lite0   # the same pretrained weights; plain fastai would download timm's
    t0 = time.time()
    urls = json.loads(Path(urls_json).read_text())
    groups = {}
    for u in urls: groups.setdefault((u['split'], u['label']), []).append(u['url'])
    for (split, label), us in groups.items():
        (dest/split/label).mkdir(parents=True, exist_ok=True)
        download_images(dest/split/label, urls=us)
    failed = verify_images(get_image_files(dest))
    failed.map(Path.unlink)
    t_data = time.time()
    set_seed(42)
    dls = ImageDataLoaders.from_folder(dest, train='train', valid='test', item_tfms=Resize(size), bs=bs, num_workers=0)
    learn = vision_learner(dls, efficientnet_lite0, pretrained=True, metrics=error_rate)
    learn.fine_tune(epochs)
    # the course's CAM route: rebuild the head and train again
    learn.model[1] = nn.Sequential(nn.AdaptiveAvgPool2d(output_size=1), Flatten(), nn.Linear(1280, dls.c, bias=False))
    learn.opt = None  # a new optimizer over the new head's parameters
    learn.fine_tune(epochs)
    t_train = time.time()
    acc = 1 - float(learn.validate()[1])
    files = get_image_files(dest/'test')[:25]
    fig, axs = plt.subplots(5, 5, figsize=(10, 10))
    for fn, ax in zip(files, axs.flat):
        label, _, probs = learn.predict(fn)
        x, = first(dls.test_dl([fn]))
        with hook_output(learn.model[0]) as hook:
            with torch.no_grad(): learn.model.eval()(x)
            act = hook.stored[0]
        cam_map = torch.einsum('ck,kij->cij', learn.model[1][-1].weight, act)
        x_dec = TensorImage(dls.train.decode((x,))[0][0])
        x_dec.show(ctx=ax)
        ax.imshow(cam_map[dls.vocab.o2i[label]].detach().cpu(), alpha=0.6, extent=(0, size, size, 0),
                  interpolation='bilinear', cmap='magma')
        ax.set_title(f'{label} ({probs.max():.2f})')
    fig.savefig(dest/'cam.png'); plt.close(fig)
    t_end = time.time()
    return dict(wall=t_end - t0, data=t_data - t0, train=t_train - t_data, cam=t_end - t_train, accuracy=acc, peak_mb=_peak_mb())

def fastpipes_demo(out:Path, **kw):
    "`fastpipes demo`, through its command-line entry point."
    from fastpipes.cli import main
    t0 = time.time()
    args = ['demo', '--out', str(out), '--quiet'] + [x for k,v in kw.items() for x in (f"--{k.replace('_', '-')}", str(v))]
    rc = main(args)
    if rc: raise SystemExit(f"fastpipes demo failed with exit status {rc}")
    m = json.loads((out/'metrics.json').read_text())
    return dict(wall=time.time() - t0, accuracy=m['accuracy'], pointing_game=m.get('pointing game'), peak_mb=_peak_mb())

def scratch(out:Path, n_train:int, n_test:int, size:int, seed:int=42, **_):
    "The previous demo recipe on the same images: ResNet18 from scratch, 8 epochs, MixUp and augmentation."
    import fastpipes.pipeline as P
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        srv, urls = serve_same_images(Path(tmp), n_train, n_test, size, seed)
        try:
            from fastpipes.crawl import download_images
            from fastpipes.clean import clean_images
            download_images(json.loads(urls.read_text()), out/'data', allow_private=True, quiet=True)
        finally: srv.close()
    clean_images(out/'data', quiet=True)
    _, m = P.train_run(out/'data', out, arch='resnet18', pretrained=False, size=size, bs=16, epochs=8, valid='test', seed=seed,
                       aug=True, mixup=True, lr=2e-3, quiet=True)
    return dict(wall=time.time() - t0, accuracy=m['accuracy'], peak_mb=_peak_mb())

def _child(side:str, **kw)->dict:
    "Run one side in a fresh interpreter; return what it measured."
    r = subprocess.run([sys.executable, __file__, '--side', side, '--kw', json.dumps(kw)], capture_output=True, text=True, cwd=ROOT)
    if r.returncode: raise SystemExit(f"{side} failed:\n{r.stderr[-4000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])

def serve_same_images(tmp:Path, n_train:int, n_test:int, size:int, seed:int=42):
    "The demo's images and bad bodies, as a started `LoopbackServer` and the URL list (written to `tmp/urls.json`)."
    from fastpipes.synth import make_marks
    from fastpipes.serve import LoopbackServer
    from fastpipes.pipeline import DEMO, _demo_routes, _demo_urls
    routes, items = _demo_routes(make_marks(tmp/'src', n_train, n_test, size, seed, mark_frac=DEMO['mark_frac']), tmp/'src')
    srv = LoopbackServer(routes, hosts=2).start()
    (tmp/'urls.json').write_text(json.dumps(_demo_urls(srv, items)))
    return srv, tmp/'urls.json'

def main():
    from fastpipes.pipeline import DEMO
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--side', choices=['plain', 'fastpipes', 'scratch'], help=argparse.SUPPRESS)
    ap.add_argument('--kw', default='{}', help=argparse.SUPPRESS)
    for k in ('n_train', 'n_test', 'size', 'epochs', 'bs'): ap.add_argument(f"--{k.replace('_', '-')}", type=int, default=DEMO[k])
    a = ap.parse_args()
    if a.side:
        kw = json.loads(a.kw)
        if a.side == 'plain': res = plain(**{k: (Path(v) if k in ('urls_json', 'dest') else v) for k,v in kw.items()})
        elif a.side == 'scratch': res = scratch(Path(kw.pop('out')), **kw)
        else: res = fastpipes_demo(Path(kw.pop('out')), **kw)
        print(json.dumps(res)); return
    w = dict(n_train=a.n_train, n_test=a.n_test, size=a.size, epochs=a.epochs, bs=a.bs)
    print(f"workload: {w}, {os.cpu_count()} CPUs, torch threads default")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        fp = _child('fastpipes', out=str(tmp/'fp'), **w)
        sc = _child('scratch', out=str(tmp/'sc'), **w)
        srv, urls = serve_same_images(tmp, a.n_train, a.n_test, a.size)
        try: pl = _child('plain', urls_json=str(urls), dest=str(tmp/'plain'), size=a.size, epochs=a.epochs, bs=a.bs)
        finally: srv.close()
    print(f"fastpipes demo : {fp['wall']:7.1f} s  peak {fp['peak_mb']:7.0f} MB  accuracy {fp['accuracy']:.3f}  pointing game {fp['pointing_game']:.3f}")
    print(f"plain fastai   : {pl['wall']:7.1f} s  peak {pl['peak_mb']:7.0f} MB  accuracy {pl['accuracy']:.3f}  "
          f"(download+verify {pl['data']:.1f} s, two fine_tunes {pl['train']:.1f} s, per-image CAM loop {pl['cam']:.1f} s)")
    print(f"from scratch   : {sc['wall']:7.1f} s  peak {sc['peak_mb']:7.0f} MB  accuracy {sc['accuracy']:.3f}  (the previous recipe: resnet18, 8 epochs, MixUp)")
    print(f"ratio demo/plain: wall {fp['wall']/pl['wall']:.2f}x, peak memory {fp['peak_mb']/pl['peak_mb']:.2f}x")
    print(f"ratio demo/from scratch: wall {fp['wall']/sc['wall']:.2f}x, peak memory {fp['peak_mb']/sc['peak_mb']:.2f}x")
    print(f"demo targets: wall {fp['wall']:.1f} s <= 60 s: {fp['wall'] <= 60}; accuracy >= 0.95: {fp['accuracy'] >= 0.95}; "
          f"pointing game >= 0.9: {fp['pointing_game'] >= 0.9}")

if __name__ == '__main__': main()
