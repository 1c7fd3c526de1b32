"""The `fastpipes` command: bad input ends with exit status 2 and ONE line on stderr (no traceback), Ctrl-C leaves a
resumable state and exits 130, and the success paths (`train`, `predict`, `cam`, `demo`) write what they promise."""
import json, os, pickle, shutil, signal, subprocess, sys, time
from pathlib import Path
from urllib.parse import urlsplit
import numpy as np
import pytest
from PIL import Image

from fastpipes.cli import main

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, 'OMP_NUM_THREADS': os.environ.get('OMP_NUM_THREADS', '1'), 'MPLBACKEND': 'Agg',
       'PYTHONPATH': os.pathsep.join([str(ROOT), os.environ.get('PYTHONPATH', '')])}
TINY = ['--arch', 'resnet18', '--size', '32', '--bs', '8', '--epochs', '1', '--no-pretrained', '--no-aug', '--quiet']

def cli(*args, env=None, timeout=300, entry=False):
    "Run `python -m fastpipes.cli args` (or with `entry`, the installed `fastpipes` command) in a subprocess: (exit status, stdout, stderr)."
    cmd = [str(Path(sys.executable).parent/'fastpipes')] if entry else [sys.executable, '-m', 'fastpipes.cli']
    r = subprocess.run([*cmd, *map(str, args)], capture_output=True, text=True,
                       env={**ENV, **(env or {})}, cwd=ROOT, timeout=timeout)
    return r.returncode, r.stdout, r.stderr

def run_main(capsys, *args):
    "Run `main(args)` in this process: (exit status, stdout, stderr)."
    rc = main([str(a) for a in args])
    o, e = capsys.readouterr()
    return rc, o, e

def assert_user_error(rc, out, err, contains=''):
    "Exit status 2, exactly one line on stderr, no traceback."
    lines = err.strip().splitlines()
    assert rc == 2, f"exit status {rc}, stderr: {err[-2000:]}"
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err[-2000:]}"
    assert 'Traceback' not in err
    assert contains.lower() in lines[0].lower(), lines[0]

def _img(fn:Path, col, size=40, seed=0):
    rng = np.random.default_rng(seed)
    a = np.clip(np.array(col, dtype=np.float32) + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    fn.parent.mkdir(parents=True, exist_ok=True); Image.fromarray(a).save(fn)

def make_data(d:Path, classes=('red', 'blue'), n_train=12, n_test=4, splits=('train', 'test'))->Path:
    "A tiny two-colour dataset `d/{train,test}/<label>/*.jpg`."
    cols = {'red': (220, 40, 40), 'blue': (40, 40, 220), 'green': (40, 200, 40)}
    for split,n in zip(splits, (n_train, n_test)):
        for c in classes:
            for i in range(n): _img(d/split/c/f'{c}{i}.jpg', cols[c], seed=hash((split, c, i)) % 1000)
    return d

@pytest.fixture(scope='module')
def data(tmp_path_factory): return make_data(tmp_path_factory.mktemp('data'))

@pytest.fixture(scope='module')
def trained(tmp_path_factory, data):
    "A model trained by the command on the tiny dataset."
    out = tmp_path_factory.mktemp('run')
    rc, o, e = cli('train', data, '--out', out, *TINY)
    assert rc == 0, e[-3000:]
    return out

# ---------------------------------------------------------------- bad input: exit 2, one line

def test_missing_folder(capsys, tmp_path):
    assert_user_error(*run_main(capsys, 'train', tmp_path/'nope', '--out', tmp_path/'o', *TINY), 'does not exist')

def test_file_for_folder(capsys, tmp_path):
    (tmp_path/'x.jpg').write_bytes(b'x')
    assert_user_error(*run_main(capsys, 'train', tmp_path/'x.jpg', '--out', tmp_path/'o', *TINY), 'file')

def test_output_is_a_file(capsys, tmp_path, data):
    (tmp_path/'o').write_text('x')
    assert_user_error(*run_main(capsys, 'train', data, '--out', tmp_path/'o', *TINY), 'is a file')

def test_empty_folder(capsys, tmp_path):
    (tmp_path/'d').mkdir()
    assert_user_error(*run_main(capsys, 'train', tmp_path/'d', '--out', tmp_path/'o', *TINY, '--valid', '0.2'), 'no images')

def test_single_class(capsys, tmp_path):
    d = make_data(tmp_path/'d', classes=('red',))
    assert_user_error(*run_main(capsys, 'train', d, '--out', tmp_path/'o', *TINY), 'class')

def test_empty_class(capsys, tmp_path):
    d = make_data(tmp_path/'d'); (d/'train'/'green').mkdir()
    assert_user_error(*run_main(capsys, 'train', d, '--out', tmp_path/'o', *TINY), 'green')

def test_unknown_arch(capsys, tmp_path, data):
    assert_user_error(*run_main(capsys, 'train', data, '--out', tmp_path/'o', *TINY, '--arch', 'resnet999'), 'resnet999')

@pytest.mark.parametrize('opt,val', [('--epochs', '0'), ('--epochs', '-2'), ('--bs', '0'), ('--bs', 'many'),
                                     ('--size', 'big'), ('--size', '0'), ('--size', '8'), ('--valid', '1.5'),
                                     ('--lr-mult', '0'), ('--lr', '-1')])
def test_bad_numbers(capsys, tmp_path, data, opt, val):
    assert_user_error(*run_main(capsys, 'train', data, '--out', tmp_path/'o', *TINY, opt, val), opt)

def test_valid_folder_missing(capsys, tmp_path, data):
    assert_user_error(*run_main(capsys, 'train', data, '--out', tmp_path/'o', *TINY, '--valid', 'val'), 'val')

def test_model_folder_missing(capsys, tmp_path, data):
    assert_user_error(*run_main(capsys, 'predict', tmp_path/'nope', data/'test'/'red'/'red0.jpg'), 'does not exist')

def _model_files(out:Path)->list:
    return [p for p in (out/'model').rglob('*') if p.is_file()] if (out/'model').is_dir() else [p for p in out.glob('model*') if p.is_file()]

@pytest.mark.parametrize('kind', ['corrupt', 'foreign'])
def test_bad_model_file(capsys, tmp_path, trained, data, kind):
    "A model whose files are garbage, or a pickle from elsewhere, is refused without unpickling anything."
    import shutil
    out = tmp_path/'m'; shutil.copytree(trained, out)
    files = _model_files(out)
    assert files, f"no model files in {out}"
    for f in files:
        if kind == 'corrupt': f.write_bytes(f.read_bytes()[:max(1, f.stat().st_size // 3)])
        else: f.write_bytes(pickle.dumps({'not': 'a fastpipes model'}))
    assert_user_error(*run_main(capsys, 'predict', out, data/'test'/'red'/'red0.jpg'))

def test_predict_missing_file(capsys, trained, tmp_path):
    assert_user_error(*run_main(capsys, 'predict', trained, tmp_path/'nope.jpg'), 'nope.jpg')

def test_cam_missing_items(capsys, trained, tmp_path):
    assert_user_error(*run_main(capsys, 'cam', trained, tmp_path/'nope'), 'nope')

@pytest.mark.parametrize('name,text', [('spec.toml', '[classes\ntiger = "tiger"'), ('spec.json', '{"classes": {"a": '),
                                       ('spec.toml', '[classes]\n"a/b" = "x"\nlion = "lion"'),
                                       ('spec.toml', 'n_train = true\n[classes]\na = "a"\nb = "b"'),
                                       ('spec.toml', '[classes]\ncat = "cat"\n" cat " = "kitten"'),
                                       ('spec.json', '{"classes": ' + '[' * 50_000 + ']' * 50_000 + '}'),
                                       ('spec.toml', b'\xff\xfe[\x00c\x00')])
def test_spec_file_errors(capsys, tmp_path, name, text):
    if isinstance(text, bytes): (tmp_path/name).write_bytes(text)
    else: (tmp_path/name).write_text(text)
    assert_user_error(*run_main(capsys, 'run', '--spec', tmp_path/name, '--out', tmp_path/'o'))

@pytest.mark.parametrize('label', ['a/b', '../x', 'c\\d'])
def test_label_with_path_separator(capsys, tmp_path, label):
    assert_user_error(*run_main(capsys, 'run', label, 'lion', '--out', tmp_path/'o'), 'separator')
    assert not (tmp_path/'o').exists()

def test_one_class(capsys, tmp_path):
    assert_user_error(*run_main(capsys, 'crawl', 'tiger', '--out', tmp_path/'o'), 'two classes')

def test_unknown_command(capsys):
    assert_user_error(*run_main(capsys, 'frobnicate'), 'invalid choice')

def test_download_url_file_missing(capsys, tmp_path):
    assert_user_error(*run_main(capsys, 'download', tmp_path/'urls.txt', tmp_path/'d'), 'does not exist')

def test_download_limits(capsys, tmp_path):
    "--workers, --per-host and --deadline reach the downloader: one connection at a time, and a slow URL fails on its deadline."
    from fastpipes.core import read_manifest
    from fastpipes.serve import LoopbackServer, Route
    _img(tmp_path/'src.jpg', (200, 100, 50), size=48)
    body = (tmp_path/'src.jpg').read_bytes()
    with LoopbackServer({**{f'/i{i}.jpg': Route(body, delay=0.05) for i in range(6)}, '/slow.jpg': Route(body, delay=5)}) as srv:
        (tmp_path/'urls.txt').write_text('\n'.join([srv.url(f'/i{i}.jpg') for i in range(6)] + [srv.url('/slow.jpg')]))
        rc, o, e = run_main(capsys, 'download', tmp_path/'urls.txt', tmp_path/'d', '--allow-private', '--quiet',
                            '--workers', 1, '--per-host', 1, '--deadline', 1.5)
        assert rc == 0, e
        assert srv.max_conns['127.0.0.1'] == 1
    rows = {urlsplit(r['url']).path: r for r in read_manifest(tmp_path/'d')}
    assert rows.pop('/slow.jpg')['reason'] == 'took longer than the 1.5 s deadline'
    assert [r['status'] for r in rows.values()] == ['ok'] * 6
    for bad in (['--workers', '0'], ['--deadline', 'nan'], ['--per-host', 'x']):
        assert_user_error(*run_main(capsys, 'download', tmp_path/'urls.txt', tmp_path/'d', *bad), bad[0])

def test_clean_missing(capsys, tmp_path):
    assert_user_error(*run_main(capsys, 'clean', tmp_path/'nope'), 'does not exist')

def test_audit_bad_input(capsys, tmp_path):
    "A missing, empty or file path, a bad threshold, nothing to restore: one line each."
    assert_user_error(*run_main(capsys, 'audit', tmp_path/'nope'), 'does not exist')
    (tmp_path/'e').mkdir(); (tmp_path/'f.jpg').write_bytes(b'x')
    assert_user_error(*run_main(capsys, 'audit', tmp_path/'e'), 'holds no images to audit')
    assert_user_error(*run_main(capsys, 'audit', tmp_path/'f.jpg'), 'is a file')
    assert_user_error(*run_main(capsys, 'audit', tmp_path/'e', '--offtopic', '-1'), 'not a positive number')
    assert_user_error(*run_main(capsys, 'clean', tmp_path/'nope', '--audit'), 'does not exist')
    assert run_main(capsys, 'audit', tmp_path/'e', '--restore')[:2] == (0, 'Nothing to restore.\n')

def offtopic_data(d:Path)->Path:
    "The tiny dataset with three generated text images among the red ones (a look-alike off-topic group)."
    from fastpipes.audit import offtopic_image
    make_data(d)
    for k in range(3): offtopic_image('text', k).save(d/'train'/'red'/f'text{k}.jpg')
    return d

def test_audit_clean_restore(capsys, tmp_path):
    "`audit` lists what it flags; `clean --audit` moves it to rejected/<issue>/ with the manifest's reason; `--restore`."
    from fastpipes.core import read_manifest
    d = offtopic_data(tmp_path/'d')
    (d/'train'/'red'/'new\nline.jpg').write_bytes((d/'train'/'red'/'red0.jpg').read_bytes())   # a name with a newline
    rc, out, err = run_main(capsys, 'audit', d, '-q')
    assert rc == 0, err
    rows = [l.split('\t') for l in out.splitlines()]
    assert rows[0] == ['file', 'label', 'split', 'issue', 'score', 'suggested', 'copy_of']
    flagged = {r[0]: r[3] for r in rows[1:] if len(r) == 7}
    assert {f'train/red/text{k}.jpg' for k in range(3)} <= set(flagged) and flagged['train/red/text0.jpg'] == 'off-topic'
    assert all(len(r) == 7 for r in rows[1:len(flagged) + 1]) and out.count('\n') == len(flagged) + 1 + 3
    assert 'Audited 36 of 36 images' in out and (d/'audit.csv').is_file()
    rc, out, err = run_main(capsys, 'clean', d, '--audit')
    assert rc == 0, err
    import pandas as pd   # cleaning changed the folder (the copy with a newline is gone): clean --audit audited anew
    t = pd.read_csv(d/'audit.csv', dtype=str, keep_default_na=False)
    moved = dict(zip(t.file[t.status == 'rejected'], t.issue[t.status == 'rejected']))
    gone = {f.split('/', 2)[2] for f in moved if f.startswith('rejected/off-topic/')}
    assert moved and all(f == f'rejected/{i}/' + f.split('/', 2)[2] and (d/f).is_file() for f, i in moved.items())
    assert {f'train/red/text{k}.jpg' for k in range(3)} <= gone and not any((d/f).exists() for f in gone)
    assert 'moved to rejected/' in out
    rows = {r['file']: r for r in read_manifest(d)}
    assert all(rows[f'rejected/off-topic/{f}']['reason'] == 'off-topic' for f in gone)
    rc, out, err = run_main(capsys, 'audit', d, '--restore')
    back = {f.split('/', 2)[2] for f in moved}
    assert rc == 0 and all((d/f).is_file() for f in back) and not any((d/f).exists() for f in moved)
    assert {r['status'] for r in read_manifest(d) if r['file'] in back} == {'ok'}

@pytest.mark.parametrize('audit', [True, False])
def test_prepare_run_audits_unless_told_not(tmp_path, monkeypatch, audit):
    "`run` cleans then audits the crawled data (the fast twin of test_run_offline, the crawl replaced by a copy)."
    import shutil, fastpipes.crawl
    from fastpipes.pipeline import prepare_run
    src = offtopic_data(tmp_path/'src')
    monkeypatch.setattr(fastpipes.crawl, 'crawl_images', lambda classes, path, **kw: shutil.copytree(src, path))
    path, _ = prepare_run(['red', 'blue'], tmp_path/'run', quiet=True, audit=audit)
    assert (path/'audit.csv').is_file() == audit
    if audit:
        from fastpipes.audit import read_audit
        from fastpipes.core import dataset_view
        df = read_audit(path)   # what cleaning kept
        assert set(df.issue[df.file.str.contains('text')]) == {'off-topic'} and len(df) == len(dataset_view(path).images)

def test_run_audit_option():
    "`run` audits unless `--no-audit`; the option is `prepare_run`'s `audit`."
    from fastpipes.cli import parser, _args
    a = parser().parse_args(['run', 'a', 'b', '--out', 'o'])
    assert _args(a, 'audit') == {}
    assert _args(parser().parse_args(['run', 'a', 'b', '--out', 'o', '--no-audit']), 'audit') == {'audit': False}

def test_train_rates_reach_the_library():
    "`--lr` and `--lr-mult` are `train_classifier`'s; left out, the library's defaults apply (none is sent)."
    from fastpipes.cli import parser, _args, _TRAIN
    assert {'lr', 'lr_mult'}.isdisjoint(_args(parser().parse_args(['train', 'd', '--out', 'o']), *_TRAIN))
    a = parser().parse_args(['train', 'd', '--out', 'o', '--lr', '1e-3', '--lr-mult', '100'])
    assert _args(a, 'lr', 'lr_mult') == {'lr': 1e-3, 'lr_mult': 100.0}

def test_unwritable_output(capsys, tmp_path, data):
    if os.geteuid() == 0: out = Path('/proc/fastpipes-out')  # root writes anywhere else
    else:
        ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o500); out = ro/'o'
    assert_user_error(*run_main(capsys, 'train', data, '--out', out, *TINY), 'cannot write')

# -------------------------------------------------- the network: exit 2, one line, in a real subprocess

NO_NET = {'DDGS_PROXY': 'http://127.0.0.1:9', 'HTTPS_PROXY': 'http://127.0.0.1:9', 'HTTP_PROXY': 'http://127.0.0.1:9',
          'https_proxy': 'http://127.0.0.1:9', 'http_proxy': 'http://127.0.0.1:9', 'NO_PROXY': '', 'no_proxy': ''}

def test_no_network_for_pretrained_weights(tmp_path, data):
    "Offline, asking for pretrained weights names --no-pretrained (weights cache empty, every proxy refused)."
    args = [a for a in TINY if a != '--no-pretrained']
    rc, o, e = cli('train', data, '--out', tmp_path/'o', *args, env={**NO_NET, 'TORCH_HOME': str(tmp_path/'torch')})
    assert_user_error(rc, o, e, '--no-pretrained')

def test_no_network_for_crawl(tmp_path):
    rc, o, e = cli('crawl', 'tiger', 'lion', '--out', tmp_path/'d', '--n-train', '5', '--pause', '0', '--quiet',
                   env=NO_NET, timeout=240)
    assert_user_error(rc, o, e)

def test_subprocess_one_line_and_debug(tmp_path):
    "The real interpreter prints one line; --debug adds the traceback."
    rc, o, e = cli('train', tmp_path/'nope', '--out', tmp_path/'o')
    assert_user_error(rc, o, e, 'does not exist')
    rc, o, e = cli('train', tmp_path/'nope', '--out', tmp_path/'o', '--debug')
    assert rc == 2 and 'Traceback' in e

def test_help_is_fast_and_light():
    rc, o, e = cli('--help')
    assert rc == 0 and 'demo' in o
    r = subprocess.run([sys.executable, '-c', 'import sys, fastpipes.cli as c; c.parser().format_help(); print("torch" in sys.modules)'],
                       capture_output=True, text=True, env=ENV, cwd=ROOT)
    assert r.stdout.strip() == 'False', r.stderr

def test_command_help_prints_no_foreign_warnings():
    "A command's help reads the library's defaults (importing torch and fastai): their deprecation warnings stay off stderr."
    rc, o, e = cli('train', '--help')
    assert rc == 0 and '--epochs' in o and e == '', e

# ---------------------------------------------------------------- Ctrl-C: exit 130 and resume

def test_ctrl_c_during_download_resumes(tmp_path):
    from fastpipes.serve import LoopbackServer, Route
    from fastpipes.core import read_manifest
    n = 40
    _img(tmp_path/'src.jpg', (200, 100, 50), size=64)
    body = (tmp_path/'src.jpg').read_bytes()
    routes = {f'/i{i}.jpg': Route(body, delay=0.4) for i in range(n)}
    with LoopbackServer(routes) as srv:
        (tmp_path/'urls.txt').write_text('\n'.join(srv.url(f'/i{i}.jpg') for i in range(n)))
        dest = tmp_path/'d'
        p = subprocess.Popen([sys.executable, '-m', 'fastpipes.cli', 'download', str(tmp_path/'urls.txt'), str(dest),
                              '--allow-private', '--quiet'], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.time()
        while time.time() - t0 < 60 and len(read_manifest(dest)) < 4 and p.poll() is None: time.sleep(0.05)
        assert p.poll() is None, f"the download ended before it could be interrupted: {p.communicate()}"
        p.send_signal(signal.SIGINT)
        o, e = p.communicate(timeout=60)
        assert p.returncode == 130, (p.returncode, e[-2000:])
        assert 'resume' in e and 'Traceback' not in e
        done = {r['url'] for r in read_manifest(dest) if r['status'] == 'ok'}
        assert 0 < len(done) < n, len(done)
        assert not list(dest.rglob('*.part')), "a .part file was left behind"
        hits_before = dict(srv.hits)
        rc, o, e = cli('download', tmp_path/'urls.txt', dest, '--allow-private', '--quiet')
        assert rc == 0, e
        rows = read_manifest(dest)
        assert sum(r['status'] == 'ok' for r in rows) == n
        assert len([f for f in dest.rglob('*.jpg')]) == n
        refetched = [u for u in done if srv.hits[urlsplit(u).path] > hits_before.get(urlsplit(u).path, 0)]
        assert refetched == [], f"already saved URLs fetched again: {refetched[:3]}"

# ---------------------------------------------------------------- success paths

def test_train_writes_everything(trained):
    names = {p.name for p in trained.iterdir()}
    for f in ['report.html', 'metrics.json', 'confusion_matrix.png', 'top_losses.png', 'class_activation_maps.png']:
        assert f in names, (f, names)
    m = json.loads((trained/'metrics.json').read_text())
    assert 0 <= m['accuracy'] <= 1
    page = (trained/'report.html').read_text()
    assert 'data:image/png;base64,' in page and 'Confusion matrix' in page

def test_resume_with_another_size_is_one_sentence(trained, data, tmp_path):
    "`--resume` with another `--size` than the checkpoint's: one sentence, and the run folder is left as it was."
    run = tmp_path/'run'; shutil.copytree(trained, run)
    before = {f: f.stat().st_mtime_ns for f in run.rglob('*') if f.is_file()}
    rc, o, e = cli('train', data, '--out', run, *[('48' if a == '32' else a) for a in TINY], '--resume')
    assert_user_error(rc, o, e, 'another input size')
    assert {f: f.stat().st_mtime_ns for f in run.rglob('*') if f.is_file()} == before

def test_predict(trained, data):
    files = sorted((data/'test'/'red').glob('*.jpg'))[:2] + sorted((data/'test'/'blue').glob('*.jpg'))[:2]
    rc, o, e = cli('predict', trained, *files)
    assert rc == 0, e
    lines = [l.split('\t') for l in o.strip().splitlines()]
    assert [l[0] for l in lines] == [str(f) for f in files]
    assert all(l[1] in ('red', 'blue') and 0 <= float(l[2]) <= 1 for l in lines), lines

def test_cam(trained, data, tmp_path):
    rc, o, e = cli('cam', trained, data/'test', '--png', tmp_path/'g.png', '--nrows', '2', '--ncols', '3')
    assert rc == 0, e
    im = Image.open(tmp_path/'g.png'); assert min(im.size) > 100

@pytest.mark.slow
def test_demo(tmp_path):
    "The offline demo works end to end (its targets, 0.95 and 0.9 over seeds 0-4, are measured by bench/demo.py); its report opens."
    out = Path(os.environ.get('FASTPIPES_DEMO_OUT') or tmp_path/'demo')
    rc, o, e = cli('demo', '--out', out, '--quiet', timeout=600, entry=True)   # the README's command
    assert rc == 0, e[-3000:]
    assert 'Warning' not in e, e[-3000:]   # fastpipes' own warnings stay on in the CLI (an unclosed file showed here once)
    m = json.loads((out/'metrics.json').read_text())
    assert m['accuracy'] >= 0.9 and m['pointing game'] >= 0.8, m   # a margin below the targets (0.95, 0.9): CPUs differ
    assert str((out/'report.html').resolve()) in o
    rejected = {p.parent.name for p in (out/'data'/'rejected').rglob('*') if p.is_file()}
    assert len(rejected) >= 2, rejected
    from test_report import open_page, check_page
    check_page(open_page(out/'report.html'))

def test_run_offline(tmp_path, monkeypatch, capsys):
    "`run` end to end (crawl → clean → train → CAM → report) with the search replaced by a loopback server."
    import fastpipes.crawl
    from fastpipes.serve import LoopbackServer
    src = make_data(tmp_path/'src', n_train=10, n_test=0, splits=('train',))
    routes = {f'/{c}/{f.name}': f.read_bytes() for c in ('red', 'blue') for f in sorted((src/'train'/c).glob('*.jpg'))}
    routes['/red/page.jpg'] = b'<html>not an image</html>'  # downloading refuses it: no file, a manifest row
    routes['/red/cut.jpg'] = routes['/red/red0.jpg'][:300]     # downloading keeps it, cleaning rejects it
    with LoopbackServer(routes) as srv:
        def fake_search(query, max_images=200, **kw):
            return [dict(url=srv.url(p), title=p) for p in routes if p.startswith(f'/{query}/')][:max_images]
        monkeypatch.setattr(fastpipes.crawl, 'search_images', fake_search)
        rc, o, e = run_main(capsys, 'run', 'red', 'blue', '--out', tmp_path/'run', '--n-train', '12', '--pause', '0',
                            '--allow-private', '--valid', '0.25', *TINY)
    assert rc == 0, e[-3000:]
    out = tmp_path/'run'
    assert (out/'report.html').exists() and (out/'metrics.json').exists(), list(out.iterdir())
    from fastpipes.core import read_manifest
    why = {urlsplit(r['url']).path: (r['status'], r['reason']) for r in read_manifest(out/'data')}
    assert why['/red/page.jpg'][0] != 'ok' and 'HTML' in why['/red/page.jpg'][1], why['/red/page.jpg']
    assert why['/red/cut.jpg'] == ('rejected', 'truncated'), why['/red/cut.jpg']
    assert [p.parent.name for p in (out/'data'/'rejected').rglob('*.jpg')] == ['truncated']
    page = (out/'report.html').read_text()
    assert 'not an image: HTML' in page and 'truncated' in page, "the report does not say what was refused and why"
    assert (out/'data'/'audit.csv').is_file() and '<h2>Audit</h2>' in page, "run audits by default"
    assert '<b>Queries</b>: blue: &quot;blue&quot;; red: &quot;red&quot;.' in page and '<b>Sources</b>: 1 hosts' in page
    assert str((out/'report.html').resolve()) in o

# ---------------------------------------------------------------- predict output, export and app

def test_predict_names_cannot_forge_lines(trained, data, tmp_path):
    "A file name with a tab and a newline stays one escaped field of one line; --json gives one object per line."
    odd = tmp_path/'a\tb\nfake\tred\t1.0000.jpg'
    odd.write_bytes(next((data/'test'/'red').glob('*.jpg')).read_bytes())
    plain = tmp_path/'plain.jpg'; plain.write_bytes(odd.read_bytes())
    rc, o, e = cli('predict', trained, odd, plain)
    assert rc == 0, e
    lines = o.strip().splitlines()
    assert len(lines) == 2 and all(len(l.split('\t')) == 3 for l in lines), lines
    assert lines[0].startswith(str(tmp_path/'a\\tb\\nfake\\tred\\t1.0000.jpg')), lines[0]
    rc, o, e = cli('predict', trained, odd, plain, '--json')
    rows = [json.loads(l) for l in o.strip().splitlines()]
    assert rc == 0 and [r['file'] for r in rows] == [str(odd), str(plain)], o

def test_export_and_app_need_a_run(capsys, tmp_path):
    (tmp_path/'empty').mkdir()
    assert_user_error(*run_main(capsys, 'export', tmp_path/'empty'))
    assert_user_error(*run_main(capsys, 'export', tmp_path/'nope'), 'does not exist')
    assert_user_error(*run_main(capsys, 'app', tmp_path/'nope'), 'does not exist')

def test_export_safetensors(trained, tmp_path):
    rc, o, e = cli('export', trained, '--out', tmp_path/'x', '--no-onnx')
    assert rc == 0, e
    assert (tmp_path/'x'/'model.safetensors').stat().st_size > 1000 and not (tmp_path/'x'/'model.onnx').exists()

def test_train_on_two_processes(data, tmp_path):
    "The README's `--processes 2` on two CPU processes (gloo): one model, one report, metrics over the whole validation set."
    out = tmp_path/'r'
    rc, o, e = cli('train', data, '--out', out, *TINY, '--processes', '2', timeout=600)
    assert rc == 0, e[-3000:]
    assert (out/'model'/'weights.pth').is_file() and (out/'report.html').is_file()
    assert (out/'checkpoints'/'last.pth').is_file()
    assert json.loads((out/'metrics.json').read_text())['n'] == len(list((data/'test').rglob('*.jpg')))
    assert o.count('Report:') == 1, o
