"""The report in a real browser: headless Chromium opens `report.html` from a file, logs no console errors, and every
image has a non-zero natural size. Driven through the DevTools protocol by Playwright (the Python package only:
it uses Debian's `/usr/bin/chromium`, never a downloaded browser)."""
import os, shutil, tempfile
from pathlib import Path
import pytest
from PIL import Image

CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-dev-shm-usage',
                  '--disable-background-networking', '--disable-component-update', '--disable-sync']

def chromium_path():
    "Debian's chromium, or fail in CI / skip locally when it is missing."
    exe = os.environ.get('FASTPIPES_CHROMIUM') or shutil.which('chromium') or '/usr/bin/chromium'
    missing = None if Path(exe).exists() else f"headless Chromium not found at {exe}: `apt-get install chromium`"
    try: import playwright.sync_api  # noqa: F401
    except ImportError: missing = missing or "the `playwright` Python package is missing: `pip install playwright`"
    if missing:
        if os.environ.get('CI'): pytest.fail(missing)
        pytest.skip(missing)
    return exe

def open_page(fn:Path, screenshot:Path|None=None, width:int=1280):
    "Open `fn` in headless Chromium; return console errors, page errors, failed requests and image sizes."
    from playwright.sync_api import sync_playwright
    exe = chromium_path()
    errors, failed = [], []
    with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
                                                   viewport=dict(width=width, height=900))
        try:
            page = ctx.new_page()
            page.on('console', lambda m: m.type == 'error' and errors.append(m.text))
            page.on('pageerror', lambda e: errors.append(str(e)))
            page.on('requestfailed', lambda r: failed.append(r.url[:80]))
            page.goto(Path(fn).resolve().as_uri(), wait_until='load', timeout=60_000)
            imgs = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])")
            external = page.evaluate("Array.from(document.querySelectorAll('[src],[href]')).map(e => e.getAttribute('src') || e.getAttribute('href')).filter(u => !u.startsWith('data:') && !u.startsWith('#'))")
            if screenshot: page.screenshot(path=str(screenshot), full_page=False)
        finally: ctx.close()
    return dict(errors=errors, failed=failed, imgs=imgs, external=external)

def toy_report(d:Path)->Path:
    "A report with every section, from plain data (no training)."
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt, pandas as pd
    from fastpipes.core import write_manifest, new_row
    from fastpipes.report import write_report, versions, dataset_counts, rejected_files, manifest_summary, curve_figure
    data = d/'data'
    for split,n in [('train', 4), ('test', 2)]:
        for lbl,col in [('cat', 'orange'), ('dog', 'brown')]:
            (data/split/lbl).mkdir(parents=True)
            for i in range(n): Image.new('RGB', (80, 60), col).save(data/split/lbl/f'{i}.jpg')
    for reason,body in [('html', b'<!doctype html><p>no'), ('empty', b''), ('truncated', (data/'train'/'cat'/'0.jpg').read_bytes()[:100])]:
        (data/'rejected'/reason).mkdir(parents=True); (data/'rejected'/reason/'x.jpg').write_bytes(body)
    write_manifest(data, [new_row(url='a', status='ok'), new_row(url='b', status='error', reason='http 404')])
    hist = pd.DataFrame(dict(epoch=[0, 1, 2], train_loss=[0.9, 0.5, 0.3], valid_loss=[0.8, 0.4, 0.3], accuracy=[0.6, 0.9, 0.97]))
    cm, ax = plt.subplots(figsize=(3, 3)); ax.imshow([[9, 1], [0, 10]])
    return write_report(d/'out', title='<cat> vs dog', summary='A toy report.', params=dict(arch='resnet18'), versions=versions(),
                        dataset=dataset_counts(data), downloads=manifest_summary(data), rejected=rejected_files(data),
                        history=hist, curve=curve_figure(hist, [1, .8, .6, .5, .4, .3]),
                        metrics={'accuracy': 0.97, 'pointing game': 0.95, 'per-class accuracy': {'cat': 1.0, 'dog': 0.94}},
                        figures={'Confusion matrix': cm, 'A photo': data/'train'/'dog'/'1.jpg'})

def check_page(res):
    assert res['errors'] == [], res['errors']
    assert res['failed'] == [], res['failed']
    assert res['external'] == [], f"assets that are not embedded: {res['external']}"
    assert res['imgs'], "the page has no images"
    bad = [i for i in res['imgs'] if not (i[1] and i[2] > 0 and i[3] > 0)]
    assert bad == [], f"images that did not decode: {bad}"

def test_report_in_browser(tmp_path):
    fn = toy_report(tmp_path)
    res = open_page(fn)
    check_page(res)
    assert len(res['imgs']) == 6, res['imgs']  # curve, 3 rejected thumbnails, 2 figures

def test_browser_sees_broken_image(tmp_path):
    "The check can fail: a page with an undecodable image is caught."
    chromium_path()
    fn = tmp_path/'bad.html'
    fn.write_text('<!doctype html><html><head><link rel="icon" href="data:,"></head><body>'
                  '<img alt="bad" src="data:image/png;base64,AAAA"></body></html>')
    res = open_page(fn)
    with pytest.raises(AssertionError, match='did not decode'): check_page(res)

def test_demo_report_in_browser():
    "The demo's report, when a demo has been run into `FASTPIPES_DEMO_OUT` (tests/test_cli.py runs one)."
    out = os.environ.get('FASTPIPES_DEMO_OUT')
    if not out or not (Path(out)/'report.html').exists(): pytest.skip("no demo report (set FASTPIPES_DEMO_OUT)")
    check_page(open_page(Path(out)/'report.html'))

# --- cheap and safe thumbnails, literal labels (issue 13) ---
import io, struct, zlib

def png_bomb(w=12000, h=12000)->bytes:
    "A valid 1-bit PNG of `w`×`h` black pixels: about 30 KB on disk, 144 MP (432 MB as RGB) once decoded."
    def chunk(kind, data): return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    raw = (b'\0' + b'\0'*((w+7)//8)) * h
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 1, 0, 0, 0, 0)) +
            chunk(b'IDAT', zlib.compress(raw, 9)) + chunk(b'IEND', b''))

@pytest.fixture
def no_decode(monkeypatch):
    "Record every image Pillow opens or decodes."
    from PIL import Image, ImageFile
    seen = []
    real_load, real_open = ImageFile.ImageFile.load, Image.open
    monkeypatch.setattr(ImageFile.ImageFile, 'load', lambda self: seen.append(('load', self.size)) or real_load(self))
    monkeypatch.setattr(Image, 'open', lambda fp, *a, **k: seen.append(('open', fp)) or real_open(fp, *a, **k))
    return seen

def tile_texts(monkeypatch)->list:
    "Capture the text written on grey tiles."
    import fastpipes.report as rep
    texts, real = [], rep._placeholder
    monkeypatch.setattr(rep, '_placeholder', lambda text, size=128: texts.append(text) or real(text, size))
    return texts

def test_bomb_thumbnail_is_a_tile(tmp_path, no_decode, monkeypatch):
    "A rejected 12000×12000 PNG: the report shows a tile from its header, without opening it in Pillow."
    from fastpipes.report import rejected_files, report_html, thumb_uri
    b = png_bomb()
    assert len(b) < 600_000
    (tmp_path/'rejected'/'too-large').mkdir(parents=True); (tmp_path/'rejected'/'too-large'/'bomb.png').write_bytes(b)
    texts = tile_texts(monkeypatch)
    page = report_html(rejected=rejected_files(tmp_path))
    assert 'bomb.png' in page and no_decode == [] and texts == ['too-large: too many pixels to draw']
    Image.new('RGB', (300, 200), 'red').save(tmp_path/'ok.png')
    assert thumb_uri(tmp_path/'ok.png').startswith('data:image/jpeg') and {k for k,_ in no_decode} == {'open', 'load'}   # the spy sees decodes

def test_large_jpeg_thumbnail_decodes_reduced(tmp_path, no_decode):
    "A big JPEG is decoded at a fraction of its size for its thumbnail (Image.draft)."
    from fastpipes.report import thumb_uri
    Image.new('RGB', (2400, 1600), 'blue').save(tmp_path/'big.jpg')
    thumb_uri(tmp_path/'big.jpg')
    assert {s for k,s in no_decode if k == 'load'} == {(300, 200)}
    Image.new('RGB', (6000, 4000), 'blue').save(tmp_path/'photo.jpg')   # 24 MP: above the thumbnail cap, but drawn at 1/8
    no_decode.clear(); thumb_uri(tmp_path/'photo.jpg')
    assert {s for k,s in no_decode if k == 'load'} == {(750, 500)}

def test_link_tile_shows_nothing_of_its_target(tmp_path, no_decode, monkeypatch):
    "A rejected link to a private key: its tile says it is a link; nothing of the key is read or shown."
    from fastpipes.report import rejected_files, report_html
    key = tmp_path/'id_rsa'; key.write_bytes(b'-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA')
    rej = tmp_path/'ds'/'rejected'/'symlink'; rej.mkdir(parents=True)
    os.symlink(key, rej/'cat.jpg'); os.symlink('/dev/zero', rej/'zero.jpg'); os.mkfifo(rej/'pipe.jpg')
    os.symlink(tmp_path, rej/'folder')
    texts = tile_texts(monkeypatch)
    found = rejected_files(tmp_path/'ds')
    assert [p.name for p in found['symlink']] == ['cat.jpg', 'folder', 'pipe.jpg', 'zero.jpg']
    page = report_html(rejected=found)
    assert 'cat.jpg' in page and no_decode == []
    assert texts == ['symlink: a symbolic link, not followed', 'symlink: a symbolic link, not followed',
                     'symlink: a special file, not opened', 'symlink: a symbolic link, not followed']
    assert not any('BEGIN' in t or 'b3Bl' in t for t in texts)

def test_labels_are_literal_in_figures(tmp_path):
    "A metric or class named like math text is drawn as it is: no crash, no math."
    import pandas as pd
    from fastpipes.report import curve_figure, dataset_counts, fig_uri, write_report
    lbl = "'$\\foo$' dog"
    hist = pd.DataFrame({'epoch': [0, 1], 'train_loss': [1., .5], 'valid_loss': [1., .6], lbl: [.5, .9]})
    fig = curve_figure(hist)
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == [lbl]
    assert fig_uri(fig).startswith('data:image/png')
    d = tmp_path/'data'
    for c in [lbl, 'cat']: (d/c).mkdir(parents=True); Image.new('RGB', (40, 40)).save(d/c/'a.jpg')
    page = write_report(tmp_path/'out', dataset=dataset_counts(d), history=hist).read_text()
    assert "&#x27;$\\foo$&#x27; dog" in page

def _many_classes(d:Path, n:int=60, label_len:int=150)->Path:
    "A dataset of `n` classes with one 32-px train and one test image each, named with long labels."
    import numpy as np
    rng = np.random.default_rng(0)
    for i in range(n):
        for split in ('train', 'test'):
            f = d/split/f"class {i:02d} {'x'*label_len}"; f.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(f/'a.png')
    return d

def test_report_of_many_classes(tmp_path):
    "60 classes (trained 1 epoch at 32 px): the most confused pairs replace the 3600-cell grid, and every figure stays small."
    from fastpipes.pipeline import train_run
    data = _many_classes(tmp_path/'data')
    learn, metrics = train_run(data, tmp_path/'run', size=32, bs=64, arch='resnet18', pretrained=False, epochs=1, aug=False, quiet=True)
    pngs = {p.name: Image.open(p).size for p in (tmp_path/'run').glob('*.png')}
    assert 'most_confused_classes.png' in pngs and 'confusion_matrix.png' not in pngs, pngs
    assert {'top_losses.png', 'class_activation_maps.png', 'training_curve.png'} <= set(pngs)
    assert all(w <= 1600 and h <= 1600 for w, h in pngs.values()), pngs   # 16 inches at 100 dpi, long labels and all
    page = (tmp_path/'run'/'report.html').read_text()
    assert 'Most confused classes' in page and 'the 30 lowest of 60' in page   # per-class accuracy: the 30 lowest, the rest in metrics.json
    assert len(metrics['per_class']) == 60
