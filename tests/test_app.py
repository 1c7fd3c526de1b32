"""The local app in a real browser: headless Chromium (Debian's, as `.ci/run` installs it), driven by Playwright,
opens the app served on 127.0.0.1, uploads an image, reads the label and sees a CAM image with a non-zero natural
size; in the Review tab it waits for the view to be read (the status line says so), selects an image, marks it for
deletion and applies the mark (the file moves on disk)."""
import socket, tempfile
from pathlib import Path
import pytest
from fastpipes.core import read_manifest
from fastpipes.synth import make_marks
from fastpipes.data import image_dls
from fastpipes.train import train_classifier, save_classifier

from test_report import CHROMIUM_FLAGS, chromium_path   # one way to find and start Chromium, shared with the report's test

@pytest.fixture
def run(tmp_path):
    make_marks(tmp_path/'data', n_train=8, n_test=4, size=48, seed=7)
    dls = image_dls(tmp_path/'data', size=32, bs=8, aug=False, num_workers=0)
    save_classifier(train_classifier(dls, 'resnet18', epochs=1, pretrained=False, quiet=True, seed=0), tmp_path/'run'/'model')
    return tmp_path

def _free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def test_app_in_browser(run):
    exe = chromium_path()
    from playwright.sync_api import sync_playwright
    from fastpipes.app import launch_app
    port = _free_port()
    app = launch_app(run/'run', run/'data', port=port, block=False, quiet=True)
    errors, external = [], []
    try:
        with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=exe, headless=True, args=CHROMIUM_FLAGS,
                                                       viewport=dict(width=1280, height=1000))
            try:
                page = ctx.new_page()
                page.set_default_timeout(60_000)
                page.on('pageerror', lambda e: errors.append(str(e)))
                page.on('request', lambda r: r.url.startswith(('http://127.0.0.1', 'data:', 'blob:')) or external.append(r.url))
                page.goto(f'http://127.0.0.1:{port}/', wait_until='load')
                # classify: upload, read the label, see the CAM
                page.locator('#fp-image input[type=file]').set_input_files(str(run/'data'/'test'/'cross'/'cross_00001.jpg'))
                page.wait_for_function("(() => { const t = document.querySelector('#fp-label textarea, #fp-label input'); return t && t.value.length > 0 })()")
                label = page.eval_on_selector('#fp-label textarea, #fp-label input', 'e => e.value')
                assert label in ('circle', 'cross')
                page.wait_for_function("(() => { const i = document.querySelector('#fp-cam img'); return i && i.complete && i.naturalWidth > 0 })()")
                w, h = page.eval_on_selector('#fp-cam img', 'e => [e.naturalWidth, e.naturalHeight]')
                assert w > 0 and h > 0
                assert 'circle' in page.inner_text('#fp-probs') or 'cross' in page.inner_text('#fp-probs')
                # review: the tab reads its view as it is shown, and says so until the view is read
                page.get_by_role('tab', name='Review').click()
                page.wait_for_function("document.querySelector('#fp-rv-status').innerText.includes('16 images in this view')")
                assert page.locator('#fp-rv-gallery .thumbnail-item').count() == 12   # the first page, highest loss first
                # select the first image, mark it for deletion, apply
                page.locator('#fp-rv-gallery .thumbnail-item').first.click()
                page.wait_for_function("document.querySelector('#fp-rv-key textarea, #fp-rv-key input').value.length > 0")
                key = page.eval_on_selector('#fp-rv-key textarea, #fp-rv-key input', 'e => e.value')
                assert (run/'data'/key).is_file()
                page.locator('#fp-rv-action').get_by_text('delete', exact=True).click()
                page.locator('#fp-rv-mark').click()
                page.wait_for_function("document.querySelector('#fp-rv-status').innerText.includes('1 image(s) marked')")
                page.locator('#fp-rv-apply').click()
                page.wait_for_function("document.querySelector('#fp-rv-status').innerText.includes('Applied 1 change')")
            finally: ctx.close()
    finally: app.close()
    assert not errors, errors
    assert not external, external    # nothing fetched from outside the loopback app
    assert not (run/'data'/key).exists() and (run/'data'/'rejected'/'reviewed'/Path(key).name).is_file()
    row, = [r for r in read_manifest(run/'data') if r['reason'] == 'reviewed']
    assert row['file'] == f'rejected/reviewed/{Path(key).name}' and row['status'] == 'rejected'
