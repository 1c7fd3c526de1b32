"""`fastpipes.audit`: the detectors on made-up data, the audit of a generated dataset with planted problems, the cache,
moving flagged files and back, the card, and bad input."""
import io, json, shutil, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageDraw
from sklearn.metrics import roc_auc_score

import fastpipes.audit as A
from fastpipes.audit import (AUDIT, COLUMNS, ISSUES, audit_images, audit_counts, audit_order, audit_summary,
                             card_markdown, confident_learning, copy_candidates, copy_pairs, dataset_card, inject_problems,
                             offtopic_scores, out_of_sample_probs, quality_flags, read_audit, reject_flagged,
                             restore_flagged, transformed_copy)
from fastpipes.core import LOCK, FastpipesError, dataset_lock, new_row, read_manifest, write_manifest
from fastpipes.synth import make_marks, marks_image

# ---- the detectors, on made-up numbers (no network)

def test_confident_learning_rule():
    P = np.array([[.9, .1], [.8, .2], [.4, .6], [.1, .9], [.1, .9], [.2, .8], [.35, .65]])
    flag, sug = confident_learning(P, np.array([0, 0, 0, 0, 1, 1, 1]))   # thresholds: class 0 .55, class 1 .78
    assert flag.tolist() == [False, False, False, True, False, False, False]   # row 2 prefers 1, but not confidently
    assert sug.tolist() == [0, 0, 1, 1, 1, 1, 1]

def test_out_of_sample_probs_predicts_rows_left_out_of_fitting():
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 20); X = np.eye(3)[y]*3 + rng.normal(0, .3, (60, 3))
    fit = np.ones(60, bool); fit[:5] = False
    P = out_of_sample_probs(X, y, folds=4, fit=fit)
    assert P.shape == (60, 3) and np.allclose(P.sum(1), 1) and (P.argmax(1) == y).mean() > .95
    P = out_of_sample_probs(X[:40], y[:40], fit=y[:40] == 0)   # every row of class 1 left out: learnt from anyway
    assert (P.argmax(1) == y[:40]).mean() > .95

def test_offtopic_group_is_found_where_nearest_neighbours_miss_it():
    rng = np.random.default_rng(2)
    c0, c1, far = rng.normal(0, 1, (3, 32))
    X = np.concatenate([c0 + rng.normal(0, .6, (80, 32)), c1 + rng.normal(0, .6, (80, 32)),
                        far*2 + rng.normal(0, .2, (15, 32))])
    y = np.array([0]*80 + [1]*80 + [1]*15); off = np.arange(175) >= 160
    ratio, core, ref = offtopic_scores(X, y)
    assert roc_auc_score(off, ratio) == 1 and not core[off].any() and ref > 0
    assert (ratio[off] >= 1.75).all() and (ratio[~off] >= 1.75).sum() <= 2   # a Gaussian's tail may pass too
    assert np.isnan(offtopic_scores(X, np.full(175, -1))[0]).all()   # no class: nothing to measure against

def photo(seed:int, size=(240, 180))->Image.Image:
    "A smooth photo-like image with some detail, different for each seed."
    rng = np.random.default_rng(seed)
    im = Image.fromarray((rng.random((6, 8, 3))*255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)
    d = ImageDraw.Draw(im)
    for _ in range(12):
        x, y = rng.integers(0, size[0]), rng.integers(0, size[1]); r = int(rng.integers(5, 25))
        d.ellipse([x-r, y-r, x+r, y+r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return im

def jpeg(im, q=90):
    b = io.BytesIO(); im.save(b, 'JPEG', quality=q); return Image.open(io.BytesIO(b.getvalue())).convert('RGB')

def test_transformed_copies_match_and_other_images_do_not():
    rng = np.random.default_rng(0)
    ims = [photo(i) for i in range(6)]
    copies = [transformed_copy(im, rng) for im in ims]
    th = np.stack([A._thumb(im) for im in ims] + [A._thumb(jpeg(c, q)) for c, q, _ in copies])
    sides = [A._Side(t) for t in th]
    same = [A._match(sides[i], sides[6+i]) for i in range(6)]
    other = [A._match(sides[i], sides[j]) for i in range(6) for j in range(6) if i < j]
    assert min(same) > .84 > max(other), (same, other)

def test_copy_candidates_and_pairs():
    X = np.array([[1, 0, 0], [.99, .1, 0], [0, 1, 0], [0, 0, 1.]])
    i, j = copy_candidates(X, k=1, min_sim=.9)
    assert list(zip(i, j)) == [(0, 1)]
    th = np.random.default_rng(0).integers(0, 256, (4, A.THUMB, A.THUMB)).astype(np.uint8)
    th[1] = th[0]; th[3] = np.clip(th[2].astype(int) + 3, 0, 255)   # 0 and 1 alike by embedding, 2 and 3 by thumbnail only
    i, j, s, v = copy_pairs(X, th, flat=[False]*4)
    assert {(a, b) for a, b, x in zip(i, j, v) if x} == {(0, 1), (2, 3)}

def test_quality_flags():
    stats = np.array([[120, 50, 7, 40, .2], [20, 10, 5, 40, .2], [245, 20, 5, 40, .2], [120, 3, 1, 40, 0],
                      [120, 50, 7, 1, .2], [120, 50, 7, 40, .001]])
    wh = np.array([[500, 400]]*5 + [[1000, 200]])
    assert quality_flags(stats, wh) == ['', 'dark', 'bright', 'low-information', 'grayscale', 'blurry;aspect']

def test_engines_agree(tmp_path, monkeypatch):
    "onnxruntime (when installed) and PyTorch give the same embeddings; an exporter that fails is said, and PyTorch runs."
    fns = []
    for i in range(3): marks_image('circle', 96, i)[0].save(tmp_path/f'{i}.jpg'); fns.append(tmp_path/f'{i}.jpg')
    A._net.cache_clear()
    first, engine = A.embed_images(fns, quiet=True)['emb'], A._net('efficientnet_lite0', 224)[1]
    def broken(net, size): raise RuntimeError('no exporter here')
    monkeypatch.setattr(A, '_onnx', broken); A._net.cache_clear()
    with pytest.warns(UserWarning, match='embedding with PyTorch instead'): again = A.embed_images(fns, quiet=True)['emb']
    assert A._net('efficientnet_lite0', 224)[1] == 'torch' and engine in ('onnxruntime', 'torch')
    np.testing.assert_allclose(again, first, rtol=1e-3, atol=1e-3*np.abs(first).mean())
    monkeypatch.undo(); A._net.cache_clear()

# ---- the audit of a generated dataset with planted problems

def make_data(dest:Path, n_train=30, n_test=8, seed=3, **kw)->pd.DataFrame:
    make_marks(dest, n_train=n_train, n_test=n_test, size=128, seed=seed, mark_frac=0.3)
    (dest/'boxes.csv').unlink()
    kw = {**dict(flips=0.06, groups=(('text', 8),), copies=(2, 2, 2), undecodable=1), **kw}
    return inject_problems(dest, seed=seed, **kw)

@pytest.fixture(scope='module')
def audited(tmp_path_factory):
    "A generated dataset with planted problems, audited once: `(folder, planted, table)`."
    d = tmp_path_factory.mktemp('audit')/'data'
    planted = make_data(d)
    return d, planted, audit_images(d, quiet=True)

@pytest.fixture
def data(audited, tmp_path):
    "A fresh copy of the audited dataset (with its cache and table) to change."
    d = tmp_path/'data'; shutil.copytree(audited[0], d); return d

def check_found(df:pd.DataFrame, planted:pd.DataFrame):
    "What the audit must find of what was planted, with margins any CPU clears."
    m = df.merge(planted, on='file', how='left', suffixes=('', '_planted'))
    off, fl, ok = m.kind == 'off-topic', m.kind == 'flipped', m.note == ''
    assert (m.issue[off] == 'off-topic').all()
    assert ((m.issue == 'off-topic') & ~off).sum() <= max(1, off.sum()//4)
    assert roc_auc_score(fl[ok & (m.kind.isna() | fl)], m.label_score[ok & (m.kind.isna() | fl)]) >= .9
    assert (m.issue[fl] == 'mislabeled').mean() >= .4
    assert ((m.issue == 'mislabeled') & ~fl).sum() <= max(1, fl.sum()//3)
    cp = planted[planted.kind.str.startswith('copy')]
    found = sum(m.issue[m.file == f].iloc[0].startswith('copy') or m.issue[m.file == f].iloc[0] == 'off-topic' for f in cp.file)
    assert found >= .6*len(cp)
    origs = set(cp.of)
    assert df.file[df.issue.str.startswith('copy')].isin(set(cp.file) | origs).all()   # no copy flag on an unrelated image
    assert m.note[m.kind == 'undecodable'].tolist() == ['skipped: truncated']

def test_audit_finds_planted_problems(audited):
    d, planted, df = audited
    assert list(df.columns) == list(COLUMNS) and df.file.is_unique
    check_found(df, planted)
    assert set(df.issue) <= {'', *ISSUES} and set(df.status) == {'ok'}
    assert df.group[df.issue == 'off-topic'].str.startswith('off-topic-').mean() >= .5
    assert (d/AUDIT).is_file() and (d/A.CACHE).is_dir()
    assert read_audit(d).equals(df)

@pytest.mark.slow
def test_audit_finds_planted_problems_larger(tmp_path):
    "The fast twin is `test_audit_finds_planted_problems`: more images, more problems, two groups, every kind of copy."
    planted = make_data(tmp_path/'d', n_train=60, n_test=15, seed=5, flips=0.08, groups=(('text', 10), ('chart', 10)),
                        copies=(4, 4, 4))
    check_found(audit_images(tmp_path/'d', quiet=True), planted)

def test_second_audit_reads_the_cache(data, monkeypatch):
    calls = []
    real = A.embed_images
    monkeypatch.setattr(A, 'embed_images', lambda fns, *a, **k: calls.append(list(fns)) or real(fns, *a, **k))
    before = pd.read_csv(data/AUDIT, keep_default_na=False)
    src = sorted((data/'train'/'circle').glob('circle_*.jpg'))[0]
    shutil.move(src, data/'test'/'circle'/'moved.jpg')   # a moved file keeps its cache entry: same content
    marks_image('cross', 128, 12345)[0].save(data/'train'/'cross'/'new.jpg')
    df = audit_images(data, quiet=True)
    assert [[Path(f).name for f in c] for c in calls] == [['new.jpg']]
    assert len(df) == len(before) + 1 and 'test/circle/moved.jpg' in set(df.file)
    audit_images(data, quiet=True)
    assert calls[-1] == []

def test_unreadable_cache_is_rebuilt(tmp_path):
    d = small(tmp_path, {'circle': 3, 'cross': 3}); audit_images(d, quiet=True)
    A.cache_file(d).write_bytes(b'garbage')
    with pytest.warns(UserWarning, match='could not be read'): df = audit_images(d, quiet=True)
    assert len(df) == 6 and len(A._Cache(A.cache_file(d)).rows) == 6

def test_audit_holds_the_dataset_lock(data):
    "Another process's run on the folder stops the audit with one sentence (the lock is re-entrant within a process)."
    import subprocess, sys
    code = ('import sys, time\nfrom fastpipes.core import dataset_lock\n'
            'with dataset_lock(sys.argv[1]):\n    print("locked", flush=True); time.sleep(60)')
    p = subprocess.Popen([sys.executable, '-c', code, str(data)], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == 'locked'
        with pytest.raises(FastpipesError, match='in use by another fastpipes run'): audit_images(data, quiet=True)
    finally: p.kill(); p.wait(10)

def test_reject_and_restore_round_trip(data):
    write_manifest(data, [new_row(url='https://a.example/1.jpg', query='circle', label='circle', split='train', status='ok',
                                  file=f) for f in pd.read_csv(data/AUDIT, keep_default_na=False).file[:20]])
    before = sorted(p.relative_to(data).as_posix() for p in data.rglob('*.jpg'))
    df = read_audit(data)
    moved = reject_flagged(data)
    assert set(moved.file) == set(df.file[df.issue != '']) and (moved.note == '').all()
    rows = {r['file']: r for r in read_manifest(data)}
    for f, new, issue in zip(moved.file, moved.new_file, moved.issue):
        assert new == f'rejected/{issue}/{f}' and (data/new).is_file() and not (data/f).exists()
        assert rows[new]['status'] == 'rejected' and rows[new]['reason'] == issue
    t = read_audit(data)
    assert set(t.file[t.status == 'rejected']) == set(moved.new_file)
    assert 'moved to rejected/' in audit_summary(data)
    assert audit_order(t).status.eq('ok').all()
    back = restore_flagged(data)
    assert sorted(back.new_file) == sorted(moved.file) and (back.note == '').all()
    assert sorted(p.relative_to(data).as_posix() for p in data.rglob('*.jpg')) == before and not (data/'rejected').exists()
    assert read_audit(data).drop(columns='note').equals(df.drop(columns='note'))
    assert all(r['status'] == 'ok' for r in read_manifest(data))
    assert len(restore_flagged(data)) == 0   # nothing left to undo

def test_reject_leaves_changed_files_and_only_asked_issues(data):
    df = read_audit(data)
    f = df.file[df.issue == 'off-topic'].iloc[0]
    (data/f).write_bytes((data/f).read_bytes() + b'\0')
    moved = reject_flagged(data, 'off-topic')
    assert set(moved.issue) == {'off-topic'}
    assert moved.note[moved.file == f].tolist() == ['changed since the audit: audit again']
    assert (data/f).is_file()
    with pytest.raises(FastpipesError, match='Unknown audit issue'): reject_flagged(data, ['blurry'])
    restore_flagged(data, ['copy'])   # other issues stay where they are
    assert (data/'rejected'/'off-topic').is_dir()

def test_restore_does_not_overwrite(data):
    moved = reject_flagged(data, 'off-topic')
    f = moved.file.iloc[0]; (data/f).write_bytes(b'someone else')
    back = restore_flagged(data)
    assert back.note[back.file == moved.new_file.iloc[0]].tolist() == [f'`{f}` exists again']
    assert (data/f).read_bytes() == b'someone else' and (data/moved.new_file.iloc[0]).is_file()

def test_read_audit_checks_the_table(data):
    df = pd.read_csv(data/AUDIT, dtype=str, keep_default_na=False)
    (data/df.file[0]).unlink()
    with pytest.warns(UserWarning, match='no longer there'): assert len(read_audit(data)) == len(df) - 1
    for bad in ['../x.jpg', '/etc/passwd', 'a/../../x.jpg']:
        t = df.copy(); t.loc[1, 'file'] = bad; t.to_csv(data/AUDIT, index=False)
        with pytest.raises(FastpipesError, match='is not an audit row'): read_audit(data)
    t = df.copy(); t.loc[1, 'issue'] = 'weird'; t.to_csv(data/AUDIT, index=False)
    with pytest.raises(FastpipesError, match='is not an audit row'): read_audit(data)
    df.drop(columns=['score']).to_csv(data/AUDIT, index=False)
    with pytest.raises(FastpipesError, match='lacks the columns score'): read_audit(data)
    (data/AUDIT).unlink()
    with pytest.raises(FastpipesError, match='has no audit yet'): read_audit(data)

def test_summary_and_card(data):
    rows = [new_row(url=f'https://h{i % 2}.example/{i}.jpg', query=f'{l} mark', label=l, split='train', status='ok',
                    file=f'train/{l}/{i}.jpg') for i, l in enumerate(['circle', 'cross']*5)]
    rows.append(new_row(url='https://h0.example/x', query='cross mark', label='cross', split='train', status='rejected',
                        reason='html'))
    write_manifest(data, rows)
    c = audit_counts(data)
    assert c['checked'] == c['images'] - 1 and c['skipped'] == {'truncated': 1}
    assert c['flagged'] == sum(v['n'] for v in c['issues'].values()) > 0
    s = audit_summary(data)
    assert s.startswith(f"Audited {c['checked']} of {c['images']} images") and 'off-topic' in s
    card = dataset_card(data)
    assert card['classes'] == ['circle', 'cross'] and card['queries'] == {'circle': ['circle mark'], 'cross': ['cross mark']}
    assert card['hosts']['n'] == 2 and card['manifest']['reasons'] == {'html': 1} and card['audit'] == c
    assert json.loads(json.dumps(card)) == card
    md = card_markdown(card)
    assert md.startswith('## Dataset: data') and '| circle |' in md and '**Audit**' in md and 'off-topic' in md
    (data/AUDIT).unlink(); write_manifest(data, [])
    assert dataset_card(data)['audit'] is None and '**Audit**' not in card_markdown(dataset_card(data))

def test_card_names_are_text_and_bounded(tmp_path):
    "Labels, queries and hosts come from the web: the card shows them as text; many classes stay a bounded table."
    from PIL import Image
    labels = ['a|b', '*c*', '<img src=x>', '[l](e)'] + [f'k{i:02d}' for i in range(40)]
    for l in labels: (tmp_path/l).mkdir(); Image.new('RGB', (8, 8)).save(tmp_path/l/'0.png')
    write_manifest(tmp_path, [new_row(url=f'https://h{i}.example/{i}', query=f'# {l}', label=l, status='ok',
                                      file=f'{l}/0.png') for i, l in enumerate(labels)])
    card = dataset_card(tmp_path); md = card_markdown(card)
    assert len(card['classes']) == 44 and 'and 14 more' in md
    assert '<img' not in md and '[l](' not in md and '| a|b' not in md and '\n# ' not in md
    assert '&lt;img src=x&gt;' in md and 'a\\|b' in md and '\\*c\\*' in md
    table = [l for l in md.splitlines() if l.startswith('| ')]
    assert len(table) == 1 + 30 + 1 and table[-1].startswith('| total |')   # header, 30 classes, totals

# ---- bad input: a sentence or a recorded reason, never a crash

def small(d:Path, n:dict)->Path:
    for l, k in n.items():
        (d/l).mkdir(parents=True, exist_ok=True)
        for i in range(k): marks_image(l, 96, i)[0].save(d/l/f'{i}.jpg')
    return d

def test_one_class(tmp_path):
    df = audit_images(small(tmp_path, {'circle': 12}), quiet=True)
    assert set(df.note) == {'one class: no label check'} and df.label_score.isna().all() and df.offtopic_score.notna().all()
    assert set(df.suggested) == {''} and 'Audited 12 of 12' in audit_summary(df)

def test_class_smaller_than_folds_and_class_of_one(tmp_path):
    df = audit_images(small(tmp_path/'a', {'circle': 8, 'cross': 3}), quiet=True, folds=5)
    assert df.label_score.notna().all() and set(df.note) == {''}
    df = audit_images(small(tmp_path/'b', {'circle': 8, 'cross': 6, 'none': 1}), quiet=True)
    assert df.note[df.label == 'none'].tolist() == ['class too small for a label check']
    assert df.label_score[df.label != 'none'].notna().all()

def test_single_image(tmp_path):
    df = audit_images(small(tmp_path, {'circle': 1}), quiet=True)
    assert len(df) == 1 and df.issue[0] == ''
    assert df.note[0] == 'too few images for an off-topic check; one class: no label check'

def test_loose_images_without_classes(tmp_path):
    for i in range(12): marks_image('circle', 96, i)[0].save(tmp_path/f'{i}.jpg')
    df = audit_images(tmp_path, quiet=True)
    assert set(df.label) == {''} and set(df.note) == {'no class folder: no off-topic check; in no class folder: no label check'}

def test_nothing_decodes(tmp_path):
    (tmp_path/'a').mkdir(); (tmp_path/'a'/'x.jpg').write_bytes(b'<html></html>')
    (tmp_path/'a'/'y.jpg').write_bytes(b'\xff\xd8\xff\xe0' + b'\0'*50)
    df = audit_images(tmp_path, quiet=True)
    assert df.note.str.startswith('skipped: ').all() and len(df) == 2 and audit_counts(df)['checked'] == 0
    assert audit_images(tmp_path, quiet=True).equals(df)   # the reasons are cached with the file hashes

def test_no_images(tmp_path):
    with pytest.raises(FastpipesError, match='holds no images to audit'): audit_images(tmp_path, quiet=True)
    with pytest.raises(FastpipesError, match='does not exist'): audit_images(tmp_path/'nope', quiet=True)
    (tmp_path/'f.jpg').write_bytes(b'x')
    with pytest.raises(FastpipesError, match='is a file'): audit_images(tmp_path/'f.jpg', quiet=True)

def test_inject_problems_needs_two_classes(tmp_path):
    with pytest.raises(FastpipesError, match='two or more class folders'): inject_problems(small(tmp_path, {'circle': 3}))
