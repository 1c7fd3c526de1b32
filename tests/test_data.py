"Dataset folders to DataLoaders: layouts, splits, and every user error raised before anything is built."
import numpy as np, pandas as pd, pytest
from pathlib import Path
from PIL import Image
from fastpipes.core import FastpipesError
import fastpipes.data as data
from fastpipes.data import image_dls, name_dls, scan_images, dataset_summary

COLS = dict(red=(220,30,30), blue=(30,30,220), green=(30,200,30))

def squares(dest, n_train=4, n_test=2, classes=('blue','red'), size=36, splits=('train','test'), seed=0):
    "Coloured squares on noise: `dest/<split>/<label>/<label><i>.jpg` (`splits=None`: `dest/<label>/`)."
    dest, rng = Path(dest), np.random.default_rng(seed)
    for split,n in zip(splits or (None,), (n_train, n_test)):
        for c in classes:
            d = dest/split/c if split else dest/c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = np.full((size,size,3), 120, np.uint8) + rng.integers(0, 40, (size,size,3), dtype=np.uint8)
                a[6:size-6, 6:size-6] = COLS[c]
                Image.fromarray(a).save(d/f'{c}{i}.jpg')
    return dest

def dls_of(path, **kw): return image_dls(path, **{'size': 32, 'bs': 4, 'num_workers': 0, **kw})

@pytest.fixture
def ds(tmp_path): return squares(tmp_path/'ds')

@pytest.fixture
def no_build(monkeypatch):
    "Fail loudly if DataLoaders get built: errors must come first."
    def boom(*a, **k): raise AssertionError("DataLoaders were built before the error was raised")
    monkeypatch.setattr(data, '_dls_from_df', boom)

def test_split_folders(ds):
    (ds/'rejected'/'corrupt').mkdir(parents=True); Image.new('RGB', (8,8)).save(ds/'rejected'/'corrupt'/'x.jpg')
    (ds/'train'/'.hidden').mkdir(); Image.new('RGB', (8,8)).save(ds/'train'/'.hidden'/'y.jpg')
    (ds/'train'/'red'/'notes.txt').write_text('not an image'); (ds/'manifest.jsonl').write_text('')
    dls = dls_of(ds)
    assert dls.vocab == ['blue','red']
    assert (len(dls.train_ds), len(dls.valid_ds)) == (8, 4)
    assert {Path(f).parent.parent.name for f in dls.valid_ds.items.file} == {'test'}
    xb, yb = dls.one_batch()
    assert xb.shape == (4,3,32,32) and set(yb.tolist()) <= {0,1}

def test_size_tuple_and_transforms(ds):
    dls = dls_of(ds, size=(32,48), aug=False)
    assert dls.one_batch()[0].shape == (4,3,32,48)
    names = [type(t).__name__ for t in dls.after_batch.fs]
    assert 'Normalize' in names and 'Flip' not in names
    assert 'Flip' in [type(t).__name__ for t in dls_of(ds).after_batch.fs]
    assert 'Normalize' not in [type(t).__name__ for t in dls_of(ds, normalize=False).after_batch.fs]
    rot = [t for t in dls_of(ds, aug=dict(max_rotate=0., do_flip=False)).after_batch.fs if type(t).__name__ == 'Flip']
    assert rot == []

def test_valid_pct_top_level(tmp_path):
    top = squares(tmp_path/'top', n_train=10, splits=None)
    a, b = dls_of(top, valid_pct=0.3, aug=False), dls_of(top, valid_pct=0.3, aug=False)
    assert len(a.valid_ds) == 6 and len(a.train_ds) == 14
    assert a.valid_ds.items.file.tolist() == b.valid_ds.items.file.tolist()
    c = dls_of(top, valid_pct=0.3, seed=7, aug=False)
    assert set(c.valid_ds.items.file) != set(a.valid_ds.items.file)

def test_valid_pct_uses_train_folder(ds):
    dls = dls_of(ds, valid_pct=0.25)
    assert len(dls.train_ds) + len(dls.valid_ds) == 8
    assert {Path(f).parent.parent.name for f in dls.valid_ds.items.file} == {'train'}

def test_other_valid_name(tmp_path):
    ds = squares(tmp_path/'ds', splits=('train','valid'))
    assert len(dls_of(ds, valid='valid').valid_ds) == 4

@pytest.mark.parametrize('case,kw,msg', [
    ('missing', {}, 'does not exist'),
    ('file', {}, 'is a file'),
    ('train_file', {}, 'is a file'),
    ('valid_file', {}, 'is a file'),
    ('no_train', {}, 'no `train` folder'),
    ('empty_train', {}, 'No images found'),
    ('one_class', {}, 'Only one class'),
    ('empty_class', {}, 'holds no images'),
    ('empty_valid_class', {}, 'holds no images'),
    ('unseen_valid', {}, "['green']"),
    ('valid_missing', dict(valid='valid'), "valid='valid'"),
    ('no_valid', dict(valid=None), 'valid_pct'),
    ('empty_valid', {}, 'validation set'),
])
def test_user_errors(tmp_path, no_build, case, kw, msg):
    p = tmp_path/'ds'
    if case == 'file': p.write_text('x')
    elif case == 'train_file': p.mkdir(); (p/'train').write_text('x')
    elif case == 'valid_file': squares(p, splits=('train',)); (p/'test').write_text('x')
    elif case == 'no_train': squares(p, splits=None)
    elif case == 'empty_train': (p/'train').mkdir(parents=True); (p/'test').mkdir()
    elif case == 'one_class': squares(p, classes=('red',))
    elif case == 'empty_class': squares(p); (p/'train'/'green').mkdir()
    elif case == 'empty_valid_class': squares(p); (p/'test'/'green').mkdir()
    elif case == 'unseen_valid': squares(p); squares(p, classes=('green',), splits=('test',))
    elif case in ('valid_missing', 'no_valid'): squares(p)
    elif case == 'empty_valid': squares(p, splits=('train',)); (p/'test').mkdir()
    with pytest.raises(FastpipesError, match=None) as e: image_dls(p, **kw)
    assert msg in str(e.value), str(e.value)
    assert '\n' not in str(e.value)

@pytest.mark.parametrize('kw,msg', [
    (dict(valid_pct=0), 'valid_pct'), (dict(valid_pct=1), 'valid_pct'), (dict(valid_pct=-0.1), 'valid_pct'),
    (dict(valid_pct='0.2'), 'valid_pct'), (dict(bs=0), 'bs'), (dict(bs=-3), 'bs'), (dict(bs=2.5), 'bs'),
    (dict(bs=True), 'bs'), (dict(size=0), 'size'), (dict(size=(32,)), 'size'), (dict(size=(0,32)), 'size'),
    (dict(size=(32,32,3)), 'size'), (dict(size='big'), 'size'), (dict(size=64.0), 'size'),
])
def test_bad_arguments(ds, no_build, kw, msg):
    with pytest.raises(FastpipesError, match=msg): image_dls(ds, **kw)

def test_random_split_can_leave_a_class_out():
    df = pd.DataFrame(dict(file=list('abcd'), label=['x','x','x','y'], is_valid=[False,False,True,True]))
    with pytest.raises(FastpipesError, match=r"\['y'\]"): data._check_items(df, 'here')
    df['is_valid'] = [False]*4
    with pytest.raises(FastpipesError, match='validation set'): data._check_items(df, 'here')

def test_scan_and_summary(ds):
    (ds/'rejected'/'dup').mkdir(parents=True); Image.new('RGB', (8,8)).save(ds/'rejected'/'dup'/'x.jpg')
    df = scan_images(ds)
    assert list(df.columns) == ['file','label','split'] and len(df) == 12
    s = dataset_summary(ds)
    assert s.loc['blue','train'] == 4 and s.loc['red','test'] == 2 and s.loc['total','total'] == 12

def test_name_dls(tmp_path, no_build):
    src = squares(tmp_path/'src', n_train=5, splits=None)
    pets = tmp_path/'pets'; pets.mkdir()
    for i,fn in enumerate(sorted(src.rglob('*.jpg'))): (pets/(('Sphynx' if 'red' in fn.name else 'pug')+f'_{i}.jpg')).write_bytes(fn.read_bytes())
    for f,msg in [(lambda n: n[99], 'IndexError'), (r'^(\w+)-\d+', 'does not match'), (r'^\w+', 'one group'),
                  ('(', 'regular expression'), (3, 'label_func'), (lambda n: 'cat', 'Only one class')]:
        with pytest.raises(FastpipesError, match=msg): name_dls(pets, f, num_workers=0)
    with pytest.raises(FastpipesError, match='does not exist'): name_dls(tmp_path/'nope', str.isupper)
    with pytest.raises(FastpipesError, match='valid_pct'): name_dls(pets, str.isupper, valid_pct=None)

def test_name_dls_takes_image_dls_options():
    "`name_dls` shows `image_dls`'s options (through `delegates`), with the same defaults, not a copy of them."
    import inspect
    ps, img = inspect.signature(name_dls).parameters, inspect.signature(image_dls).parameters
    shared = [k for k in img if k not in ('path', 'valid', 'valid_pct', 'label_func', 'kwargs')]
    assert shared and all(ps[k].default == img[k].default for k in shared)
    assert 'valid' not in ps and ps['valid_pct'].default == 0.2 and 'kwargs' in ps

def test_bad_numbers_one_sentence(ds, no_build):
    "The numbers are checked by `check_number`, with its wording."
    for kw,msg in [(dict(bs=0), '`bs` must be a whole number >= 1, not 0.'),
                   (dict(valid_pct=1.5), '`valid_pct` must be a number above 0 and below 1, not 1.5.'),
                   (dict(size=(32, 0)), '`size` must be a whole number >= 1, not 0.')]:
        with pytest.raises(FastpipesError) as e: image_dls(ds, **kw)
        assert str(e.value) == msg

def test_name_dls_builds(tmp_path):
    pets = tmp_path/'pets'; src = squares(tmp_path/'src', n_train=5, splits=None); pets.mkdir()
    for i,fn in enumerate(sorted(src.rglob('*.jpg'))): (pets/(('Sphynx' if 'red' in fn.name else 'pug')+f'_{i}.jpg')).write_bytes(fn.read_bytes())
    dls = name_dls(pets, lambda n: n[0].isupper(), size=32, bs=4, num_workers=0)
    assert dls.vocab == [False, True] and len(dls.valid_ds) == 2
    assert name_dls(pets, r'^([a-zA-Z]+)_', size=32, num_workers=0).vocab == ['Sphynx', 'pug']

# --- one view of a dataset (issue 13): clean, the DataLoaders and the report agree ---
import os, json
from fastpipes.clean import clean_images
from fastpipes.report import dataset_counts
from fastpipes.core import MODEL_FILES, dataset_view

def run_outputs(d:Path)->dict:
    "What `fastpipes train DATA --out DATA` (and export) leave in `d`: a model folder, the run's files and figures, checkpoints, exports."
    files = {'model/weights.pth': os.urandom(2000), 'model/classifier.json': json.dumps(dict(format='fastpipes-classifier', arch='resnet18')).encode(),
             'report.html': b'<!doctype html><title>run</title>', 'metrics.json': b'{"accuracy": 1.0}',
             'confusion_matrix.png': _png_bytes(), 'training_curve.png': _png_bytes(),
             'checkpoints/epoch_1.pth': os.urandom(500), 'export/model.onnx': os.urandom(500), 'export/model.safetensors': os.urandom(500),
             'export/space/app.py': b'import gradio', 'export/space/README.md': b'# space', 'export/space/examples/x.jpg': _png_bytes(),
             'models/model.pth': os.urandom(300), 'run2/report.html': b'<html>', 'run2/model/weights.pth': os.urandom(100),
             'run2/top_losses.png': _png_bytes()}
    for f,b in files.items(): (d/f).parent.mkdir(parents=True, exist_ok=True); (d/f).write_bytes(b)
    return files

def _png_bytes()->bytes:
    import io
    buf = io.BytesIO(); Image.new('RGB', (64, 64), 'green').save(buf, 'PNG'); return buf.getvalue()

def test_model_names_known_to_core():
    from fastpipes.train import WEIGHTS, META
    assert {WEIGHTS, META} == set(MODEL_FILES)

@pytest.mark.parametrize('splits', [('train', 'test'), None])
def test_train_out_data_then_clean(tmp_path, splits):
    "`train DATA --out DATA`, then `clean DATA` (also with delete): every output untouched, no class `model`, counts agree."
    d = squares(tmp_path/'ds', splits=splits)
    outs = run_outputs(d)
    for delete in (False, True):
        res = clean_images(d, quiet=True, delete=delete)
        assert res.n_rejected == 0 and not (d/'rejected').exists()
        assert {f: (d/f).read_bytes() for f in outs} == outs
    dls = dls_of(d, valid_pct=0.25) if splits is None else dls_of(d)
    assert dls.vocab == ['blue', 'red']
    counts = dataset_counts(d)
    assert counts.index.tolist() == ['blue', 'red', 'total'] and counts.loc['total'].sum() == res.n_kept == len(scan_images(d))

def test_one_view_everywhere(tmp_path):
    "Class sub-folders, a link, a FIFO, a text file, a hidden folder, a file where a class folder should be: one answer."
    d = squares(tmp_path/'ds')
    (d/'train'/'red'/'more').mkdir(); Image.new('RGB', (40, 40), (200, 10, 10)).save(d/'train'/'red'/'more'/'deep.png')
    os.symlink(d/'train'/'blue'/'blue0.jpg', d/'train'/'blue'/'link.jpg')
    os.mkfifo(d/'train'/'blue'/'pipe.jpg')
    (d/'train'/'red'/'notes.txt').write_text('x'); (d/'train'/'.cache').mkdir(); Image.new('RGB', (40, 40)).save(d/'train'/'.cache'/'h.jpg')
    (d/'train'/'green').write_bytes(b'a file where a class folder should be')
    want = {('blue', 'train'): 4, ('red', 'train'): 5, ('blue', 'test'): 2, ('red', 'test'): 2}
    def scanned(): return scan_images(d).groupby(['label', 'split']).size().to_dict()
    def counted():
        c = dataset_counts(d).drop(index='total')
        return {(l, s): int(c.loc[l, s]) for l in c.index for s in c.columns}
    assert scanned() == counted() == want
    res = clean_images(d, quiet=True)
    assert res.counts == {'special-file': 1, 'symlink': 1} and res.n_kept == sum(want.values())
    assert (res.files.label[res.files.file == 'train/red/more/deep.png'] == 'red').all()
    assert scanned() == counted() == want
    assert len(dls_of(d).train_ds) == 9
    assert (d/'train'/'green').read_bytes().startswith(b'a file') and (d/'train'/'red'/'notes.txt').exists()

@pytest.mark.parametrize('name', ['models', 'rejected', 'checkpoints', 'export'])
@pytest.mark.parametrize('splits', [('train', 'test'), None])
def test_reserved_class_name(tmp_path, name, splits):
    "A class folder with a reserved name is the same one-sentence error in clean, the DataLoaders and the report; nothing moves."
    d = squares(tmp_path/'ds', splits=splits, classes=('blue', 'red'))
    cls = (d/'train'/name) if splits else (d/name)
    cls.mkdir(); Image.new('RGB', (40, 40)).save(cls/'x.jpg')
    before = sorted(p.relative_to(d) for p in d.rglob('*'))
    for f in (lambda: clean_images(d, quiet=True), lambda: dls_of(d, valid_pct=0.25), lambda: dataset_counts(d)):
        with pytest.raises(FastpipesError, match=f'`{name}` is reserved') as e: f()
        assert '\n' not in str(e.value)
    assert sorted(p.relative_to(d) for p in d.rglob('[!.]*')) == [p for p in before if not p.name.startswith('.')]

def test_linked_class_folder(tmp_path):
    "A class folder that is a symbolic link: the same one-sentence error everywhere, instead of trained but not cleaned."
    d = squares(tmp_path/'ds'); other = squares(tmp_path/'other', classes=('green',), splits=('train',))
    os.symlink(other/'train'/'green', d/'train'/'green')
    for f in (lambda: clean_images(d, quiet=True), lambda: dls_of(d), lambda: dataset_counts(d), lambda: scan_images(d)):
        with pytest.raises(FastpipesError, match='class folder `train/green` is a symbolic link'): f()
    assert len(list((other/'train'/'green').iterdir())) == 4
