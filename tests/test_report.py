"""The report in a real browser: headless Chromium opens `report.html` from a file, logs no console errors, and every
image has a non-zero natural size. Driven through the DevTools protocol by Playwright (the Python package only:
it uses Debian's `/usr/bin/chromium`, never a downloaded browser)."""
import os, shutil, tempfile
from pathlib import Path
import pytest
from PIL import Image

CHROMIUM_FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
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
