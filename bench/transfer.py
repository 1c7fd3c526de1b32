"""Transfer learning offline, on real photos: held-out accuracy and wall time of the pretrained `efficientnet_lite0`
(ImageNet weights from the registry package) fine-tuned with fastai's `fine_tune` for 3 epochs (1 frozen + 2) at
224 px, against ResNet18 trained from scratch with the same budget (3 epochs, same images, split, size and batch).

Run: `python bench/transfer.py ../shared/data/ants-bees` (a folder with one sub-folder of photos per class; the photos
are copied and cleaned first, then 20% are held out at random with a fixed seed). Both sides run in this process,
one after the other; the ratio lines compare them."""
import argparse, shutil, tempfile, time
from pathlib import Path

def side(dls_fn, arch:str, pretrained:bool, epochs:int, freeze_epochs:int, lr:float, seed:int)->dict:
    from fastpipes.train import train_classifier, evaluate
    dls = dls_fn()
    t0 = time.time()
    learn = train_classifier(dls, arch, epochs=epochs, freeze_epochs=freeze_epochs, pretrained=pretrained, lr=lr, quiet=True, seed=seed)
    wall = time.time() - t0
    ev = evaluate(learn)
    return dict(arch=arch, pretrained=pretrained, wall=wall, accuracy=ev['accuracy'], n=ev['n'])

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('dir', type=Path, help="folder of class folders of photos")
    ap.add_argument('--size', type=int, default=224); ap.add_argument('--bs', type=int, default=16)
    ap.add_argument('--seed', type=int, default=42)
    a = ap.parse_args()
    import torch
    from fastpipes.clean import clean_images
    from fastpipes.data import image_dls
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)/'photos'
        shutil.copytree(a.dir, data)
        print(clean_images(data, quiet=True))
        dls_fn = lambda: image_dls(data, valid=None, valid_pct=0.2, size=a.size, bs=a.bs, seed=a.seed, num_workers=0)
        print(f"{torch.get_num_threads()} torch threads; {a.size} px, batch {a.bs}, 3 epochs each")
        tl = side(dls_fn, 'efficientnet_lite0', True, epochs=2, freeze_epochs=1, lr=2e-3, seed=a.seed)
        sc = side(dls_fn, 'resnet18', False, epochs=3, freeze_epochs=0, lr=2e-3, seed=a.seed)
    for r in (tl, sc):
        print(f"{r['arch']:>18} {'pretrained' if r['pretrained'] else 'from scratch':>12}: held-out accuracy {r['accuracy']:.3f} "
              f"on {r['n']} photos, training {r['wall']:.1f} s")
    print(f"ratio pretrained/scratch: accuracy {tl['accuracy']/max(sc['accuracy'], 1e-9):.2f}x, training time {tl['wall']/sc['wall']:.2f}x")

if __name__ == '__main__': main()
