"""The review model end to end on a small trained run: marks that survive paging, `apply` (files moved, nothing
overwritten or lost, the manifest updated with the reason `reviewed`), `undo`, retraining that sees the change,
and the bad inputs (no model, undecodable image, unknown class, files moved since the review started)."""
import hashlib, shutil
from pathlib import Path
import pytest
from fastpipes.core import FastpipesError, new_row, read_manifest, write_manifest
from fastpipes.synth import make_marks
from fastpipes.data import image_dls
from fastpipes.train import train_classifier, save_classifier

def tiny_run(d:Path, n_train:int, n_test:int, seed:int)->Path:
    "In `d`: a dataset of generated marks (`d/data`) and a model trained on it for one epoch (`d/run`), tiny and offline."
    make_marks(d/'data', n_train=n_train, n_test=n_test, size=48, seed=seed)
    dls = image_dls(d/'data', size=32, bs=8, aug=False, num_workers=0)
    save_classifier(train_classifier(dls, 'resnet18', epochs=1, pretrained=False, quiet=True, seed=0), d/'run'/'model')
    return d

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    "A trained run (tiny images, no pretrained weights) and its pristine dataset."
    return tiny_run(tmp_path_factory.mktemp('review'), n_train=12, n_test=6, seed=3)

@pytest.fixture
def data(run, tmp_path):
    "A fresh copy of the dataset, with a manifest row (url and all) for every image."
    dst = tmp_path/'data'
    shutil.copytree(run/'data', dst)
    rows = [new_row(url=f'http://127.0.0.1/{p.name}', query=p.parent.name, label=p.parent.name, split=p.parent.parent.name,
                    status='ok', file=p.relative_to(dst).as_posix()) for p in sorted(dst.rglob('*.jpg'))]
    write_manifest(dst, rows)
    return dst

def contents(d:Path)->list:
    "The hashes of every image below `d`: what a user had (where it is aside)."
    return sorted(hashlib.sha256(p.read_bytes()).hexdigest() for p in d.rglob('*.jpg'))

def test_review_apply_undo_retrain(run, data):
    from fastpipes.review import Review
    before, rows_before = contents(data), read_manifest(data)
    rv = Review(run/'run', data)
    assert len(rv) == 36 and rv.skipped == {}
    losses = [i.loss for i in rv.items('cross', 'train')]
    assert losses == sorted(losses, reverse=True)
    it = rv.items('cross', 'train')[0]
    assert {it.label, it.split} == {'cross', 'train'} and it.pred in rv.vocab and 0 <= it.prob <= 1 and it.cams.shape[0] == 2
    assert rv.overlay(it, size=64).size == (64, 64)
    gone, moved = rv.items('cross', 'train')[:2]
    rv.mark(gone, 'delete')
    rv.page('circle', 'test', 1, per_page=3)          # switching class, split and page keeps the marks
    rv.mark(moved.key, 'relabel circle')
    assert rv.mark_of(gone) == 'delete' and rv.mark_of(moved) == 'relabel circle'
    # a file already in the way is never overwritten
    (data/'rejected'/'reviewed').mkdir(parents=True)
    (data/'rejected'/'reviewed'/Path(gone.key).name).write_bytes(b'someone else')
    done = rv.apply()
    assert set(done.key) == {gone.key, moved.key}
    assert (data/'rejected'/'reviewed'/Path(gone.key).name).read_bytes() == b'someone else'
    new_gone = data/'rejected'/'reviewed'/(Path(gone.key).stem + '-1.jpg')
    new_moved = data/'train'/'circle'/Path(moved.key).name
    assert new_gone.is_file() and new_moved.is_file() and not (data/gone.key).exists() and not (data/moved.key).exists()
    assert contents(data) == sorted(before + [hashlib.sha256(b'someone else').hexdigest()])  # nothing lost
    rows = {r['url']: r for r in read_manifest(data)}
    g, m = rows[f'http://127.0.0.1/{Path(gone.key).name}'], rows[f'http://127.0.0.1/{Path(moved.key).name}']
    assert (g['status'], g['reason'], g['file']) == ('rejected', 'reviewed', new_gone.relative_to(data).as_posix())
    assert (m['status'], m['reason'], m['label'], m['file']) == ('ok', 'reviewed', 'circle', new_moved.relative_to(data).as_posix())
    assert len(rv) == 35 and rv.item(new_moved.relative_to(data).as_posix()).label == 'circle'
    # retraining sees the change
    dls = image_dls(data, size=32, bs=8, aug=False, num_workers=0)
    learn = train_classifier(dls, 'resnet18', epochs=1, pretrained=False, quiet=True, seed=0)
    files = {Path(f).name: l for f,l in zip(learn.dls.train_ds.items.file, learn.dls.train_ds.items.label)}
    assert Path(gone.key).name not in files and files[Path(moved.key).name] == 'circle' and len(files) == 23
    # undo puts everything back
    rv.undo()
    assert (data/gone.key).is_file() and (data/moved.key).is_file() and not new_gone.exists() and not new_moved.exists()
    assert sorted(map(str, read_manifest(data))) == sorted(map(str, rows_before))
    assert contents(data) == sorted(before + [hashlib.sha256(b'someone else').hexdigest()])
    assert len(rv) == 36 and rv.mark_of(gone) == 'delete'
    with pytest.raises(FastpipesError, match='Nothing to undo'): rv.undo()

def test_review_bad_input(run, data, tmp_path):
    from fastpipes.review import Review
    (tmp_path/'norun').mkdir()
    with pytest.raises(FastpipesError, match='holds no model'): Review(tmp_path/'norun', data)
    (data/'train'/'cross'/'broken.jpg').write_bytes(b'\xff\xd8 truncated')
    rv = Review(run/'run', data)
    assert list(rv.skipped) == ['train/cross/broken.jpg'] and (data/'train'/'cross'/'broken.jpg').is_file()
    a, b = rv.items('circle', 'test')[:2]
    with pytest.raises(FastpipesError, match="'dog' is not a class of this dataset"): rv.mark(a, 'relabel dog')
    rv.mark(a, 'delete'); rv.mark(b, 'relabel cross')
    before, rows = contents(data), read_manifest(data)
    (data/b.key).rename(tmp_path/'away.jpg')                       # moved since the review started
    with pytest.raises(FastpipesError, match='moved or changed since the review started') as e: rv.apply()
    assert len(str(e.value).splitlines()) == 1
    (tmp_path/'away.jpg').rename(data/b.key)
    assert (data/a.key).is_file() and read_manifest(data) == rows and contents(data) == before   # nothing happened

def test_review_widget(run, data):
    from fastpipes.review import Review
    rv = Review(run/'run', data)
    w = rv.widget(per_page=4); c = w.controls
    c['cls'].value = 'cross'; c['split'].value = 'train'
    key = rv.page('cross', 'train', 0, 4)[0].key
    c['grid'].children[0].children[2].value = 'delete'
    c['cls'].value = 'circle'; c['next'].click(); c['cls'].value = 'cross'
    assert c['grid'].children[0].children[2].value == 'delete' and rv.mark_of(key) == 'delete'
    c['apply'].click()
    assert c['status'].value == 'Applied 1 change(s).' and not (data/key).exists()
    c['undo'].click()
    assert (data/key).is_file()

def test_review_class_folders_without_splits(run, tmp_path):
    "A dataset of `<label>/` folders (no `train/`): a relabel moves the file to the other class folder, nested paths kept."
    from fastpipes.review import Review
    d = tmp_path/'flat'
    for lbl in ('circle', 'cross'): shutil.copytree(run/'data'/'train'/lbl, d/lbl)
    (d/'cross'/'more').mkdir(); (d/'cross'/'cross_00000.jpg').rename(d/'cross'/'more'/'x.jpg')
    rv = Review(run/'run', d)
    assert rv.splits == ['all']
    rv.mark('cross/more/x.jpg', 'relabel circle'); rv.mark('cross/cross_00001.jpg', 'delete')
    rv.apply()
    assert (d/'circle'/'more'/'x.jpg').is_file() and (d/'rejected'/'reviewed'/'cross_00001.jpg').is_file()
    assert not (d/'all').exists()
    rv.undo()
    assert (d/'cross'/'more'/'x.jpg').is_file() and (d/'cross'/'cross_00001.jpg').is_file()
    assert not (d/'circle'/'more').exists() and not (d/'rejected').exists()   # the folders apply made are gone again
    Review(run/'run', d)   # and the dataset scans (an empty class folder would be an error)

def test_review_reads_lazily(run, data, monkeypatch):
    "Nothing is read when the review starts; a view reads its own images, a batch at a time; with an `order`, a page reads only itself."
    import fastpipes.review as R
    reads = []
    real = R.load_image
    monkeypatch.setattr(R, 'load_image', lambda fn, *a, **k: reads.append(Path(fn).relative_to(data).as_posix()) or real(fn, *a, **k))
    rv = R.Review(run/'run', data, bs=5)
    assert reads == [] and rv.progress() == (0, 36) and rv.splits == ['test', 'train']
    steps = list(rv.scoring('circle', 'test'))
    keys = sorted(p.relative_to(data).as_posix() for p in data.rglob('*.jpg'))
    assert steps == [(5, 6), (6, 6)] and sorted(reads) == [k for k in keys if k.startswith('test/circle/')]
    its = rv.items('circle', 'test')
    assert len(its) == 6 and len(reads) == 6                        # already read: nothing read again
    assert [i.loss for i in its] == sorted((i.loss for i in its), reverse=True)
    reads.clear()
    it = rv.item('train/cross/cross_00003.jpg')                    # one image on demand
    assert reads == ['train/cross/cross_00003.jpg'] and it.label == 'cross'
    # an audit's order: page 0 reads its 4 images, and they are the 4 the order puts first
    score = {k: float(i) for i, k in enumerate(keys)}
    reads.clear()
    ro = R.Review(run/'run', data, order=score)
    page = ro.page(None, 'train', 0, per_page=4)
    want = sorted((k for k in score if k.startswith('train/')), key=lambda k: -score[k])[:4]
    assert [i.key for i in page] == want and sorted(reads) == sorted(want)
    assert ro.progress() == (4, 36)
    assert [i.key for i in ro.items('cross', 'train')] == sorted((k for k in score if k.startswith('train/cross/')), key=lambda k: -score[k])

def test_review_image_gone_or_broken_after_reading(run, data):
    "An image deleted or cut short after the review read it, or before: one sentence naming it, never an unexpected error."
    from fastpipes.review import Review
    rv = Review(run/'run', data)
    a, b = rv.items('cross', 'test')[:2]
    (data/a.key).unlink()
    with pytest.raises(FastpipesError, match=f"`{data/a.key}` changed since the review read it") as e: rv.overlay(a)
    assert len(str(e.value).splitlines()) == 1
    (data/b.key).write_bytes((data/b.key).read_bytes()[:50])
    with pytest.raises(FastpipesError, match=f"`{data/b.key}` changed since the review read it"): rv.overlay(b)
    rv.mark(a, 'delete')
    with pytest.raises(FastpipesError, match='moved or changed since the review started'): rv.apply()
    # before it is read: the image is skipped with its reason
    rv2 = Review(run/'run', data)
    c = 'train/circle/circle_00002.jpg'
    (data/c).unlink()
    assert rv2.items('circle', 'train') and c in rv2.skipped and 'cannot be read' in rv2.skipped[c]
    with pytest.raises(FastpipesError, match=f"`{c}` cannot be reviewed"): rv2.item(c)

def test_review_in_audit_order(run, data):
    "With an `audit.csv`, the review shows the audit's order, issues and suggested labels (widget and app captions)."
    import os, warnings
    from fastpipes.review import Review, _caption
    from fastpipes.audit import audit_images, audit_order
    from PIL import Image
    src = sorted((data/'train'/'circle').glob('*.jpg'))
    os.rename(src[0], data/'train'/'cross'/'moved.jpg')
    Image.open(src[1]).resize((96, 96)).save(data/'train'/'cross'/'copy.jpg', quality=80)   # the same image, two labels
    df = audit_images(data, size=64, quiet=True)   # small: the order, not the findings, is tested here
    rv = Review(run/'run', data)
    assert [i.key for i in rv.page(n=0, per_page=5)] == audit_order(df).file.tolist()[:5]
    assert rv.progress()[0] == 5   # only that page was read
    flagged = [i for i in rv.items() if i.issue]
    assert [i.key for i in flagged] == df.file[df.issue != ''].pipe(lambda f: [k for k in audit_order(df).file if k in set(f)])
    assert flagged and all(i.issue in _caption(rv, i) and i.suggested in _caption(rv, i) for i in flagged)
    assert all(i.suggested == '' for i in rv.items() if not i.issue)
    assert Review(run/'run', data, audit=False).order is None
    (data/'audit.csv').write_text('not,an\naudit,table\n')
    with pytest.warns(UserWarning, match='orders by loss'): assert Review(run/'run', data).order is None
