"""How soon `fastpipes app RUN` answers, against what the app did before it served until the review became lazy.

    python bench/app.py RUN [--rounds 3]      (RUN: a run folder with `data/`, e.g. `fastpipes demo --out RUN`)

Each side runs in a fresh Python process (the same imports to pay), rounds interleaved, medians printed:

  app:   `python -m fastpipes.cli app RUN --port P --quiet`; the time from starting the process to the first HTTP 200
         on `http://127.0.0.1:P/` (then SIGINT; the exit status, 130, is checked).
  eager: what the app did before it served when `Review` read every image in its constructor: import Gradio and the
         app, load the run's model, read and score every image of the dataset (`Review(RUN).score()`); the time from
         starting the process to its end. The app now does the first two and serves; the reading happens as pages
         are shown.
  read:  for reference, the time the lazy review takes to read the dataset's default view (split `train`) in a
         process of its own: what the Review tab's first page settles after (its first batch shows sooner).

Ratio = eager / app (> 1: the app answers that many times sooner than it used to).
"""
import argparse, os, signal, socket, statistics, subprocess, sys, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')]), 'MPLBACKEND': 'Agg'}
LIMIT = 600   # seconds one side may take

def _port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def app(run:str)->float:
    port, t0 = _port(), time.monotonic()
    p = subprocess.Popen([sys.executable, '-m', 'fastpipes.cli', 'app', run, '--port', str(port), '--quiet'], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        while time.monotonic() - t0 < LIMIT and p.poll() is None:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/', timeout=5) as r:
                    if r.status == 200: t = time.monotonic() - t0; break
            except OSError: time.sleep(0.1)
        else: raise SystemExit(f"the app did not answer: {p.communicate()[0].decode()[-2000:]}")
        p.send_signal(signal.SIGINT)
        p.communicate(timeout=60)
        if p.returncode != 130: raise SystemExit(f"the app exited {p.returncode} on Ctrl-C, not 130")
    finally:
        if p.poll() is None: p.kill(); p.communicate()
    return t

def _timed(code:str)->float:
    t0 = time.monotonic()
    subprocess.run([sys.executable, '-c', code], env=ENV, check=True, timeout=LIMIT, stdout=subprocess.DEVNULL)
    return time.monotonic() - t0

def eager(run:str)->float:
    return _timed(f"import gradio, fastpipes.app\nfrom fastpipes.review import Review\nReview({run!r}).score()")

def read(run:str)->float:
    return _timed(f"from fastpipes.review import Review\nr = Review({run!r})\nr.items(None, 'train' if 'train' in r.splits else None)")

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('run'); ap.add_argument('--rounds', type=int, default=3)
    a = ap.parse_args()
    res = {'app': [], 'eager': [], 'read': []}
    for _ in range(a.rounds):
        for k,f in (('app', app), ('eager', eager), ('read', read)): res[k].append(f(a.run))
    med = {k: statistics.median(v) for k,v in res.items()}
    n = sum(1 for _ in Path(a.run, 'data').rglob('*') if _.is_file())
    print(f"run {a.run} ({n} files under data/), {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {a.rounds} rounds")
    for k in res: print(f"{k:6s}: median {med[k]:6.1f} s  ({', '.join(f'{x:.1f}' for x in res[k])})")
    print(f"ratio eager/app: {med['eager']/med['app']:.2f}x (the app answers that many times sooner)")

if __name__ == '__main__': main()
