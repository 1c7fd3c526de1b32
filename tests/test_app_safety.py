"""The local app under attack and at its edges, over raw HTTP to the loopback server: another `Host` (DNS rebinding)
or another site's `Origin` reaches nothing (no mark, no apply, no CAM overlay, no CORS echo) while the app's own
address works; its temporary files live in a private folder removed on close; a port in use, Ctrl-C, SIGTERM and a
decompression bomb end in one sentence or exit 130; building it reads no image of the dataset."""
import json, os, signal, socket, stat, struct, subprocess, sys, tempfile, threading, time, zlib
from pathlib import Path
import httpx, pytest
from fastpipes.core import FastpipesError
from test_review import tiny_run

TIMEOUT = 120   # seconds any one wait of these tests may take

@pytest.fixture(scope='module')
def trained(tmp_path_factory): return tiny_run(tmp_path_factory.mktemp('app'), n_train=8, n_test=4, seed=7)

@pytest.fixture
def run(trained, tmp_path):
    "A fresh copy of the run and its dataset (the tests move files)."
    import shutil
    shutil.copytree(trained/'data', tmp_path/'data'); shutil.copytree(trained/'run', tmp_path/'run')
    return tmp_path

def _free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def _wait_http(url:str, proc=None):
    "Wait (bounded) until `url` answers 200."
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and (proc is None or proc.poll() is None):
        try:
            if httpx.get(url, timeout=5).status_code == 200: return True
        except httpx.HTTPError: time.sleep(0.2)
    return False

def call(base:str, api:str, data:list, headers:dict|None=None):
    "Gradio's REST API: POST `/gradio_api/call/<api>`, then read the event stream; `(status, response headers, result)`."
    with httpx.Client(timeout=TIMEOUT) as c:
        r = c.post(f'{base}gradio_api/call/{api}', json={'data': data}, headers=headers or {})
        if r.status_code != 200: return r.status_code, r.headers, r.text
        event = r.json()['event_id']
        with c.stream('GET', f'{base}gradio_api/call/{api}/{event}', headers=headers or {}) as s:
            kind = None
            for line in s.iter_lines():   # ends when the server closes the stream
                if line.startswith('event:'): kind = line[6:].strip()
                elif line.startswith('data:') and kind in ('complete', 'error'):
                    return s.status_code, r.headers, (kind, json.loads(line[5:]) if kind == 'complete' else line[5:].strip())
    return r.status_code, r.headers, None

def _acao(h): return {k: v for k, v in h.items() if k.lower().startswith('access-control-allow-origin')}

def test_foreign_host_or_origin_reaches_nothing(run):
    from fastpipes.app import launch_app
    port = _free_port()
    app = launch_app(run/'run', run/'data', port=port, block=False, quiet=True)
    base, key = f'http://127.0.0.1:{port}/', 'train/cross/cross_00000.jpg'
    view = ['(all)', 'train', 1]
    evil = {'Host': f'evil.example:{port}', 'Origin': f'http://evil.example:{port}'}
    try:
        # DNS rebinding: the page of evil.example, now resolving to 127.0.0.1, marks and applies
        for api, data in [('mark', [key, 'delete', 'circle', *view]), ('apply', view)]:
            status, headers, res = call(base, api, data, evil)
            assert status == 421 and not _acao(headers) and res.startswith('This app answers only at'), (api, status, res)
        pre = httpx.options(f'{base}gradio_api/queue/join', headers={**evil, 'Access-Control-Request-Method': 'POST'})
        assert pre.status_code == 421 and not _acao(pre.headers)
        assert httpx.get(base, headers=evil).status_code == 421
        # another site's page posting to the app's real address
        status, headers, res = call(base, 'mark', [key, 'delete', 'circle', *view], {'Origin': 'https://evil.example'})
        assert status == 403 and not _acao(headers)
        status, _, _ = call(base, 'apply', view, {'Referer': 'https://evil.example/page'})
        assert status == 403
        assert (run/'data'/key).is_file() and not (run/'data'/'rejected').exists()   # nothing moved
        # the app's own page does the same and it works: a mark returns the page's CAM overlays ...
        own = {'Origin': f'http://127.0.0.1:{port}', 'Referer': base}
        status, _, (kind, out) = call(base, 'mark', [key, 'delete', 'circle', *view], own)
        assert (status, kind) == (200, 'complete'), out
        urls = [g['image']['url'] for g in out[0]]
        assert urls and all('/gradio_api/file=' in u for u in urls)
        u = urls[0].replace(f'http://127.0.0.1:{port}/', base) if urls[0].startswith('http') else base + urls[0].lstrip('/')
        assert httpx.get(u).status_code == 200
        # ... which a foreign host cannot read
        r = httpx.get(u, headers={'Host': f'evil.example:{port}'})
        assert r.status_code == 421 and not r.content.startswith(b'\x89PNG') and not r.content.startswith(b'RIFF')
        for h in ('localhost', '[::1]'): assert httpx.get(base, headers={'Host': f'{h}:{port}'}).status_code == 200
        status, _, (kind, out) = call(base, 'apply', view, own)
        assert kind == 'complete' and not (run/'data'/key).exists() and (run/'data'/'rejected'/'reviewed'/Path(key).name).is_file()
        # gradio_client (no Origin: not a web page) is served
        from gradio_client import Client
        Client(base, verbose=False).predict(*view, api_name='/undo')
        assert (run/'data'/key).is_file()
    finally: app.close()

def test_temporary_files_private_and_removed(run, monkeypatch, tmp_path):
    "Gradio's uploads and overlays go to a folder only this user reads (0700), removed on close; nothing in the shared temp folder."
    shared = tmp_path/'shared-tmp'; shared.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(shared))   # the system's temp folder, for this test
    monkeypatch.delenv('GRADIO_TEMP_DIR', raising=False)
    from gradio_client import Client, handle_file
    from fastpipes.app import launch_app
    app = launch_app(run/'run', run/'data', port=_free_port(), block=False, quiet=True)
    try:
        base = f'http://127.0.0.1:{app.port}/'
        upload = tmp_path/'my-private-upload.jpg'
        upload.write_bytes((run/'data'/'test'/'cross'/'cross_00001.jpg').read_bytes())
        client = Client(base, verbose=False, download_files=False)   # the client's own downloads are not the app's
        label, _, _ = client.predict(handle_file(str(upload)), api_name='/classify')
        assert label in ('circle', 'cross')
        tmp = Path(app.tmp)
        assert stat.S_IMODE(tmp.stat().st_mode) == 0o700 and tmp.parent == shared
        files = [p for p in tmp.rglob('*') if p.is_file()]
        assert any(p.name == upload.name for p in files) and len(files) >= 3   # the upload, its overlay, the examples
    finally: app.close()
    assert not tmp.exists()
    left = [p for p in shared.rglob('*')]
    assert left == [], left
    assert os.environ.get('GRADIO_TEMP_DIR') is None

def _png_header(w:int, h:int, rows:int=0, mode:str='L')->bytes:
    "A PNG of `w`×`h` pixels (grey) whose first `rows` rows are present (zlib-streamed, so a huge image is small)."
    def chunk(t, b): return struct.pack('>I', len(b)) + t + b + struct.pack('>I', zlib.crc32(t + b) & 0xffffffff)
    z, row, body = zlib.compressobj(9), b'\0' * (w + 1), b''
    for _ in range(rows): body += z.compress(row)
    body += z.flush()
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 0, 0, 0, 0)) + chunk(b'IDAT', body) + chunk(b'IEND', b'')

@pytest.mark.parametrize('side,rows', [(20000, 0), (12000, 12000)])
def test_pixel_cap_through_the_app(run, tmp_path, monkeypatch, side, rows):
    "A 20000×20000 header (PIL's own bomb limit) and a real 12000×12000 grey PNG: the pixel cap's one sentence, and never decoded."
    from PIL import ImageFile
    from fastpipes.core import MAX_PIXELS
    decoded, load = [], ImageFile.ImageFile.load
    def spy(self):   # the server runs in this process: any decode of an image over the cap is seen here
        if self.size[0]*self.size[1] > MAX_PIXELS: decoded.append(self.size)
        return load(self)
    monkeypatch.setattr(ImageFile.ImageFile, 'load', spy)
    from gradio_client import Client, handle_file
    from gradio_client.exceptions import AppError
    from fastpipes.app import launch_app
    fn = tmp_path/f'big{side}.png'; fn.write_bytes(_png_header(side, side, rows))
    port = _free_port()
    app = launch_app(run/'run', run/'data', port=port, block=False, quiet=True)
    try:
        with pytest.raises(AppError) as e: Client(f'http://127.0.0.1:{port}/', verbose=False).predict(handle_file(str(fn)), api_name='/classify')
    finally: app.close()
    msg = str(e.value)
    assert 'megapixels fastpipes decodes' in msg and len(msg.splitlines()) == 1, msg
    assert decoded == [], decoded   # Gradio's preprocessing (a grey image converted to RGB) did not decode it either

def test_port_in_use_one_sentence(run, capsys):
    from fastpipes.cli import main
    from fastpipes.app import launch_app
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen(1); port = s.getsockname()[1]
        assert main(['app', str(run/'run'), '--port', str(port), '--quiet']) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"fastpipes: error: Port {port} on 127.0.0.1 is in use; pass --port with a free port (port= in Python), or stop what uses it."]
        with pytest.raises(FastpipesError, match=f'Port {port} on 127.0.0.1 is in use'): launch_app(run/'run', port=port, block=False)

def _interrupt_when_up(port:int, sig:int, ready=None):
    "A thread that sends `sig` to this process once the app on `port` answers (and `ready()` holds), bounded in time."
    def go():
        if _wait_http(f'http://127.0.0.1:{port}/'):
            deadline = time.monotonic() + TIMEOUT
            while ready is not None and not ready() and time.monotonic() < deadline: time.sleep(0.05)
            os.kill(os.getpid(), sig)
    t = threading.Thread(target=go, daemon=True); t.start()
    return t

@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason='signals reach the main thread only')
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_and_sigterm_exit_130(run, capsys, sig, monkeypatch, tmp_path):
    "`fastpipes app` serving (in this process): Ctrl-C or SIGTERM closes it, removes its files and exits 130."
    from fastpipes.cli import main
    shared = tmp_path/'shared-tmp'; shared.mkdir()
    monkeypatch.setattr(tempfile, 'tempdir', str(shared))
    port = _free_port()
    before = signal.getsignal(signal.SIGTERM)
    t = _interrupt_when_up(port, sig, ready=lambda: signal.getsignal(signal.SIGTERM) is not before)   # the app's own handler is in
    assert main(['app', str(run/'run'), '--port', str(port), '--quiet']) == 130
    t.join(TIMEOUT)
    assert 'fastpipes: stopped.' in capsys.readouterr().err   # the app has nothing to resume
    assert signal.getsignal(signal.SIGTERM) is before          # the handler is put back
    assert list(shared.iterdir()) == []                        # the app's files are gone
    with pytest.raises(httpx.HTTPError): httpx.get(f'http://127.0.0.1:{port}/', timeout=5)   # and it serves no more

@pytest.mark.slow
@pytest.mark.parametrize('sig', [signal.SIGINT, signal.SIGTERM])
def test_app_process_exit_130(run, tmp_path, sig):
    "The command in its own process, as a user runs it: Ctrl-C (SIGINT) or SIGTERM exits 130 and leaves no temporary files."
    shared = tmp_path/'shared-tmp'; shared.mkdir()
    port = _free_port()
    env = {**os.environ, 'TMPDIR': str(shared), 'PYTHONPATH': os.pathsep.join(sys.path)}
    env.pop('GRADIO_TEMP_DIR', None)
    p = subprocess.Popen([sys.executable, '-m', 'fastpipes.cli', 'app', str(run/'run'), '--port', str(port)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert _wait_http(f'http://127.0.0.1:{port}/', p), 'the app did not answer'
        p.send_signal(sig)
        out, _ = p.communicate(timeout=TIMEOUT)
    finally:
        if p.poll() is None: p.kill(); p.communicate()
    assert p.returncode == 130, out
    assert f'http://127.0.0.1:{port}/' in out and 'fastpipes: stopped.' in out
    assert list(shared.iterdir()) == [], list(shared.rglob('*'))

def test_app_reads_no_image_before_it_serves(run, monkeypatch):
    "Building the app (and serving its page) decodes no image of the dataset; the Review tab reads them as its pages are shown."
    import fastpipes.review as rv
    reads = []
    real = rv.load_image
    monkeypatch.setattr(rv, 'load_image', lambda fn, *a, **k: reads.append(fn) or real(fn, *a, **k))
    from fastpipes.app import build_app
    demo = build_app(run/'run', run/'data')
    assert reads == [] and demo.review.progress() == (0, 24)
    its = demo.review.page('cross', 'test', 0, 4)
    assert len(its) == 4 and demo.review.progress() == (4, 24)   # only that view was read
