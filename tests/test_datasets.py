"Loaders of `fastpipes.datasets` on small files written here in the real formats."
import gzip, pickle, struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from fastpipes.core import FastpipesError
from fastpipes.course.datasets import (load_idx, save_idx, sklearn_digits, load_csv, load_cifar_batch, mnist_arrays,
                                mnist_dls, cifar10_arrays, cifar10_dls, pets_files, pets_label, pets_dls, tensor_dls,
                                data_root, FASHION_CLASSES, PETS_CLASSES, CIFAR_CLASSES, load_image_folder)

DIGITS = sklearn_digits()

def write_mnist(root:Path, n=40, gz=True, names=('train', 't10k'), sep='-'):
    "Real digits as the four MNIST idx files in `root`."
    x, y = DIGITS
    for pre, sl in zip(names, (slice(0, n), slice(n, n + n//2))):
        ext = '.gz' if gz else ''
        save_idx(x[sl], root/f'{pre}-images{sep}idx3-ubyte{ext}')
        save_idx(y[sl].astype(np.uint8), root/f'{pre}-labels{sep}idx1-ubyte{ext}')

def write_csv(fn:Path, x, y, label=True, npx=784):
    df = pd.DataFrame(x.reshape(len(x), -1)[:, :npx], columns=[f'pixel{i}' for i in range(npx)])
    if label: df.insert(0, 'label', y)
    fn.parent.mkdir(parents=True, exist_ok=True); df.to_csv(fn, index=False)

def write_cifar(d:Path, n=12, names=('data_batch_1', 'data_batch_2', 'data_batch_3', 'data_batch_4', 'data_batch_5', 'test_batch'), proto=2):
    d.mkdir(parents=True, exist_ok=True); rng = np.random.default_rng(1); res = {}
    for name in names:
        x, y = rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n)
        (d/name).write_bytes(pickle.dumps({b'batch_label': name.encode(), b'labels': y.tolist(), b'data': x,
                                           b'filenames': [b'f.png']*n}, protocol=proto))
        res[name] = x, y
    (d/'batches.meta').write_bytes(pickle.dumps({b'label_names': [b'airplane']*10}, protocol=2))
    return res

# --- idx -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('dtype', [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize('gz', [False, True])
def test_idx_roundtrip(tmp_path, dtype, gz):
    a = (np.arange(2*3*4) - 5).astype(dtype).reshape(2, 3, 4)
    if dtype == np.uint8: a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    b = load_idx(save_idx(a, tmp_path/('a.idx' + ('.gz' if gz else ''))))
    assert b.dtype == np.dtype(dtype) and b.dtype.isnative and np.array_equal(a, b)

def test_idx_header_big_endian(tmp_path):
    raw = bytes([0, 0, 8, 3]) + struct.pack('>3I', 2, 2, 3) + bytes(range(12))
    (tmp_path/'x').write_bytes(raw)
    assert load_idx(tmp_path/'x').shape == (2, 2, 3)
    (tmp_path/'x.gz').write_bytes(gzip.compress(raw))   # gzip found from the bytes, any name works
    (tmp_path/'y').write_bytes(gzip.compress(raw))
    assert np.array_equal(load_idx(tmp_path/'y'), load_idx(tmp_path/'x'))

@pytest.mark.parametrize('cut', [2, 6, 15, 20, 27])
def test_idx_truncated(tmp_path, cut):
    raw = bytes([0, 0, 8, 3]) + struct.pack('>3I', 2, 2, 3) + bytes(range(12))   # 28 bytes
    (tmp_path/'x').write_bytes(raw[:cut])
    with pytest.raises(FastpipesError, match='truncated|not an idx'): load_idx(tmp_path/'x')

def test_idx_truncated_gzip(tmp_path):
    x = DIGITS[0][:50]
    data = save_idx(x, tmp_path/'a.gz').read_bytes()
    for cut in (len(data)//2, len(data) - 5):
        (tmp_path/'b.gz').write_bytes(data[:cut])
        with pytest.raises(FastpipesError, match='truncated'): load_idx(tmp_path/'b.gz')
    # a complete gzip stream of an incomplete idx file
    (tmp_path/'c.gz').write_bytes(gzip.compress(gzip.decompress(data)[:-10]))
    with pytest.raises(FastpipesError, match='truncated'): load_idx(tmp_path/'c.gz')

def test_idx_bad_files(tmp_path):
    (tmp_path/'empty').write_bytes(b'')
    with pytest.raises(FastpipesError, match='not an idx'): load_idx(tmp_path/'empty')
    (tmp_path/'txt').write_text('hello world, not idx')
    with pytest.raises(FastpipesError, match='not an idx'): load_idx(tmp_path/'txt')
    (tmp_path/'long').write_bytes(bytes([0, 0, 8, 1]) + struct.pack('>I', 2) + b'abc')
    with pytest.raises(FastpipesError, match='more than its header'): load_idx(tmp_path/'long')
    with pytest.raises(FastpipesError, match='does not exist'): load_idx(tmp_path/'nope')
    with pytest.raises(FastpipesError, match='cannot hold'): save_idx(np.zeros(2, np.int64), tmp_path/'i64')

# --- sklearn digits ------------------------------------------------------------------------------------------

def test_sklearn_digits_like_mnist():
    x, y = DIGITS
    assert x.shape == (1797, 28, 28) and x.dtype == np.uint8 and y.dtype == np.int64
    assert sorted(set(y.tolist())) == list(range(10))
    border = np.concatenate([x[:, :2].ravel(), x[:, -2:].ravel()])
    assert border.mean() < 20 and x.max() == 255        # black background, white strokes
    assert x[:, 12:16, 12:16].mean() > 5*border.mean()
    x16, _ = sklearn_digits(size=16, digits=[7])
    assert x16.shape[1:] == (16, 16) and len(x16) == (y == 7).sum()

# --- MNIST layouts -------------------------------------------------------------------------------------------

@pytest.mark.parametrize('layout,gz,sep', [('MNIST/raw', True, '-'), ('MNIST/raw', False, '-'), ('', True, '-'),
                                            ('', False, '.'), ('raw', False, '-'), ('MNIST', True, '-')])
def test_mnist_layouts(tmp_path, layout, gz, sep):
    write_mnist(tmp_path/layout, gz=gz, sep=sep)
    xt, yt, xv, yv = mnist_arrays(tmp_path)
    assert np.array_equal(xt, DIGITS[0][:40]) and np.array_equal(yv, DIGITS[1][40:60])
    assert xt.dtype == np.uint8 and yt.dtype == np.int64

def test_fashion_layout_and_vocab(tmp_path):
    write_mnist(tmp_path/'FashionMNIST'/'raw')
    dls = mnist_dls(tmp_path, fashion=True, bs=4)
    assert dls.vocab == FASHION_CLASSES and dls.c == 10
    with pytest.raises(FastpipesError, match=r'MNIST/raw'): mnist_arrays(tmp_path)   # plain MNIST is missing

def test_mnist_csv(tmp_path):
    x, y = DIGITS
    write_csv(tmp_path/'mnist_train.csv', x[:30], y[:30]); write_csv(tmp_path/'mnist_test.csv', x[30:40], y[30:40])
    xt, yt, xv, yv = mnist_arrays(tmp_path, digits=(0, 1))
    keep = np.isin(y[:30], [0, 1])
    assert np.array_equal(xt, x[:30][keep]) and np.array_equal(yt, y[:30][keep])
    write_csv(tmp_path/'f'/'fashion-mnist_train.csv', x[:5], y[:5]); write_csv(tmp_path/'f'/'fashion-mnist_test.csv', x[:5], y[:5])
    assert mnist_arrays(tmp_path/'f', fashion=True)[0].shape == (5, 28, 28)

def test_csv_errors(tmp_path):
    x, y = DIGITS
    write_csv(tmp_path/'a.csv', x[:5], y[:5], npx=783)
    with pytest.raises(FastpipesError, match='783 pixel columns'): load_csv(tmp_path/'a.csv')
    write_csv(tmp_path/'b.csv', x[:5], y[:5], label=False)
    with pytest.raises(FastpipesError, match='no `label` column'): load_csv(tmp_path/'b.csv')
    write_csv(tmp_path/'c.csv', x[:5], y[:5]); df = pd.read_csv(tmp_path/'c.csv'); df.loc[2, 'pixel100'] = 300
    df.to_csv(tmp_path/'c.csv', index=False)
    with pytest.raises(FastpipesError, match='outside 0–255'): load_csv(tmp_path/'c.csv')
    df.loc[2, 'pixel100'] = None; df.to_csv(tmp_path/'c.csv', index=False)
    with pytest.raises(FastpipesError, match='missing'): load_csv(tmp_path/'c.csv')
    with pytest.raises(FastpipesError, match='does not exist'): load_csv(tmp_path/'zz.csv')

def test_mnist_nothing_local(tmp_path):
    with pytest.raises(FastpipesError) as e: mnist_arrays(tmp_path)
    msg = str(e.value)
    for part in ('train-images-idx3-ubyte', 't10k-labels-idx1-ubyte', str(tmp_path/'MNIST'/'raw'), 'mnist_train.csv', 'download=True'):
        assert part in msg
    (tmp_path/'f.txt').write_text('x')
    with pytest.raises(FastpipesError, match='is a file'): mnist_arrays(tmp_path/'f.txt')

def test_mnist_count_mismatch(tmp_path):
    write_mnist(tmp_path)
    save_idx(DIGITS[1][:39].astype(np.uint8), tmp_path/'train-labels-idx1-ubyte.gz')
    with pytest.raises(FastpipesError, match='40 images but 39 labels'): mnist_arrays(tmp_path)

def test_default_root(tmp_path, monkeypatch):
    monkeypatch.setenv('FASTPIPES_DATA', str(tmp_path))
    assert data_root() == tmp_path
    write_mnist(tmp_path/'MNIST'/'raw')
    assert mnist_arrays()[0].shape == (40, 28, 28)

def test_download_failure_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    def boom(*a, **k): raise RuntimeError('Error downloading train-images-idx3-ubyte.gz')
    monkeypatch.setattr(tvd.MNIST, 'download', boom)
    with pytest.raises(FastpipesError, match='Could not download MNIST'): mnist_arrays(tmp_path, download=True)

# --- CIFAR ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('proto', [2, pickle.HIGHEST_PROTOCOL])
def test_cifar(tmp_path, proto):
    res = write_cifar(tmp_path/'cifar-10-batches-py', proto=proto)
    xt, yt, xv, yv = cifar10_arrays(tmp_path)
    assert xt.shape == (60, 3, 32, 32) and xv.shape == (12, 3, 32, 32)
    x1, y1 = res['data_batch_1']
    assert np.array_equal(xt[:12].reshape(12, -1), x1) and np.array_equal(yt[:12], y1)
    assert np.array_equal(xt[3, 1].ravel(), x1[3, 1024:2048])      # CHW row-major: the green plane
    assert np.array_equal(cifar10_arrays(tmp_path/'cifar-10-batches-py', trusted=True)[0], xt)
    dls = cifar10_dls(tmp_path, bs=5, norm=True)
    xb, yb = dls.one_batch()
    assert xb.shape == (5, 3, 32, 32) and abs(float(dls.train.decode_x(dls.train.x).mean())) < 1e-4

def test_cifar_refuses_code(tmp_path):
    marker = tmp_path/'pwned'
    class Evil:
        def __reduce__(self): return (Path.touch, (marker,))
    (tmp_path/'test_batch').write_bytes(pickle.dumps({b'data': Evil(), b'labels': []}))
    with pytest.raises(FastpipesError, match='never does'): load_cifar_batch(tmp_path/'test_batch')
    assert not marker.exists()

def test_cifar_errors(tmp_path):
    d = tmp_path/'cifar-10-batches-py'
    res = write_cifar(d, names=('test_batch',))
    with pytest.raises(FastpipesError, match='no data_batch_1'): cifar10_arrays(tmp_path)
    (d/'data_batch_1').write_bytes((d/'test_batch').read_bytes()[:300])
    with pytest.raises(FastpipesError, match='truncated'): cifar10_arrays(tmp_path)
    (d/'data_batch_1').write_bytes(pickle.dumps({b'data': np.zeros((2, 3072), np.float32), b'labels': [0, 1]}))
    with pytest.raises(FastpipesError, match='uint8'): cifar10_arrays(tmp_path)
    (d/'data_batch_1').write_bytes(pickle.dumps({b'labels': [0, 1]}))
    with pytest.raises(FastpipesError, match='not a CIFAR batch'): cifar10_arrays(tmp_path)
    with pytest.raises(FastpipesError, match='cifar-10-batches-py'): cifar10_arrays(tmp_path/'none')

# --- pets ----------------------------------------------------------------------------------------------------

PETS = ['Abyssinian_1.jpg', 'Bengal_12.jpg', 'Egyptian_Mau_3.jpg', 'Sphynx_4.png', 'american_bulldog_10.jpg',
        'basset_hound_2.jpg', 'great_pyrenees_7.jpg', 'yorkshire_terrier_9.jpeg']

def write_pets(d:Path):
    d.mkdir(parents=True, exist_ok=True)
    for i, n in enumerate(PETS):
        mode = 'L' if i == 2 else 'RGBA' if i == 3 else 'RGB'
        Image.new(mode, (30 + i, 40), color=(i*20,)*len(mode)).save(d/n)
    (d/'Abyssinian_100.mat').write_bytes(b'\0'*10); (d/'notes.txt').write_text('x')

def test_pets_labels(tmp_path):
    write_pets(tmp_path/'images')
    fs = pets_files(tmp_path)
    assert [f.name for f in fs] == sorted(PETS)
    assert [pets_label(f) for f in fs] == ['cat']*4 + ['dog']*4
    assert len(pets_files(tmp_path/'images')) == 8   # the images folder itself works too

def test_pets_dls(tmp_path):
    write_pets(tmp_path/'images')
    dls = pets_dls(tmp_path, size=24, bs=2, valid_pct=0.25, seed=0)
    assert list(dls.vocab) == ['cat', 'dog']
    assert len(dls.train_ds) == 6 and len(dls.valid_ds) == 2
    xb, yb = dls.one_batch()
    assert xb.shape == (2, 3, 24, 24) and set(yb.tolist()) <= {0, 1}
    for (fn, y) in zip(dls.train_ds.items, dls.train_ds.tls[1]):
        assert dls.vocab[int(y)] == pets_label(fn)

def test_pets_nothing(tmp_path, monkeypatch):
    with pytest.raises(FastpipesError, match=r"images.*download=True"): pets_files(tmp_path)
    monkeypatch.setenv('FASTPIPES_DATA', str(tmp_path))
    with pytest.raises(FastpipesError, match='oxford-iiit-pet'): pets_files()

# --- TensorDL ------------------------------------------------------------------------------------------------

def test_tensor_dl_epochs():
    x, y = DIGITS
    dls = tensor_dls(x[:100], y[:100], x[100:110], y[100:110], bs=16, flat=True)
    seen = torch.cat([yb for _, yb in dls.train])
    assert sorted(seen.tolist()) == sorted(y[:100].tolist())
    first = [yb.tolist() for _, yb in dls.train]; second = [yb.tolist() for _, yb in dls.train]
    assert first != second                                      # reshuffled each epoch
    assert [yb.tolist() for _, yb in dls.valid] == [y[100:110].tolist()]   # validation in order
    dl = dls.train.new(drop_last=True)
    assert all(len(b[0]) == 16 for b in dl) and len(dl) == 6
    xb, _ = dls.one_batch()
    assert xb.shape == (16, 784) and xb.dtype == torch.float32 and xb.max() <= 1

def test_cifar_and_pets_download_failures_are_clear(tmp_path, monkeypatch):
    from urllib.error import URLError
    import torchvision.datasets as tvd, fastai.data.external as fde
    def offline(*a, **k): raise URLError('Temporary failure in name resolution')
    monkeypatch.setattr(tvd.CIFAR10, 'download', offline)
    with pytest.raises(FastpipesError, match='Could not download CIFAR-10.*cifar-10-batches-py'):
        cifar10_arrays(tmp_path, download=True)
    monkeypatch.setattr(fde, 'untar_data', offline)
    with pytest.raises(FastpipesError, match='Could not download the pets'): pets_files(tmp_path, download=True)

def test_show_batch(tmp_path):
    import matplotlib.figure
    x, y = DIGITS
    fig = tensor_dls(x[:20], y[:20], x[20:25], y[20:25], vocab=tuple('abcdefghij')).show_batch(max_n=10, ncols=4)
    assert isinstance(fig, matplotlib.figure.Figure) and len(fig.axes) == 12
    assert [a.get_title() for a in fig.axes[:3]] == ['abcdefghij'[i] for i in y[:3]]
    write_cifar(tmp_path/'cifar-10-batches-py')
    assert len(cifar10_dls(tmp_path).show_batch(max_n=3).axes) == 8

def test_tensor_dls_errors():
    x, y = DIGITS
    with pytest.raises(FastpipesError, match='training set has 10 images but 9 labels'): tensor_dls(x[:10], y[:9], x, y)
    with pytest.raises(FastpipesError, match='test set is empty'): tensor_dls(x, y, x[:0], y[:0])
    with pytest.raises(FastpipesError, match=r'shape \(10, 784\)'): tensor_dls(x[:10].reshape(10, -1), y[:10], x, y)
    with pytest.raises(FastpipesError, match='`bs` must be a whole number >= 1, not 0.'): tensor_dls(x, y, x, y, bs=0)

def test_pets_as_tensors(tmp_path):
    write_pets(tmp_path/'images')
    dls = pets_dls(tmp_path, size=24, valid_pct=0.25, seed=0)
    xt, yt, xv, yv = pets_dls(tmp_path, size=24, valid_pct=0.25, seed=0, aug=True, as_tensors=True)
    assert xt.shape == (6, 3, 24, 24) and xv.shape == (2, 3, 24, 24) and type(xt) is torch.Tensor
    assert yt.tolist() == [PETS_CLASSES.index(pets_label(f)) for f in dls.train_ds.items]
    assert yv.tolist() == [PETS_CLASSES.index(pets_label(f)) for f in dls.valid_ds.items]
    assert torch.allclose(xv, torch.cat([b[0] for b in dls.valid]))          # what the validation set sees
    assert -3 < float(xt.mean()) < 3                                          # ImageNet-normalized

# --- image folders (fastai's mnist_png / cifar10) ------------------------------------------------------------

def write_folder(d:Path, x, y, names=None, split_at=None):
    "Images `x` as PNGs in `d/training/<label>/` then `d/testing/<label>/` (from `split_at` on)."
    for i, (a, c) in enumerate(zip(x, y)):
        split = 'training' if split_at is None or i < split_at else 'testing'
        sub = d/split/(names[c] if names else str(c)); sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(a if a.ndim == 2 else a.transpose(1, 2, 0)).save(sub/f'{i:03d}.png')

def test_mnist_png_folders(tmp_path):
    x, y = DIGITS
    write_folder(tmp_path/'mnist_png', x[:30], y[:30], split_at=20)
    xt, yt, xv, yv = mnist_arrays(tmp_path)
    order = sorted(range(20), key=lambda i: (str(y[i]), i))
    assert np.array_equal(xt, x[order]) and np.array_equal(yt, y[order]) and len(xv) == 10
    assert set(mnist_arrays(tmp_path, digits=(3,))[1].tolist()) == {3}
    write_mnist(tmp_path/'MNIST'/'raw')                     # idx files win over image folders
    assert len(mnist_arrays(tmp_path)[0]) == 40

def test_cifar_folders_by_name(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (12, 3, 32, 32), dtype=np.uint8), np.arange(12) % 10
    write_folder(tmp_path/'cifar10', x, y, names=CIFAR_CLASSES, split_at=8)
    for split in ('training', 'testing'): (tmp_path/'cifar10'/split).rename(tmp_path/'cifar10'/split.replace('ing', ''))
    xt, yt, xv, yv = cifar10_arrays(tmp_path)
    order = sorted(range(8), key=lambda i: (CIFAR_CLASSES[y[i]], i))
    assert np.array_equal(xt, x[order]) and np.array_equal(yt, y[order]) and xv.shape == (4, 3, 32, 32)
    assert cifar10_dls(tmp_path, classes=(0, 1), bs=2).vocab == ('airplane', 'automobile')

def test_image_folder_errors(tmp_path):
    x, y = DIGITS
    write_folder(tmp_path, x[:4], y[:4])
    classes = tuple(map(str, range(10)))
    (tmp_path/'training'/'zebra').mkdir()
    with pytest.raises(FastpipesError, match="one sub-folder per class.*zebra"): load_image_folder(tmp_path/'training', classes)
    (tmp_path/'training'/'zebra').rmdir()
    (tmp_path/'training'/'1'/'bad.png').write_bytes(b'\x89PNG\r\n\x1a\n broken')
    with pytest.raises(FastpipesError, match='not a readable image'): load_image_folder(tmp_path/'training', classes)
    (tmp_path/'training'/'1'/'bad.png').unlink()
    Image.new('L', (30, 28)).save(tmp_path/'training'/'1'/'big.png')
    with pytest.raises(FastpipesError, match='30×28 pixels'): load_image_folder(tmp_path/'training', classes)
    with pytest.raises(FastpipesError, match='none'): load_image_folder(tmp_path/'nothing', classes)

# --- the download code paths, offline: torchvision / fastai replaced at their boundary ------------------------

def test_mnist_download_path(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    calls = []
    class FakeMNIST:
        def __init__(self, root, train=True, download=False):
            calls.append((Path(root), train, download))
            if train: write_mnist(Path(root)/type(self).__name__.replace('Fake', '')/'raw', gz=False)
    monkeypatch.setattr(tvd, 'MNIST', FakeMNIST)
    with pytest.raises(FastpipesError, match='download=True'): mnist_arrays(tmp_path)   # never without asking
    assert calls == []
    xt, yt, xv, yv = mnist_arrays(tmp_path, download=True)
    assert calls == [(tmp_path, True, True), (tmp_path, False, True)] and xt.shape == (40, 28, 28)
    mnist_arrays(tmp_path, download=True); assert len(calls) == 2                        # on disk now: no download

def test_cifar_download_path(tmp_path, monkeypatch):
    import torchvision.datasets as tvd
    calls = []
    class FakeCIFAR10:
        def __init__(self, root, train=True, download=False):
            calls.append(Path(root)); write_cifar(Path(root)/'cifar-10-batches-py')
    monkeypatch.setattr(tvd, 'CIFAR10', FakeCIFAR10)
    assert cifar10_arrays(tmp_path, download=True)[0].shape == (60, 3, 32, 32) and calls == [tmp_path]
    cifar10_arrays(tmp_path, download=True); assert len(calls) == 1

@pytest.mark.parametrize('named', [True, False])
def test_pets_download_path(tmp_path, monkeypatch, named):
    import fastai.data.external as fde
    calls = []
    def fake_untar(url, data=None, **kw):
        calls.append((url, Path(data))); write_pets(Path(data)/'oxford-iiit-pet'/'images')
        return Path(data)/'oxford-iiit-pet'
    monkeypatch.setattr(fde, 'untar_data', fake_untar)
    root = tmp_path/('oxford-iiit-pet' if named else 'mypets')
    assert len(pets_files(root, download=True)) == len(PETS)
    assert calls == [(fde.URLs.PETS, tmp_path if named else root)]
    assert len(pets_files(root)) == len(PETS)                                          # found again without a download
    monkeypatch.setenv('FASTPIPES_DATA', str(tmp_path/'data'))
    pets_files(download=True); assert calls[-1][1] == tmp_path/'data'                  # the default root: $FASTPIPES_DATA

def test_classes_by_index_or_name(tmp_path):
    write_mnist(tmp_path/'FashionMNIST'/'raw', n=100)
    dls = mnist_dls(tmp_path, fashion=True, digits=('Bag', 'Sneaker'), bs=4)
    assert dls.vocab == ('Sneaker', 'Bag') and set(dls.train.y.tolist()) <= {0, 1}
    assert mnist_dls(tmp_path, fashion=True, digits=7, bs=4).vocab == ('Sneaker',)
    for bad in [(0, 10), ('Hat',), (-1,), ()]:
        with pytest.raises(FastpipesError, match='Unknown classes'): mnist_dls(tmp_path, fashion=True, digits=bad)
