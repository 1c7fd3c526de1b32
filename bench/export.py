"""Latency of the exported ONNX model under onnxruntime against the PyTorch model, and the app's time from upload
to CAM shown.

    OMP_NUM_THREADS=1 .venv/bin/python bench/export.py [--size 224] [--arch resnet18] [--rounds 5] [--no-browser]

(One torch thread: on a shared 2-core machine two threads oversubscribe the cores and both sides slow down erratically.)

Setup: generated marks images, a CAM learner trained one epoch on a few of them (`pretrained=False`: timings do
not depend on the weights), saved and loaded back with `load_run` (as the app loads it), exported with
`export_onnx`; CPU, one process, rounds interleaved, medians printed.

1. Per-image latency, batch 1 and batch 25, of the same work on both sides (probabilities and CAM maps from a
   ready batch): PyTorch `cam_maps(learn, xb)` on the normalised batch (the library's path, `no_grad`) and the
   exported graph (normalisation inside) under onnxruntime (CPU provider). Ratio = PyTorch / onnxruntime
   (> 1: ONNX is faster).
2. The app: `launch_app` on 127.0.0.1, headless Chromium (Playwright) uploads an image and waits until the CAM
   image has loaded (non-zero natural size); the time from `set_input_files` to that moment, per round, against
   the server-side `classify_image` call alone (ratio = what the browser round trip adds).
"""
import argparse, os, shutil, socket, statistics, sys, tempfile, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault('GRADIO_ANALYTICS_ENABLED', 'False')
import matplotlib; matplotlib.use('Agg')
import numpy as np, torch

def med(xs): return statistics.median(xs)

def setup(d:Path, size:int, arch:str):
    from fastpipes.synth import make_marks
    from fastpipes.data import image_dls
    from fastpipes.train import train_classifier, save_classifier
    make_marks(d/'data', n_train=6, n_test=3, size=size, seed=0)
    dls = image_dls(d/'data', size=size, bs=6, aug=False, num_workers=0)
    learn = train_classifier(dls, arch, epochs=1, pretrained=False, quiet=True, seed=0)
    save_classifier(learn, d/'run'/'model')
    from fastpipes.review import load_run
    return load_run(d/'run')  # as the app and users load it (the trained learner is left in channels-last format)

def bench_latency(learn, fn, size, rounds):
    from fastpipes.cam import cam_maps
    from fastpipes.export import onnx_session, norm_stats
    sess = onnx_session(fn)
    mean, std = (t.view(1, -1, 1, 1) for t in norm_stats(learn))
    learn.model.eval()
    rows = []
    for n in (1, 25):
        x01 = torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(n))
        xb = (x01 - mean)/std
        xn = x01.numpy()
        cam_maps(learn, xb); sess.run(None, {'image': xn})  # warm up
        tt, to = [], []
        for _ in range(rounds):
            t = time.perf_counter(); cam_maps(learn, xb); tt.append((time.perf_counter()-t)/n)
            t = time.perf_counter(); sess.run(None, {'image': xn}); to.append((time.perf_counter()-t)/n)
        p, m = sess.run(None, {'image': xn}); mp, pp = cam_maps(learn, xb)
        diff = max(float(np.abs(p - pp.numpy()).max()), float(np.abs(m - mp.numpy()).max()))
        rows.append((n, med(tt)*1e3, med(to)*1e3, diff))
    print(f"\n1. Per-image latency (median of {rounds}), {size} px, CPU, {torch.get_num_threads()} torch threads")
    print(f"{'batch':>6} {'PyTorch ms':>11} {'ONNX ms':>9} {'PyTorch/ONNX':>13} {'max |diff|':>11}")
    for n, a, b, d in rows: print(f"{n:>6} {a:>11.2f} {b:>9.2f} {a/b:>12.2f}x {d:>11.1e}")

def bench_app(d:Path, learn, rounds):
    from fastpipes.app import launch_app
    from fastpipes.export import classify_image, torch_predict
    from fastpipes.review import run_meta
    exe = os.environ.get('FASTPIPES_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
    if not Path(exe).exists(): print(f"\n2. The app: skipped, no Chromium at {exe} (apt-get install chromium)"); return
    from playwright.sync_api import sync_playwright
    files = sorted((d/'data'/'test').rglob('*.jpg'))[:rounds+1]
    meta, pred = run_meta(d/'run'), torch_predict(learn)
    server = []
    for f in files:
        t = time.perf_counter(); classify_image(pred, str(f), meta['vocab'], meta['size'], meta['resize_method']); server.append(time.perf_counter()-t)
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); port = s.getsockname()[1]
    app = launch_app(d/'run', d/'data', port=port, block=False, quiet=True)
    flags = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking', '--disable-dev-shm-usage']
    times = []
    try:
        with tempfile.TemporaryDirectory() as prof, sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(prof, executable_path=exe, headless=True, args=flags)
            page = ctx.new_page(); page.set_default_timeout(60_000)
            for f in files:  # a fresh page per round: an empty input, no CAM shown yet
                page.goto(f'http://127.0.0.1:{port}/', wait_until='load')
                page.wait_for_selector('#fp-image input[type=file]', state='attached')
                t = time.perf_counter()
                page.locator('#fp-image input[type=file]').set_input_files(str(f))
                page.wait_for_function("(() => { const i = document.querySelector('#fp-cam img'); return i && i.complete && i.naturalWidth > 0 })()")
                times.append(time.perf_counter() - t)
            ctx.close()
    finally: app.close()
    b, s = med(times[1:]), med(server[1:])  # the first round warms up both sides
    print(f"\n2. The app, upload to CAM shown in headless Chromium (median of {len(times)-1}): {b*1e3:.0f} ms; "
          f"classify_image alone {s*1e3:.1f} ms; browser round trip / server call = {b/s:.1f}x")

def main():
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--size', type=int, default=224); ap.add_argument('--arch', default='resnet18')
    ap.add_argument('--rounds', type=int, default=5); ap.add_argument('--no-browser', action='store_true')
    a = ap.parse_args()
    warnings.filterwarnings('ignore')
    from fastpipes.export import export_onnx
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        learn = setup(d, a.size, a.arch)
        t = time.perf_counter(); fn = export_onnx(learn, d/'m.onnx'); te = time.perf_counter()-t
        print(f"{a.arch} with the CAM head, {a.size} px; export_onnx took {te:.1f} s, {fn.stat().st_size/1e6:.1f} MB")
        bench_latency(learn, fn, a.size, a.rounds)
        if not a.no_browser: bench_app(d, learn, a.rounds)

if __name__ == '__main__': main()
