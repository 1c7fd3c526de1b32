"""Speed of `fastpipes.cam.cam_maps` and `cam_grid` against the course's per-image loop and two CAM packages.

    OMP_NUM_THREADS=2 .venv/bin/python bench/cam.py [--n 25] [--size 224] [--arch resnet34] [--rounds 5]

Setup: `n` generated marks images of `size` px, a `resnet34` with the CAM head (`pretrained=False`: timings do not
depend on the weights), CPU. Every side runs in the same process, rounds interleaved; best and median are printed.

1. Maps of a ready batch `(n, 3, size, size)` (what each method costs on the network):
   - floor: a plain no-grad forward pass of the same model, `learn.model.eval()(xb)`;
   - fastpipes `cam_maps(learn, xb)`: one body pass and one einsum (and again with the maps upsampled to the input
     size, which is what a figure needs);
   - pytorch-grad-cam `GradCAM(model, target_layers=[body])`, batched (forward + backward, maps resized by the package);
   - torchcam `CAM(model, target_layer=body, fc_layer=linear)`, batched (forward + hooked weights);
   - fastpipes `grad_cam(learn, xb)`, batched (for reference).
   Targets: cam_maps <= 1.15x the plain forward, >= 2.5x faster than GradCAM.
2. From `n` files to maps, against one `test_dl` over the files and one `cam_maps`, two forms of the course's loop:
   - the loop as the issue describes it, three network passes per image: `learn.predict(fn)` for the title, then
     `dls.test_dl([fn])`, the body `net1(x)` for the activations and the whole model `net(x)` for the probabilities,
     with autograd on (the course calls the modules directly, without `torch.no_grad`). Target: >= 3x faster.
   - its cheapest form, two passes: `learn.predict(fn)`, then a forward pass hooked on the body under `no_grad`
     (printed too, so the ratio against the leanest loop a careful student could write is on record).
3. End to end, from files to a rendered 5x5 figure (PNG in memory): the same loop drawing its grid tile by tile,
   against `cam_grid(learn, files)`.
"""
import argparse, io, os, statistics, sys, tempfile, time, warnings
from pathlib import Path
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import matplotlib; matplotlib.use('Agg')
import torch

def timed(f):
    t = time.perf_counter(); f(); return time.perf_counter() - t

def course_maps(learn, files):
    "The course's per-image loop: predict, a test_dl of one file, a hooked forward pass and an einsum per image."
    from fastai.callback.hook import hook_output
    from fastcore.basics import first
    out = []
    with learn.no_bar():
        for fn in files:
            label, idx, probs = learn.predict(fn)
            x, = first(learn.dls.test_dl([fn]))
            with hook_output(learn.model[0]) as hook:
                with torch.no_grad(): learn.model.eval()(x)
                act = hook.stored[0]
            cam_map = torch.einsum('ck,kij->cij', learn.model[1][-1].weight, act)
            out.append((x, label, probs, cam_map[idx]))
    return out

def course3_maps(learn, files):
    "The loop as the issue describes it: per image `predict`, a `test_dl` of one file, the body, the whole model."
    from fastcore.basics import first
    net = learn.model.eval()
    net1, net2 = net[0], net[1][-1]
    out = []
    with learn.no_bar():
        for fn in files:
            label, idx, _ = learn.predict(fn)
            x, = first(learn.dls.test_dl([fn]))
            camimg = torch.einsum('ij,jkl->ikl', net2.weight, net1(x).squeeze(0))
            probs = net(x).softmax(1)[0]
            out.append((x, label, probs, camimg[idx].detach()))
    return out

def course_grid(learn, files, size):
    "The course's loop drawing a 5x5 grid tile by tile, rendered to PNG."
    import matplotlib.pyplot as plt
    from fastai.torch_core import TensorImage
    fig, axs = plt.subplots(5, 5, figsize=(11, 12))
    for (x, label, probs, m), ax in zip(course_maps(learn, files), axs.flat):
        x_dec = TensorImage(learn.dls.train.decode((x,))[0][0])
        x_dec.show(ctx=ax)
        ax.imshow(m.detach().cpu(), alpha=0.5, extent=(0, size, size, 0), interpolation='bilinear', cmap='magma')
        ax.set_title(f'{label} ({probs.max():.2f})')
    fig.savefig(io.BytesIO(), format='png'); plt.close(fig)

def batched_maps(learn, files):
    from fastcore.basics import first
    from fastpipes.cam import cam_maps
    xb, = first(learn.dls.test_dl(files, bs=len(files), num_workers=0))
    return cam_maps(learn, xb)

def fastpipes_grid(learn, files):
    from fastpipes.cam import cam_grid
    fig = cam_grid(learn, files)
    fig.savefig(io.BytesIO(), format='png')

def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--n', type=int, default=25); p.add_argument('--size', type=int, default=224)
    p.add_argument('--arch', default='resnet34'); p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--seed', type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(int(os.environ.get('OMP_NUM_THREADS', 2)))
    warnings.filterwarnings('ignore')
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from torchcam.methods import CAM
    import fastai.callback.progress  # noqa: F401 (Learner.no_bar, as `from fastai.vision.all import *` gives the course)
    from fastcore.basics import first
    from fastpipes.synth import make_marks
    from fastpipes.data import image_dls
    from fastpipes.train import build_learner
    from fastpipes.cam import cam_maps, grad_cam, _upsample

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        make_marks(tmp, n_train=2, n_test=(a.n+1)//2, size=a.size, seed=a.seed)
        files = sorted((tmp/'test').rglob('*.jpg'))[:a.n]
        dls = image_dls(tmp, size=a.size, bs=a.n, aug=False, num_workers=0, seed=a.seed)
        torch.manual_seed(a.seed)
        learn = build_learner(dls, a.arch, pretrained=False)
        model = learn.model.eval()
        xb = first(learn.dls.test_dl(files, bs=a.n, num_workers=0))[0].as_subclass(torch.Tensor)
        pred = cam_maps(learn, xb)[1].argmax(1)

        gc_targets = [ClassifierOutputTarget(int(c)) for c in pred]
        def gradcam_maps():
            with GradCAM(model=model, target_layers=[model[0]]) as gc: return gc(input_tensor=xb, targets=gc_targets)
        def torchcam_maps():
            with CAM(model, target_layer=model[0], fc_layer=model[1][2], input_shape=(3, a.size, a.size)) as ext:
                with torch.no_grad(): out = model(xb)
                return ext(class_idx=out.argmax(1).tolist(), scores=out)
        def plain():
            with torch.no_grad(): return model(xb)

        sides = {
            'plain forward (no grad)': plain,
            'fastpipes cam_maps': lambda: cam_maps(learn, xb),
            'cam_maps + upsample to input': lambda: _upsample(cam_maps(learn, xb)[0][torch.arange(len(xb)), pred], xb.shape[-2:]),
            'pytorch-grad-cam GradCAM': gradcam_maps,
            'torchcam CAM': torchcam_maps,
            'fastpipes grad_cam': lambda: grad_cam(learn, xb),
            'course loop (3 passes), files -> maps': lambda: course3_maps(learn, files),
            'course loop (2 passes), files -> maps': lambda: course_maps(learn, files),
            'batched, files -> maps': lambda: batched_maps(learn, files),
            'course loop + 5x5 figure': lambda: course_grid(learn, files, a.size),
            'cam_grid + figure': lambda: fastpipes_grid(learn, files),
        }
        for f in sides.values(): f()   # warm-up: first-call allocations, lazy imports, font cache
        ts = {k: [] for k in sides}
        for r in range(a.rounds):
            for k, f in sides.items(): ts[k].append(timed(f))

    best, med = ({k: min(v) for k, v in ts.items()}, {k: statistics.median(v) for k, v in ts.items()})
    print(f"{a.n} images at {a.size} px, {a.arch} with the CAM head, CPU, torch threads={torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}; best and median of {a.rounds} interleaved rounds")
    for k in sides: print(f"  {k:40s} {best[k]:7.3f}s best {med[k]:7.3f}s median")
    def ratio(num, den, target):
        print(f"  {num} / {den}: {best[num]/best[den]:.2f}x best, {med[num]/med[den]:.2f}x median  ({target})")
    print("ratios:")
    ratio('fastpipes cam_maps', 'plain forward (no grad)', 'target <= 1.15x the floor')
    ratio('pytorch-grad-cam GradCAM', 'fastpipes cam_maps', 'target: cam_maps >= 2.5x faster')
    ratio('torchcam CAM', 'fastpipes cam_maps', 'torchcam CAM / cam_maps')
    ratio('course loop (3 passes), files -> maps', 'batched, files -> maps', "target: batched >= 3x faster than the issue's loop")
    ratio('course loop (2 passes), files -> maps', 'batched, files -> maps', 'against the leanest loop, for the record')
    ratio('course loop + 5x5 figure', 'cam_grid + figure', 'end to end, cam_grid vs the course loop')

if __name__ == '__main__': main()
