"""Benchmark data-parallel training (`fastpipes.distrib.launch` + fastai's `distrib_ctx`) against one process, and
the cost of a checkpoint per epoch.

1. Throughput: training images per second of one process against `--processes N` processes, on the same images,
   model (resnet18, no pretrained weights) and *total* batch size (each of N processes takes `bs/N`), printed as a
   ratio with each process's CPU thread count. On a 2-core machine the honest result is near 1x (the cores are
   shared out, and the processes add gradient all-reduces); on a machine with N GPUs it should approach Nx.
   Rounds are interleaved (1, N, 1, N, ...) and medians compared; only the training part of each epoch is timed.
   For reference, one process restricted to one process's share of the threads is timed too: on a busy machine
   two threads in one process can be slower than one (they wait for each other), which flatters N processes.
2. Checkpoints: the time of one `save_checkpoint` (model, optimiser, history; atomic write) as a share of the
   epoch time measured in 1, and one epoch of `resumable_fine_tune` with a checkpoint against one without.
3. Precision: one epoch in bf16 (`set_precision`: CPU autocast, or CUDA) against fp32, in one process.

    OMP_NUM_THREADS=2 .venv/bin/python bench/distributed.py            # from the repository root
    .venv/bin/python bench/distributed.py --processes 2 --size 96 --n 96 --rounds 3
"""
import argparse, os, shutil, statistics, sys, tempfile, time
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import numpy as np, torch
from PIL import Image

def squares(dest, n, size, seed=0):
    "Red and blue squares at random places on noise: `dest/{train,test}/<label>/*.png`."
    rng = np.random.default_rng(seed)
    for split,k in (('train', n), ('test', max(2, n//8))):
        for c,col in (('blue', (30,30,220)), ('red', (220,30,30))):
            d = Path(dest)/split/c; d.mkdir(parents=True, exist_ok=True)
            for i in range(k):
                a = rng.integers(60, 180, (size,size,3)).astype(np.uint8)
                x, y = rng.integers(0, size//2, 2); a[y:y+size//3, x:x+size//3] = col
                Image.fromarray(a).save(d/f'{c}{i}.png')
    return Path(dest)

def learner(path, a, bs):
    from fastai.callback.core import Callback
    from fastai.vision.learner import vision_learner
    from fastai.metrics import accuracy
    from torchvision.models import resnet18
    from fastpipes.data import image_dls
    class _Timer(Callback):
        order = 100
        def before_fit(self): self.learn.train_secs = []
        def before_train(self): self.t = time.perf_counter()
        def after_train(self): self.learn.train_secs.append(time.perf_counter() - self.t)
    dls = image_dls(path, size=a.size, bs=bs, seed=0, num_workers=0)
    torch.manual_seed(0)
    return vision_learner(dls, resnet18, pretrained=False, metrics=accuracy, cbs=_Timer())

def one_run(path, a, bs):
    "Train one epoch in this process (one of the `launch`ed ones, or the only one); the training seconds and threads."
    from fastpipes.distrib import distributed, world_size
    learn = learner(path, a, bs)
    with distributed(learn), learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(a.epochs, 1e-3)
    return dict(secs=sum(learn.train_secs), threads=torch.get_num_threads(), world=world_size())

def checkpoint_cost(path, a):
    from fastpipes.distrib import resumable_fine_tune, save_checkpoint
    tmp = Path(tempfile.mkdtemp())
    rows = {}
    for with_ck in (False, True, False, True):
        learn = learner(path, a, a.bs)
        fn = tmp/'ck.pth' if with_ck else None
        t = time.perf_counter()
        with learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, epochs=1, freeze_epochs=0, checkpoint=fn, seed=0)
        rows.setdefault(with_ck, []).append(time.perf_counter() - t)
    saves = []
    for _ in range(3):
        t = time.perf_counter(); save_checkpoint(learn, tmp/'ck2.pth', 1, {}); saves.append(time.perf_counter() - t)
    size = (tmp/'ck2.pth').stat().st_size
    shutil.rmtree(tmp)
    return statistics.median(rows[False]), statistics.median(rows[True]), statistics.median(saves), size

def precision_cost(path, a):
    "Training seconds of one epoch in fp32 and in bf16 (CPU autocast, or CUDA), interleaved; medians."
    from fastpipes.distrib import set_precision
    secs = {}
    for prec in ('fp32', 'bf16') * a.rounds:
        learn = set_precision(learner(path, a, a.bs), prec)
        with learn.no_bar(), learn.no_logging(): learn.fit_one_cycle(1, 1e-3)
        secs.setdefault(prec, []).append(sum(learn.train_secs))
    return {k: statistics.median(v) for k,v in secs.items()}

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--processes', type=int, default=2)
    p.add_argument('--n', type=int, default=32, help="training images per class")
    p.add_argument('--size', type=int, default=64)
    p.add_argument('--bs', type=int, default=16, help="total batch size (each of N processes takes bs/N)")
    p.add_argument('--epochs', type=int, default=1)
    p.add_argument('--rounds', type=int, default=2)
    a = p.parse_args()
    from fastpipes.distrib import launch
    n = a.processes
    if a.bs % n: raise SystemExit(f"--bs {a.bs} must be a multiple of --processes {n}")
    path = squares(Path(tempfile.mkdtemp())/'ds', a.n, a.size)
    imgs = 2*a.n*a.epochs
    print(f"{2*a.n} training images of {a.size}px, resnet18, total batch {a.bs}, {a.epochs} epoch(s), {os.cpu_count()} CPUs, "
          f"CUDA: {torch.cuda.device_count()} GPU(s)")
    print(f"load average before: {' '.join(f'{l:.1f}' for l in os.getloadavg())} (other processes share these CPUs)")
    one, many, thin = [], [], []
    threads = torch.get_num_threads()
    for r in range(a.rounds):
        one.append(one_run(path, a, a.bs))
        many.append(launch(one_run, path, a, a.bs//n, n=n))
        torch.set_num_threads(max(1, threads//n))     # reference: one process with one process's share of threads
        thin.append(one_run(path, a, a.bs)); torch.set_num_threads(threads)
        print(f"  round {r}: 1 process {imgs/one[-1]['secs']:.1f} img/s ({one[-1]['threads']} threads); "
              f"{n} processes {imgs/many[-1]['secs']:.1f} img/s ({many[-1]['threads']} threads each); "
              f"1 process {imgs/thin[-1]['secs']:.1f} img/s ({thin[-1]['threads']} threads)")
    s1, sn, st = (statistics.median(o['secs'] for o in l) for l in (one, many, thin))
    print(f"throughput: 1 process {imgs/s1:.1f} img/s ({one[0]['threads']} threads), {n} processes {imgs/sn:.1f} img/s "
          f"({many[0]['threads']} threads each, {many[0]['world']} ranks): {s1/sn:.2f}x "
          f"(against 1 process on {thin[0]['threads']} threads: {st/sn:.2f}x)")
    print(f"load average after: {' '.join(f'{l:.1f}' for l in os.getloadavg())}")
    pc = precision_cost(path, a)
    print(f"precision: one epoch fp32 {pc['fp32']:.2f} s, bf16 {pc['bf16']:.2f} s: bf16 {pc['fp32']/pc['bf16']:.2f}x the speed of fp32")
    plain, ck, save, size = checkpoint_cost(path, a)
    print(f"checkpoint: {size/2**20:.1f} MB written in {save*1000:.0f} ms = {save/plain:.1%} of a {plain:.2f} s epoch "
          f"(resumable_fine_tune epoch with a checkpoint / without: {ck/plain:.3f}x)")
    shutil.rmtree(path.parent)

if __name__ == '__main__': main()
