"Download, search and crawl against a loopback server and a fake `ddgs`: hostile bodies, limits, resume after SIGKILL."
import errno, io, json, os, signal, socket, struct, subprocess, sys, threading, time, zlib
from pathlib import Path

import pytest
from PIL import Image

import fastpipes.crawl as fc
import fastpipes.net as fn
from fastpipes.core import LOCK, OUTPUT_DIRS, FastpipesError, ManifestWriter, inside, read_manifest, sha256_file
from fastpipes.core import short_hash
from fastpipes.crawl import crawl_images, download_images, search_images
from fastpipes.serve import LoopbackProxy, LoopbackServer, Route

ROOT = Path(__file__).resolve().parent.parent
CAP = 256 << 10  # a small size cap keeps the endless body test fast
META = ('manifest.jsonl', LOCK)  # the files fastpipes keeps beside the images
FAST = dict(connect_timeout=1, read_timeout=1, deadline=2.5, max_bytes=CAP, allow_private=True, quiet=True)

PROXY_VARS = [v for k in ('http', 'https', 'all', 'no') for v in (f'{k}_proxy', f'{k.upper()}_PROXY')]

@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    "Tests talk to loopback servers directly, whatever proxies the machine running them sets."
    for v in PROXY_VARS: monkeypatch.delenv(v, raising=False)

# ---------------------------------------------------------------- payloads

def enc(im, fmt, **kw):
    b = io.BytesIO(); im.save(b, fmt, **kw); return b.getvalue()

def photo(seed, size=(64, 48)):
    "A small noisy RGB photo, different per seed."
    im = Image.effect_noise(size, 40 + seed).convert('RGB')
    return enc(Image.merge('RGB', [im.getchannel(0).point(lambda v: (v + 37*seed) % 256), im.getchannel(1), im.getchannel(2)]), 'JPEG')

def bomb_png(w=100_000, h=100_000):
    "A tiny PNG whose header claims `w`×`h` pixels."
    def chunk(kind, data): return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) + \
        chunk(b'IDAT', zlib.compress(b'\0' * 64)) + chunk(b'IEND', b'')

def palette_png():
    im = Image.new('P', (32, 32)); im.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    im.paste(1, (8, 8, 24, 24)); im.info['transparency'] = 0
    return enc(im, 'PNG', transparency=0)

def animated_gif():
    frames = [Image.new('P', (20, 20), i) for i in range(3)]
    return enc(frames[0], 'GIF', save_all=True, append_images=frames[1:], duration=50, loop=0)

JPG = photo(0)
PNG_RGB = enc(Image.new('RGB', (30, 20), 'red'), 'PNG')
# path → (route, expected status, expected reason start or file extension)
CASES = {
    '/photo.jpg': (JPG, 'ok', '.jpg'),
    '/duplicate.jpg': (JPG, 'ok', '.jpg'),
    '/png-named.jpg': (PNG_RGB, 'ok', '.png'),
    '/palette.png': (palette_png(), 'ok', '.png'),
    '/cmyk.jpg': (enc(Image.new('CMYK', (24, 24), (0, 255, 0, 0)), 'JPEG'), 'ok', '.jpg'),
    '/la.png': (enc(Image.new('LA', (24, 24), (128, 100)), 'PNG'), 'ok', '.png'),
    '/animated.gif': (animated_gif(), 'ok', '.gif'),
    '/photo.webp': (enc(Image.new('RGB', (26, 22), 'blue'), 'WEBP'), 'ok', '.webp'),
    '/tiny.jpg': (enc(Image.new('RGB', (4, 4)), 'JPEG'), 'ok', '.jpg'),
    '/truncated.jpg': (photo(1)[:300], 'ok', '.jpg'),      # decodes badly: the cleaning stage rejects it
    '/bomb.png': (bomb_png(), 'ok', '.png'),                # measured from its header; cleaning rejects it
    '/html.jpg': (Route(b'<!DOCTYPE html><html><body>Forbidden</body></html>'), 'error', 'not an image: HTML (served as image/jpeg)'),
    '/logo.svg': (Route(b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg"></svg>', content_type='image/svg+xml'), 'error', 'not an image: SVG'),
    '/empty.jpg': (Route(b''), 'error', 'empty body'),
    '/junk.jpg': (Route(b'\x00\x01garbage' * 10), 'error', 'not an image: unknown format'),
    '/missing.jpg': (Route(b'gone', 404, 'text/plain'), 'error', 'http 404'),
    '/broken.jpg': (Route(b'oops', 500, 'text/plain'), 'error', 'http 500'),
    '/hang.jpg': (Route(hang=True), 'error', 'timed out: no data for 1 s'),
    '/trickle.jpg': (Route(photo(2), chunk=64, chunk_delay=0.25), 'error', 'took longer than the 2.5 s deadline'),
    '/slow-headers.jpg': (Route(JPG, header_delay=0.3), 'error', 'took longer than the 2.5 s deadline'),  # the watchdog's case
    '/loop-a': (Route(status=302, redirect='/loop-b'), 'error', 'more than 5 redirects'),
    '/loop-b': (Route(status=302, redirect='/loop-a'), 'error', 'more than 5 redirects'),
    '/to-ftp': (Route(status=301, redirect='ftp://127.0.0.1/x.jpg'), 'error', "refused scheme 'ftp'"),
    '/no-location': (Route(status=302), 'error', 'http 302 redirect without a Location'),
    '/moved.jpg': (Route(status=307, redirect='/photo.jpg'), 'ok', '.jpg'),
    '/endless.jpg': (Route(JPG, endless=True), 'error', f'larger than the {CAP/2**20:g} MB cap'),
    '/claims-huge.jpg': (Route(JPG, length=10*CAP), 'error', f'larger than the {CAP/2**20:g} MB cap (Content-Length'),
    '/short.jpg': (Route(JPG, length=len(JPG) + 500), 'error', f'body ended early: {len(JPG)} of {len(JPG)+500} bytes'),
}

@pytest.fixture(scope='module')
def hostile(tmp_path_factory):
    "Every case downloaded once: (server hits, rows by path, dest)."
    dest = tmp_path_factory.mktemp('hostile')
    with LoopbackServer({p: r for p,(r,_,_) in CASES.items()}, hosts=2, hang_max=10) as srv:
        urls = [dict(url=srv.url(p, host=i % 2), label='things', split='train') for i,p in enumerate(CASES)]
        rows = download_images(urls, dest, **FAST)
        hits = dict(srv.hits)
    yield hits, {fc.urlsplit(r['url']).path: r for r in rows}, dest

@pytest.mark.parametrize('path', list(CASES))
def test_hostile_case(hostile, path):
    _, rows, dest = hostile
    _, status, expect = CASES[path]
    r = rows[path]
    assert r['status'] == status, r
    if status == 'ok':
        assert r['reason'] is None and r['file'].endswith(expect)
        fn = dest/r['file']
        assert fn.is_file() and fn.stat().st_size == r['bytes'] and sha256_file(fn) == r['sha256']
        assert fn.name == f"{short_hash(r['url'])}{expect}"
    else:
        assert r['reason'].startswith(expect), r['reason']
        assert r['file'] is None

def test_hostile_files(hostile):
    _, rows, dest = hostile
    files = [p for p in dest.rglob('*') if p.is_file() and p.name not in META]
    assert sorted(p.name for p in files) == sorted(Path(r['file']).name for r in rows.values() if r['status'] == 'ok')
    assert not list(dest.rglob('*.part'))
    assert max(p.stat().st_size for p in files) <= CAP
    m = {fc.urlsplit(r['url']).path: r for r in read_manifest(dest)}
    assert m == rows                                   # one manifest row per URL, the rows returned
    assert (m['/bomb.png']['width'], m['/bomb.png']['height']) == (100_000, 100_000)
    assert (m['/palette.png']['width'], m['/la.png']['height'], m['/photo.webp']['width']) == (32, 24, 26)
    assert m['/photo.jpg']['sha256'] == m['/duplicate.jpg']['sha256']   # exact duplicates are the cleaner's call

def test_redirect_loop_bounded(hostile):
    hits, _, _ = hostile
    assert hits['/loop-a'] + hits['/loop-b'] == 12    # two URLs, 6 requests each (the first and 5 redirects)

def test_no_part_file_over_cap_while_streaming(tmp_path):
    "Watch the folder while an endless body streams: no file ever passes the cap."
    biggest, stop = [0], threading.Event()
    def watch():
        while not stop.is_set():
            for p in tmp_path.rglob('*'):
                try: biggest[0] = max(biggest[0], p.stat().st_size if p.is_file() and p.name not in META else 0)
                except FileNotFoundError: pass
    with LoopbackServer({'/e.png': Route(PNG_RGB, endless=True, chunk=4096, chunk_delay=0.002)}) as srv:
        t = threading.Thread(target=watch); t.start()
        try: r, = download_images(srv.url('/e.png'), tmp_path, **dict(FAST, max_bytes=64 << 10, deadline=10))
        finally: stop.set(); t.join()
    assert r['reason'] == 'larger than the 0.0625 MB cap'
    assert 0 < biggest[0] <= 64 << 10
    assert not list(tmp_path.rglob('*.part'))

# ---------------------------------------------------------------- politeness and safety

def test_per_host_limit(tmp_path):
    with LoopbackServer(lambda p: Route(photo(int(p.strip('/').split('.')[0])), delay=0.15), hosts=2) as srv:
        urls = [srv.url(f'/{i}.jpg', host=i % 2) for i in range(24)]
        rows = download_images(urls, tmp_path, per_host=3, **FAST)
        assert rows.attrgot('status') == ['ok'] * 24
        assert set(srv.max_conns.values()) == {3}, srv.max_conns   # parallel, and never more than 3 per host
        assert srv.n_requests == 24

def test_private_refused(tmp_path):
    with LoopbackServer({'/a.jpg': JPG}) as srv:
        rows = download_images([srv.url('/a.jpg'), f'http://localhost:{srv.url().rsplit(":", 1)[1]}a.jpg'],
                               tmp_path, **dict(FAST, allow_private=False))
        assert srv.n_requests == 0
    assert all(r['status'] == 'error' and r['reason'].startswith('refused private/loopback/reserved address') for r in rows)
    assert not [p for p in tmp_path.rglob('*') if p.is_file() and p.name not in META]

def test_redirect_to_private_refused_at_the_hop(tmp_path, monkeypatch):
    "Every hop is checked: pretend 127.0.0.1 is public and 127.0.0.2 is not."
    monkeypatch.setattr(fn, '_public', lambda ip: ip == '127.0.0.1')
    with LoopbackServer({'/inner.jpg': JPG}, hosts=2) as srv:
        srv.routes['/outer.jpg'] = Route(status=302, redirect=srv.url('/inner.jpg', host=1))
        r, = download_images(srv.url('/outer.jpg'), tmp_path, **dict(FAST, allow_private=False))
        assert r['reason'].startswith('refused private/loopback/reserved address 127.0.0.2')
        assert srv.hits == {'/outer.jpg': 1}

def test_all_resolved_addresses_checked(monkeypatch):
    "A host that resolves to a public and a private address is refused."
    answer = [(2, 1, 6, '', ('93.184.216.34', 80)), (2, 1, 6, '', ('10.0.0.1', 80))]
    monkeypatch.setattr(fn.socket, 'getaddrinfo', lambda *a, **k: answer)
    with pytest.raises(fn.FetchError, match='10.0.0.1'): fn._check(fn._lookup('example.com', 80), 'example.com', False)

@pytest.mark.parametrize('bad', ['file:///etc/passwd', 'javascript:alert(1)', 'http:///nohost', 'http://127.0.0.1:99999/x', 'data:image/png;base64,AAAA'])
def test_bad_urls(tmp_path, bad):
    r, = download_images(bad, tmp_path, **FAST)
    assert r['status'] == 'error' and r['reason']

def test_bad_items(tmp_path):
    with pytest.raises(FastpipesError, match='url'): download_images([{'label': 'x'}], tmp_path, quiet=True)

# ---------------------------------------------------------------- resume

def test_rerun_skips_and_refetches_missing(tmp_path):
    with LoopbackServer({f'/{i}.jpg': photo(i) for i in range(6)}) as srv:
        urls = [srv.url(f'/{i}.jpg') for i in range(6)] + [srv.url('/none.jpg')]
        first = download_images(urls, tmp_path, **FAST)
        (tmp_path/first[0]['file']).unlink()
        again = download_images(urls, tmp_path, **FAST)
        assert again.attrgot('status') == ['ok'] + ['skipped'] * 5 + ['error']
        assert [srv.hits[f'/{i}.jpg'] for i in range(6)] == [2, 1, 1, 1, 1, 1]
        assert srv.hits['/none.jpg'] == 2                    # failures are tried again
    assert sorted(r['status'] for r in read_manifest(tmp_path)) == ['error'] + ['ok'] * 6

KILL_N, KILL_DELAY = 40, 0.15

def _kill_routes():
    return {f'/{i}.jpg': Route(photo(i), delay=KILL_DELAY) for i in range(KILL_N)}

def _child(urls_file, dest):
    return subprocess.Popen([sys.executable, '-c', (
        "import json, sys; from fastpipes.crawl import download_images; "
        "download_images(json.load(open(sys.argv[1])), sys.argv[2], per_host=2, num_workers=4, allow_private=True, quiet=True)"),
        str(urls_file), str(dest)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

def _state(dest):
    files = sorted((p.relative_to(dest).as_posix(), sha256_file(p)) for p in dest.rglob('*') if p.is_file() and p.name not in META)
    return files, sorted(json.dumps(r, sort_keys=True) for r in read_manifest(dest))

@pytest.mark.skipif(sys.platform == 'win32', reason='SIGKILL')
def test_sigkill_and_resume(tmp_path):
    a, b = tmp_path/'killed', tmp_path/'clean'
    with LoopbackServer(_kill_routes()) as srv:
        urls = [dict(url=srv.url(f'/{i}.jpg'), label='cat' if i % 2 else 'dog', split='train') for i in range(KILL_N)]
        (tmp_path/'urls.json').write_text(json.dumps(urls))
        p = _child(tmp_path/'urls.json', a)
        end = time.monotonic() + 60
        while time.monotonic() < end and p.poll() is None:
            if (a/'manifest.jsonl').exists() and len((a/'manifest.jsonl').read_bytes().splitlines()) >= KILL_N // 3: break
            time.sleep(0.02)
        assert p.poll() is None, p.communicate()
        os.kill(p.pid, signal.SIGKILL); p.wait()
        saved = {fc.urlsplit(r['url']).path for r in read_manifest(a) if r['status'] == 'ok'}
        assert 0 < len(saved) < KILL_N
        before = dict(srv.hits)
        rows = download_images(urls, a, per_host=2, allow_private=True, quiet=True)
        assert sum(r['status'] == 'skipped' for r in rows) == len(saved)
        assert all(srv.hits[p_] == before[p_] for p_ in saved)                   # saved URLs not fetched again
        assert all(srv.hits[f'/{i}.jpg'] >= 1 for i in range(KILL_N))
        download_images(urls, b, per_host=2, allow_private=True, quiet=True)    # an uninterrupted run
    assert not list(a.rglob('*.part'))
    assert _state(a) == _state(b)
    assert len(_state(a)[0]) == KILL_N

# ---------------------------------------------------------------- search

class FakeDDGS:
    "Pages of 100 results (230 distinct per query), failing `fail` times first with a rate limit."
    calls, fail, pages = [], 0, 3
    def images(self, query, max_results=None, page=1, **kw):
        from ddgs.exceptions import DDGSException, RatelimitException
        FakeDDGS.calls.append((query, page, kw))
        if FakeDDGS.fail: FakeDDGS.fail -= 1; raise RatelimitException('202 Ratelimit')
        if page > FakeDDGS.pages: raise DDGSException('No results found.')
        return [dict(image=f'https://img.example/{query}/{i % 230}.jpg', title=f'{query} {i}', url='https://page.example',
                     source='Bing', width=800, height=600, thumbnail='t') for i in range(100*(page-1), 100*page)]

@pytest.fixture
def fake_ddgs(monkeypatch):
    import ddgs
    FakeDDGS.calls, FakeDDGS.fail, FakeDDGS.pages = [], 0, 3
    monkeypatch.setattr(ddgs, 'DDGS', FakeDDGS)
    return FakeDDGS

def test_search_pages_and_dedups(fake_ddgs):
    res = search_images('cat', max_images=1000, region='uk-en', sleep=pytest.fail)
    assert [c[1] for c in fake_ddgs.calls] == [1, 2, 3, 4] and fake_ddgs.calls[0][2] == {'region': 'uk-en'}
    assert len(res) == 230 == len(set(res.attrgot('url')))
    assert res[5] == dict(url='https://img.example/cat/5.jpg', title='cat 5', page='https://page.example', source='Bing',
                          width=800, height=600, thumbnail='t', query='cat')

def test_search_stops_at_max(fake_ddgs):
    assert len(search_images('cat', max_images=120, sleep=pytest.fail)) == 120
    assert [c[1] for c in fake_ddgs.calls] == [1, 2]

def test_search_retries_with_backoff(fake_ddgs):
    waits = []
    fake_ddgs.fail = 3
    assert len(search_images('cat', max_images=50, backoff=0.5, sleep=waits.append)) == 50
    assert waits == [0.5, 1.0, 2.0]

def test_search_gives_up_keeping_partial(fake_ddgs, monkeypatch):
    from ddgs.exceptions import RatelimitException
    orig = FakeDDGS.images
    def images(self, query, page=1, **kw):
        if page >= 2: raise RatelimitException('202 Ratelimit')
        return orig(self, query, page=page, **kw)
    monkeypatch.setattr(FakeDDGS, 'images', images)
    waits = []
    with pytest.raises(FastpipesError, match='failed on page 2 after 4 attempts') as e:
        search_images('cat', max_images=500, retries=3, sleep=waits.append)
    assert waits == [1, 2, 4] and len(e.value.partial) == 100
    waits.clear()
    with pytest.raises(FastpipesError): search_images('cat', max_images=500, retries=50, max_wait=20, sleep=waits.append)
    assert waits == [1, 2, 4, 8] and sum(waits) <= 20                       # bounded in total time too

def test_search_other_errors_propagate(fake_ddgs, monkeypatch):
    monkeypatch.setattr(FakeDDGS, 'images', lambda self, *a, **k: 1/0)
    with pytest.raises(ZeroDivisionError): search_images('cat')

# ---------------------------------------------------------------- crawl

def test_crawl_course_flows(tmp_path, fake_ddgs, monkeypatch):
    "Search results point at a loopback server; train/test from different queries; test wins; pauses between searches."
    with LoopbackServer(lambda p: photo(sum(map(ord, p)) % 200), hosts=3) as srv:
        def images(self, query, max_results=None, page=1, **kw):
            fake_ddgs.calls.append((query, page, kw))
            if page > 1: return []
            key = query.split()[0]
            ids = range(10, 16) if query.endswith('photo') else range(0, 12)
            return [dict(image=srv.url('/both.jpg'), title=query)] + \
                   [dict(image=srv.url(f'/{key}/{i}.jpg', host=i % 3), title=query) for i in ids]
        monkeypatch.setattr(FakeDDGS, 'images', images)
        pauses = []
        monkeypatch.setattr(fc.time, 'sleep', pauses.append)
        rows = crawl_images({'iu': ['iu', 'iu kpop'], 'hynn': 'hynn'}, tmp_path, n_train=8, n_test=4,
                     test_classes={'iu': 'iu photo', 'hynn': 'hynn photo'}, pause=1.5, **FAST)
    assert pauses == [1.5] * 4                                               # 5 searches, a pause between each two
    m = read_manifest(tmp_path)
    assert len(m) == len({r['url'] for r in m}) == len(rows)
    ok = [r for r in m if r['status'] == 'ok']
    assert {(r['label'], r['split']) for r in ok} == {(l, s) for l in ('iu', 'hynn') for s in ('train', 'test')}
    count = lambda l, s: sum(r['label'] == l and r['split'] == s for r in ok)
    assert [count(l, s) for l in ('iu', 'hynn') for s in ('train', 'test')] == [8, 4, 8, 4]
    for r in ok:
        assert Path(r['file']).parts[:2] == (r['split'], r['label']) and inside(tmp_path/r['file'], tmp_path)
        if r['split'] == 'test': assert r['query'].endswith('photo')
    tests = {r['url'] for r in ok if r['split'] == 'test'}
    assert any('/iu/10.jpg' in u for u in tests) and not tests & {r['url'] for r in ok if r['split'] == 'train'}
    both, = [r for r in m if r['url'].endswith('/both.jpg')]
    assert both['status'] == 'skipped' and both['reason'] == "found for more than one label: 'hynn', 'iu'"
    assert (tmp_path/'test'/'hynn').is_dir()

def test_crawl_random_test_split(tmp_path, fake_ddgs, monkeypatch):
    "Folders per keyword; with n_test and no test queries the test part is a seeded random share of the results."
    with LoopbackServer(lambda p: photo(sum(map(ord, p)) % 200)) as srv:
        monkeypatch.setattr(FakeDDGS, 'images', lambda self, query, page=1, **kw:
                            [dict(image=srv.url(f'/{query}/{i}.jpg')) for i in range(10)] if page == 1 else [])
        crawl_images(['tiger', 'lion'], tmp_path/'a', n_train=10, pause=0, **FAST)
        crawl_images(['tiger', 'lion'], tmp_path/'b', n_train=6, n_test=3, pause=0, seed=1, **FAST)
    a, b = read_manifest(tmp_path/'a'), read_manifest(tmp_path/'b')
    assert {(r['label'], r['split']) for r in a} == {('tiger', 'train'), ('lion', 'train')} and len(a) == 20
    assert sorted(r['split'] for r in b if r['label'] == 'lion') == ['test'] * 3 + ['train'] * 6
    assert len({r['url'] for r in b}) == 18

def test_crawl_bad_classes(tmp_path):
    with pytest.raises(FastpipesError): crawl_images({}, tmp_path)
    with pytest.raises(FastpipesError, match='not one of the classes'): crawl_images({'a': 'a'}, tmp_path, test_classes={'b': 'b'})
    with pytest.raises(FastpipesError, match='no train queries'): crawl_images({'a': []}, tmp_path)

def test_crawl_resumes_after_search_failure(tmp_path, fake_ddgs, monkeypatch):
    "A rate limit on the second class stops the crawl; the re-run searches only what was not saved and downloads nothing twice."
    with LoopbackServer(lambda p: photo(sum(map(ord, p)) % 200)) as srv:
        broken = {'lion'}
        def images(self, query, max_results=None, page=1, **kw):
            from ddgs.exceptions import RatelimitException
            fake_ddgs.calls.append((query, page))
            if query in broken: raise RatelimitException('202 Ratelimit')
            return [dict(image=srv.url(f'/{query}/{i}.jpg')) for i in range(5)] if page == 1 else []
        monkeypatch.setattr(FakeDDGS, 'images', images)
        monkeypatch.setattr(fc.time, 'sleep', lambda s: None)
        with pytest.raises(FastpipesError, match="'lion' failed"): crawl_images(['tiger', 'lion'], tmp_path, n_train=5, **FAST)
        assert not list(tmp_path.rglob('*.jpg'))
        broken.clear(); fake_ddgs.calls.clear()
        rows = crawl_images(['tiger', 'lion'], tmp_path, n_train=5, **FAST)
        assert [q for q,_ in fake_ddgs.calls] == ['lion', 'lion']          # 'tiger' came from searches.json
        assert rows.attrgot('status') == ['ok'] * 10
        n = srv.n_requests
        assert crawl_images(['tiger', 'lion'], tmp_path, n_train=5, **FAST).attrgot('status') == ['skipped'] * 10
        assert srv.n_requests == n and len(fake_ddgs.calls) == 2

def test_download_bad_arguments(tmp_path):
    for kw in [dict(per_host=0), dict(num_workers=0), dict(max_bytes=-1), dict(deadline=0)]:
        with pytest.raises(FastpipesError): download_images(['http://x/a.jpg'], tmp_path, quiet=True, **kw)
    with pytest.raises(FastpipesError, match='n_train'): crawl_images(['a'], tmp_path, n_train=0, n_test=0)

# ---------------------------------------------------------------- https

@pytest.fixture(scope='module')
def certs(tmp_path_factory):
    "Self-signed certificates: one valid for localhost and 127.0.0.1, one for another name."
    import shutil
    if not shutil.which('openssl'): pytest.skip('needs the openssl command')
    d = tmp_path_factory.mktemp('certs')
    for name, san in [('good', 'DNS:localhost,IP:127.0.0.1'), ('other', 'DNS:other.example')]:
        subprocess.run(['openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', d/f'{name}.key', '-out',
                        d/f'{name}.pem', '-days', '2', '-subj', '/CN=fastpipes-test', '-addext', f'subjectAltName={san}'],
                       check=True, capture_output=True)
    return d

def _tls(certs, name):
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); ctx.load_cert_chain(certs/f'{name}.pem', certs/f'{name}.key')
    return ctx

def test_https_verified_through_the_checked_address(tmp_path, certs, monkeypatch):
    "HTTPS connects to the resolved address yet verifies the certificate against the host name."
    with LoopbackServer({'/a.jpg': JPG}, tls=_tls(certs, 'good')) as srv:
        port = srv.url().rsplit(':', 1)[1].strip('/')
        urls = [srv.url('/a.jpg'), f'https://localhost:{port}/a.jpg']
        rows = download_images(urls, tmp_path/'untrusted', **FAST)              # the system CAs do not know our cert
        assert all('CERTIFICATE_VERIFY_FAILED' in r['reason'] for r in rows), rows
        monkeypatch.setenv('SSL_CERT_FILE', str(certs/'good.pem'))
        rows = download_images(urls, tmp_path/'trusted', **FAST)
        assert rows.attrgot('status') == ['ok', 'ok'] and rows[0]['sha256'] == rows[1]['sha256']
        assert srv.hits['/a.jpg'] == 2

def test_https_wrong_host_name(tmp_path, certs, monkeypatch):
    monkeypatch.setenv('SSL_CERT_FILE', str(certs/'other.pem'))
    with LoopbackServer({'/a.jpg': JPG}, tls=_tls(certs, 'other')) as srv:
        r, = download_images(srv.url('/a.jpg'), tmp_path, **FAST)
        assert r['status'] == 'error' and 'CERTIFICATE_VERIFY_FAILED' in r['reason'] and 'mismatch' in r['reason'], r
        assert srv.n_requests == 0

def test_search_wait_budget_spans_pages(fake_ddgs, monkeypatch):
    "`max_wait` bounds the waiting of the whole search, not of each page."
    from ddgs.exceptions import RatelimitException
    orig, failed = FakeDDGS.images, set()
    def images(self, query, page=1, **kw):
        if page not in failed: failed.add(page); raise RatelimitException('202 Ratelimit')
        return orig(self, query, page=page, **kw)
    monkeypatch.setattr(FakeDDGS, 'images', images)
    waits = []
    with pytest.raises(FastpipesError, match='failed on page 3') as e:
        search_images('cat', max_images=500, backoff=1, max_wait=2.5, sleep=waits.append)
    assert waits == [1, 1] and len(e.value.partial) == 200

# ---------------------------------------------------------------- DNS and interruption

def test_slow_dns_bounded_and_cached(tmp_path, monkeypatch):
    "A resolver that never answers costs a URL its connect timeout, not the run; each host is looked up once."
    release, calls, real = threading.Event(), [], fn.socket.getaddrinfo
    def gai(host, port, *a, **k):
        calls.append(host)
        if host == 'stuck.example': release.wait(30)
        return real('127.0.0.1' if host == 'loop.example' else host, port, *a, **k)
    monkeypatch.setattr(fn.socket, 'getaddrinfo', gai)
    try:
        with LoopbackServer({f'/{i}.jpg': photo(i) for i in range(4)}) as srv:
            port = srv.url().rsplit(':', 1)[1].strip('/')
            urls = [f'http://stuck.example:{port}/{i}.jpg' for i in range(3)] + [f'http://loop.example:{port}/{i}.jpg' for i in range(4)]
            rows = download_images(urls, tmp_path, **dict(FAST, connect_timeout=0.3))
    finally: release.set()
    assert [r['status'] for r in rows] == ['error'] * 3 + ['ok'] * 4
    assert all(r['reason'] == "DNS lookup of 'stuck.example' took longer than 0.3 s" for r in rows[:3])
    assert sorted(h for h in calls if h.endswith('.example')) == ['loop.example', 'stuck.example']

def test_dns_failure_is_a_reason(tmp_path, monkeypatch):
    import socket
    def gai(host, *a, **k): raise socket.gaierror(-2, 'Name or service not known')
    monkeypatch.setattr(fn.socket, 'getaddrinfo', gai)
    r, = download_images('http://nowhere.invalid/a.jpg', tmp_path, **FAST)
    assert r['status'] == 'error' and r['reason'].startswith("cannot resolve host 'nowhere.invalid'")

@pytest.mark.skipif(sys.platform == 'win32', reason='SIGINT')
def test_ctrl_c_cuts_downloads_in_flight(tmp_path):
    "SIGINT while every download hangs: the run stops at once (not after its 60 s timeouts), keeps what it saved, leaves no `.part`."
    routes = {'/ok.jpg': JPG, **{f'/hang{i}.jpg': Route(JPG, chunk=100, chunk_delay=60) for i in range(4)}}
    with LoopbackServer(routes, hang_max=90) as srv:
        urls, ok_url = [dict(url=srv.url(p), label='x') for p in routes], srv.url('/ok.jpg')
        (tmp_path/'urls.json').write_text(json.dumps(urls))
        p = subprocess.Popen([sys.executable, '-c', (
            "import json, sys; from fastpipes.crawl import download_images; "
            "download_images(json.load(open(sys.argv[1])), sys.argv[2], read_timeout=60, deadline=120, allow_private=True, quiet=True)"),
            str(tmp_path/'urls.json'), str(tmp_path/'d')], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            end = time.monotonic() + 60
            while time.monotonic() < end and p.poll() is None and not (
                    sum(srv.hits.get(f'/hang{i}.jpg', 0) for i in range(4)) == 4 and list((tmp_path/'d').rglob('*.part'))):
                time.sleep(0.02)
            assert p.poll() is None, p.communicate()
            p.send_signal(signal.SIGINT)
            _, err = p.communicate(timeout=20)     # far less than the 60 s read timeout the downloads wait on
        finally:
            if p.poll() is None: p.kill(); p.wait()
    assert p.returncode != 0 and b'KeyboardInterrupt' in err, err[-2000:]
    assert not list((tmp_path/'d').rglob('*.part'))
    assert [r['url'] for r in read_manifest(tmp_path/'d')] == [ok_url]

# ---------------------------------------------------------------- keep-alive

def test_connections_kept_alive(tmp_path):
    "Many URLs on one host go over at most `per_host` connections."
    with LoopbackServer(lambda p: photo(int(p.strip('/').split('.')[0]))) as srv:
        rows = download_images([srv.url(f'/{i}.jpg') for i in range(20)], tmp_path, **dict(FAST, per_host=2))
        assert rows.attrgot('status') == ['ok'] * 20 and srv.n_requests == 20
        assert srv.n_conns['127.0.0.1'] <= 2, srv.n_conns

def test_kept_connection_closed_by_server(tmp_path):
    "A kept connection the server dropped meanwhile is replaced: no failure, no request lost or repeated."
    with LoopbackServer({'/a.jpg': Route(JPG, drop=True), '/b.png': PNG_RGB, '/c.jpg': Route(photo(3), drop=True), '/d.jpg': photo(4)}) as srv:
        rows = download_images([srv.url(p) for p in ['/a.jpg', '/b.png', '/c.jpg', '/d.jpg']], tmp_path, **dict(FAST, per_host=1, num_workers=1))
        assert rows.attrgot('status') == ['ok'] * 4, rows.attrgot('reason')
        assert dict(srv.hits) == {'/a.jpg': 1, '/b.png': 1, '/c.jpg': 1, '/d.jpg': 1}
        assert srv.n_conns['127.0.0.1'] == 3    # b reuses nothing (a was dropped), c reuses b's, d needs a new one

def test_tls_handshake_under_the_deadline(tmp_path):
    "A server that trickles its TLS handshake, one byte every 0.1 s, is cut at the deadline (httpx bounds a handshake by the connect timeout, 5 s here)."
    import socket
    srv, stop = socket.create_server(('127.0.0.1', 0)), threading.Event()
    def serve():
        c, _ = srv.accept()
        with c:
            c.sendall(b'\x16\x03\x03\x40\x00')      # a TLS record header announcing 16 KB
            for _ in range(100):                     # 10 s at most, then the server gives up
                if stop.wait(0.1): return
                try: c.sendall(b'\x00')
                except OSError: return
    t = threading.Thread(target=serve, daemon=True); t.start()
    try: r, = download_images(f'https://127.0.0.1:{srv.getsockname()[1]}/a.jpg', tmp_path, **dict(FAST, connect_timeout=5, read_timeout=5, deadline=1.5))
    finally: stop.set(); t.join(5); srv.close()
    assert r['status'] == 'error' and r['reason'] == 'took longer than the 1.5 s deadline', r['reason']

def test_idle_connections_bounded(tmp_path):
    "Idle kept-alive connections are capped (by `num_workers`): with one worker and three hosts in turn, none survives."
    with LoopbackServer(lambda p: photo(int(p.strip('/').split('.')[0])), hosts=3) as srv:
        urls = [srv.url(f'/{i}.jpg', host=i % 3) for i in range(9)]
        rows = download_images(urls, tmp_path/'one', **dict(FAST, num_workers=1))
        assert rows.attrgot('status') == ['ok'] * 9 and sum(srv.n_conns.values()) == 9
        srv.n_conns.clear()
        rows = download_images(urls, tmp_path/'three', **dict(FAST, num_workers=3, per_host=1))
        assert rows.attrgot('status') == ['ok'] * 9 and sum(srv.n_conns.values()) == 3   # one per host, kept

def test_https_kept_alive(tmp_path, certs, monkeypatch):
    "HTTPS connections are reused too: one TLS handshake for many URLs on one host."
    monkeypatch.setenv('SSL_CERT_FILE', str(certs/'good.pem'))
    with LoopbackServer(lambda p: photo(int(p.strip('/').split('.')[0])), tls=_tls(certs, 'good')) as srv:
        rows = download_images([srv.url(f'/{i}.jpg') for i in range(8)], tmp_path, **dict(FAST, per_host=1))
        assert rows.attrgot('status') == ['ok'] * 8 and srv.n_requests == 8
        assert srv.n_conns['127.0.0.1'] == 1

def test_settled_urls_say_why(tmp_path):
    "URLs the cleaner rejected or the crawl skipped are not fetched again, and say why."
    from fastpipes.core import new_row, write_manifest
    with LoopbackServer({'/a.jpg': JPG, '/b.jpg': photo(5), '/c.jpg': photo(6)}) as srv:
        write_manifest(tmp_path, [new_row(url=srv.url('/a.jpg'), status='rejected', reason='near-duplicate', file='rejected/near-duplicate/x.jpg'),
                                  new_row(url=srv.url('/b.jpg'), status='skipped', reason="found for more than one label: 'a', 'b'")])
        rows = download_images([srv.url(p) for p in ['/a.jpg', '/b.jpg', '/c.jpg']], tmp_path, **FAST)
        assert srv.hits == {'/c.jpg': 1}
    assert rows.attrgot('reason') == ['rejected by an earlier run: near-duplicate',
                                      "skipped by an earlier run: found for more than one label: 'a', 'b'", None]

# ---------------------------------------------------------------- failures of one URL are that URL's row

def test_malformed_urls_from_a_file(tmp_path):
    "A URL that does not parse (the attack run's `http://[::1/x.jpg`) is its row; the good URLs around it are saved."
    with LoopbackServer({'/a.jpg': JPG, '/b.png': PNG_RGB}) as srv:
        bad = ['http://[::1/x.jpg', 'http://[fe80::1%zz/x.jpg', 'http://127.0.0.1:0x50/x.jpg', 'http://a b.example/x.jpg', 'http://\x00/x.jpg', 'https://[::1]:99999/']
        (tmp_path/'urls.txt').write_text('\n'.join([srv.url('/a.jpg'), *bad, srv.url('/b.png')]) + '\n')
        urls = [l for l in (tmp_path/'urls.txt').read_text().splitlines() if l.strip()]
        rows = download_images(urls, tmp_path/'d', **FAST)
    assert rows.attrgot('status') == ['ok'] + ['error'] * len(bad) + ['ok'], rows.attrgot('reason')
    assert rows[1]['reason'] == 'bad URL: Invalid IPv6 URL' and all(r['reason'] for r in rows[1:-1])
    assert len(read_manifest(tmp_path/'d')) == len(urls)

def test_malformed_urls_from_a_cached_search(tmp_path, monkeypatch):
    "A bad URL kept in `searches.json` no longer ends every later crawl."
    with LoopbackServer(lambda p: photo(len(p))) as srv:
        good = [dict(url=srv.url(f'/{i}.jpg'), query='cat') for i in range(3)]
        (tmp_path/'searches.json').write_text(json.dumps({'cat': dict(max_images=10, results=[dict(url='http://[::1/x.jpg', query='cat'), *good])}))
        rows = crawl_images(['cat'], tmp_path, n_train=4, search=lambda *a, **k: pytest.fail('searched again'), **FAST)
    assert sorted(rows.attrgot('status')) == ['error', 'ok', 'ok', 'ok']
    assert [r['reason'] for r in rows if r['status'] == 'error'] == ['bad URL: Invalid IPv6 URL']

def test_file_system_failure_is_a_row(tmp_path):
    "A label folder that cannot be made (a file has its name) fails that label's URLs only."
    (tmp_path/'train').mkdir(parents=True); (tmp_path/'train'/'blocked').write_text('a file')
    with LoopbackServer(lambda p: photo(len(p))) as srv:
        rows = download_images([dict(url=srv.url('/1.jpg'), label='blocked', split='train'),
                                dict(url=srv.url('/22.jpg'), label='fine', split='train')], tmp_path, **FAST)
    assert rows.attrgot('status') == ['error', 'ok']
    assert rows[0]['reason'].startswith(('FileExistsError', 'NotADirectoryError')), rows[0]['reason']

def test_part_link_not_followed(tmp_path):
    "A symlink planted at a `.part` path is removed, never written through: its target stays as it was."
    target = tmp_path/'precious.txt'; target.write_text('keep me')
    with LoopbackServer({'/a.jpg': JPG}) as srv:
        url = srv.url('/a.jpg')
        (tmp_path/'d'/'x').mkdir(parents=True)
        (tmp_path/'d'/'x'/f'{short_hash(url)}.part').symlink_to(target)
        r, = download_images(dict(url=url, label='x'), tmp_path/'d', **FAST)
    assert r['status'] == 'ok' and target.read_text() == 'keep me'
    assert (tmp_path/'d'/r['file']).read_bytes() == JPG and not list((tmp_path/'d').rglob('*.part'))

FD_CHILD = r'''
import json, resource, sys
resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))
from fastpipes.crawl import download_images
rows = download_images(json.load(open(sys.argv[1])), sys.argv[2], connect_timeout=2, read_timeout=2, deadline=5, allow_private=True, quiet=True)
print(json.dumps([[r['url'], r['status'], r['reason']] for r in rows]))
'''

def test_garbage_status_under_a_descriptor_limit(tmp_path):
    "Under 256 file descriptors: 300 garbage status lines and 100 failed TLS handshakes among 60 good URLs leak no socket: the 60 are saved."
    routes = {**{f'/g{i}.jpg': Route(raw=b'HTTP/1.1 ???\r\n\r\n') for i in range(300)}, **{f'/ok{i}.jpg': photo(i % 7) for i in range(60)}}
    with LoopbackServer(routes, hosts=4) as srv:
        urls = [srv.url(p, host=i % 4) for i,p in enumerate(routes)]
        urls += [srv.url(f'/tls{i}.jpg', host=i % 4).replace('http://', 'https://') for i in range(100)]   # TLS to a plain HTTP server
        (tmp_path/'urls.json').write_text(json.dumps(urls))
        p = subprocess.run([sys.executable, '-c', FD_CHILD, str(tmp_path/'urls.json'), str(tmp_path/'d')], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = json.loads(p.stdout.strip().splitlines()[-1])
    ok = [u for u,s,_ in rows if s == 'ok']
    assert len(ok) == 60 and all('/ok' in u for u in ok)
    assert not [why for _,s,why in rows if s != 'ok' and 'Too many open files' in why]
    assert all(why.startswith('RemoteProtocolError') for u,s,why in rows if '/g' in u), {why for u,s,why in rows if '/g' in u}
    assert all(why.startswith('ConnectError') for u,s,why in rows if '/tls' in u), {why for u,s,why in rows if '/tls' in u}

def test_per_host_waits_do_not_use_the_deadline(tmp_path):
    "12 URLs on one host, each served in 0.5 s, 2 at a time, 1.5 s deadline: the ones waiting their turn do not time out."
    with LoopbackServer(lambda p: Route(photo(int(p.strip('/').split('.')[0])), delay=0.5)) as srv:
        rows = download_images([srv.url(f'/{i}.jpg') for i in range(12)], tmp_path, **dict(FAST, per_host=2, deadline=1.5))
        assert rows.attrgot('status') == ['ok'] * 12, rows.attrgot('reason')
        assert srv.max_conns['127.0.0.1'] == 2

ESC = '\x1b]0;pwned\x07\x1b[2J'

def test_escape_sequences_in_reasons(tmp_path, capsys):
    "Status texts and headers with terminal escape sequences reach neither the terminal nor the manifest raw."
    routes = {'/esc.jpg': Route(b'', 403, reason=f'Nope{ESC}'), '/c1.jpg': Route(b'', 404, reason='Gone\x9b2J\x9b0m'),
              '/type.jpg': Route(b'<html>hi</html>', content_type='image/jpeg\x9b2J'), '/ok.jpg': JPG}
    with LoopbackServer(routes) as srv:
        rows = download_images([srv.url(p) for p in routes] + [f'http://{ESC}.example/a.jpg'], tmp_path, **dict(FAST, quiet=False))
    out = str(rows)   # the summary line (the CLI prints it)
    controls = lambda s: [c for c in s if ord(c) < 32 and c not in '\n' or 0x7f <= ord(c) < 0xa0]
    assert rows.attrgot('status') == ['error'] * 3 + ['ok', 'error']
    assert not controls(out) and 'failed' in out, repr(out)
    assert not [r['reason'] for r in read_manifest(tmp_path) if r['reason'] and controls(r['reason'])]
    assert '\\x9b' in rows[2]['reason'] and rows[2]['reason'].startswith('not an image: HTML (served as image/jpeg')

# ---------------------------------------------------------------- addresses

DENIED = ['0.1.2.3', '10.0.0.1', '100.64.1.1', '127.0.0.1', '169.254.169.254', '172.31.0.1', '192.0.0.170', '192.0.2.1',
          '192.88.99.1', '192.168.1.1', '198.18.0.1', '198.51.100.7', '203.0.113.9', '224.0.0.251', '240.0.0.1', '255.255.255.255',
          '::', '::1', '::127.0.0.1', '::ffff:127.0.0.1', '::ffff:10.0.0.1', '::ffff:0:a00:1', '64:ff9b::7f00:1', '64:ff9b::10.1.2.3',
          '64:ff9b:1::1', '2002:7f00:1::1', '2002:a00:1::', '2001::1', '2001:0:4136:e378:8000:63bf:3fff:fdd2', '2001:db8::1',
          '100::1', 'fc00::1', 'fd12:3456::1', 'fe80::1', 'fe80::1%1', 'fec0::1', 'ff02::1', '3fff::1', '5f00::1']
PUBLIC = ['8.8.8.8', '1.1.1.1', '93.184.216.34', '2606:4700:4700::1111', '2a00:1450:4001::200e', '::ffff:8.8.8.8',
          '64:ff9b::8.8.8.8', '2002:808:808::1']

@pytest.mark.parametrize('ip', DENIED)
def test_address_denied(ip): assert not fn._public(ip)

@pytest.mark.parametrize('ip', PUBLIC)
def test_address_public(ip): assert fn._public(ip)

def test_denied_whatever_python_says(monkeypatch):
    "The deny list holds even where Python's own tables call an address global."
    import ipaddress
    monkeypatch.setattr(ipaddress.IPv4Address, 'is_global', property(lambda self: True))
    monkeypatch.setattr(ipaddress.IPv6Address, 'is_global', property(lambda self: True))
    assert not [ip for ip in DENIED if fn._public(ip)]

# ---------------------------------------------------------------- proxies

def test_proxy_from_the_environment(tmp_path, monkeypatch):
    "HTTP_PROXY: the proxy sees every request; NO_PROXY covering the host: it sees none."
    with LoopbackServer(lambda p: photo(len(p)), hosts=2) as srv, LoopbackProxy() as proxy:
        urls = [srv.url(f'/{i}.jpg', host=i % 2) for i in range(6)]
        monkeypatch.setenv('HTTP_PROXY', proxy.url)
        rows = download_images(urls, tmp_path/'a', **FAST)
        assert rows.attrgot('status') == ['ok'] * 6 and sorted(t for _,t in proxy.requests) == sorted(urls)
        assert set(m for m,_ in proxy.requests) == {'GET'}
        proxy.requests.clear()
        monkeypatch.setenv('NO_PROXY', f'{srv.ip(0)},{srv.ip(1)}')
        rows = download_images(urls, tmp_path/'b', **FAST)
        assert rows.attrgot('status') == ['ok'] * 6 and proxy.requests == []
        monkeypatch.setenv('NO_PROXY', srv.ip(1))       # one host direct, the other through the proxy
        rows = download_images(urls, tmp_path/'c', **FAST)
        assert rows.attrgot('status') == ['ok'] * 6 and sorted(t for _,t in proxy.requests) == sorted(urls[0::2])

def test_https_through_a_proxy(tmp_path, certs, monkeypatch):
    "HTTPS goes through a CONNECT tunnel (ALL_PROXY or `proxy=`), the certificate still checked against the host name."
    monkeypatch.setenv('SSL_CERT_FILE', str(certs/'good.pem'))
    with LoopbackServer(lambda p: photo(len(p)), tls=_tls(certs, 'good')) as srv, LoopbackProxy() as proxy:
        urls = [srv.url(f'/{i}.jpg') for i in range(4)]
        monkeypatch.setenv('ALL_PROXY', proxy.url)
        rows = download_images(urls, tmp_path/'a', **FAST)
        assert rows.attrgot('status') == ['ok'] * 4, rows.attrgot('reason')
        assert proxy.requests and all(r == ('CONNECT', f'127.0.0.1:{srv.servers[0].server_address[1]}') for r in proxy.requests)
        monkeypatch.delenv('ALL_PROXY'); proxy.requests.clear()
        rows = download_images(urls, tmp_path/'b', **dict(FAST, proxy=proxy.url))
        assert rows.attrgot('status') == ['ok'] * 4 and proxy.requests
        monkeypatch.setenv('SSL_CERT_FILE', str(certs/'other.pem'))   # a tunnel does not skip verification
        r, = download_images(srv.url('/x.jpg'), tmp_path/'c', **dict(FAST, proxy=proxy.url))
        assert 'CERTIFICATE_VERIFY_FAILED' in r['reason']

def test_proxy_private_refused_before_sending(tmp_path, monkeypatch):
    "Through a proxy, a private address literal and a name that resolves here to one are refused before the proxy sees them."
    with LoopbackServer({'/a.jpg': JPG}) as srv, LoopbackProxy() as proxy:
        port = srv.url().rsplit(':', 1)[1].strip('/')
        rows = download_images([srv.url('/a.jpg'), f'http://localhost:{port}/a.jpg'], tmp_path, **dict(FAST, allow_private=False, proxy=proxy.url))
        assert all(r['reason'].startswith('refused private') for r in rows) and proxy.requests == []
        monkeypatch.setattr(fn, '_lookup', lambda host, port: (_ for _ in ()).throw(fn.FetchError('unknown here')))
        r, = download_images(f'http://only-the-proxy-knows.example:{port}/a.jpg', tmp_path, **dict(FAST, allow_private=False, proxy=proxy.url))
        assert proxy.requests == [('GET', f'http://only-the-proxy-knows.example:{port}/a.jpg')]   # unchecked: documented

def test_bad_proxy(tmp_path, monkeypatch):
    with pytest.raises(FastpipesError, match='proxy'): download_images('http://x/a.jpg', tmp_path, proxy='socks5://127.0.0.1:1', quiet=True)
    monkeypatch.setenv('ALL_PROXY', 'socks5://127.0.0.1:1')
    with pytest.raises(FastpipesError, match='proxy'): download_images('http://x/a.jpg', tmp_path, quiet=True)
    assert not (tmp_path/'manifest.jsonl').exists()

# ---------------------------------------------------------------- ddgs at its HTTP boundary

class FakeHttp:
    "Stands in for ddgs's HTTP client: a rate-limited DuckDuckGo `fail` times (no token in a 403 page), then a page of results."
    calls, proxies, fail = [], [], 0
    def __init__(self, proxy=None, timeout=None, verify=True):
        from types import SimpleNamespace
        FakeHttp.proxies.append(proxy); self.client = SimpleNamespace(headers_update=lambda h: None)
    def request(self, method, url, **kw):
        from ddgs.http_client import Response
        FakeHttp.calls.append(url)
        class R: pass
        r = R()
        if url == 'https://duckduckgo.com' and FakeHttp.fail:
            FakeHttp.fail -= 1; r.status_code, r.content, r.text = 403, b'<html>rate limited</html>', ''
        elif url == 'https://duckduckgo.com': r.status_code, r.content, r.text = 200, b'<script>vqd="4-123";</script>', ''
        else:
            page = int(kw.get('params', {}).get('s', 0)) // 100
            res = [dict(image=f'https://img.example/{page}/{i}.jpg', title='t', url='https://p.example', thumbnail='t', height=1, width=1, source='Bing') for i in range(100)]
            r.status_code, r.text = 200, json.dumps(dict(results=res if page < 2 else []))
            r.content = r.text.encode()
        return Response(r)

@pytest.fixture
def fake_http(monkeypatch):
    import ddgs.http_client
    FakeHttp.calls, FakeHttp.proxies, FakeHttp.fail = [], [], 0
    monkeypatch.setattr(ddgs.http_client.HttpClient, '__init__', FakeHttp.__init__)
    monkeypatch.setattr(ddgs.http_client.HttpClient, 'request', FakeHttp.request)
    return FakeHttp

def test_installed_ddgs_rate_limit_reaches_the_backoff(fake_http):
    "The installed ddgs, its HTTP replaced: a rate-limited DuckDuckGo raises, and the search waits and retries."
    fake_http.fail = 2
    waits = []
    res = search_images('cat', max_images=150, backoff=0.5, sleep=waits.append, proxy='http://proxy.example:3128', backend='duckduckgo')
    assert waits == [0.5, 1.0] and len(res) == 150
    assert set(fake_http.proxies) == {'http://proxy.example:3128'}

def test_search_proxy_from_the_environment(fake_http, monkeypatch):
    monkeypatch.setenv('HTTPS_PROXY', 'http://env-proxy.example:8080')
    search_images('cat', max_images=10, sleep=pytest.fail, backend='duckduckgo')
    assert set(fake_http.proxies) == {'http://env-proxy.example:8080'}
    fake_http.proxies.clear(); monkeypatch.setenv('NO_PROXY', 'duckduckgo.com')
    search_images('cat', max_images=10, sleep=pytest.fail, backend='duckduckgo')
    assert set(fake_http.proxies) == {None}

def test_crawl_passes_the_proxy_to_search(tmp_path, fake_ddgs, monkeypatch):
    seen = []
    def search(query, max_images, proxy=None): seen.append(proxy); return []
    crawl_images(['cat'], tmp_path, n_train=2, search=search, proxy='http://p.example:1', **dict(FAST, quiet=True))
    assert seen == ['http://p.example:1']

# ---------------------------------------------------------------- arguments, and one run per folder

@pytest.mark.parametrize('kw', [dict(pause=-1), dict(pause=float('nan')), dict(pause=float('inf')), dict(seed='x'), dict(n_train=2.5),
                                dict(per_host=0), dict(deadline=float('nan')), dict(read_timeout=-1), dict(max_redirects=-1),
                                dict(wait=-1), dict(proxy='ftp://x'), dict(num_workers=True), dict(no_such_option=1)])
def test_crawl_bad_arguments_before_any_search(tmp_path, kw):
    with pytest.raises(FastpipesError) as e:
        crawl_images(['cat'], tmp_path, **dict(dict(n_train=2, search=lambda *a, **k: pytest.fail('searched')), **kw))
    assert len(str(e.value).rstrip('.').split('. ')) == 1 and str(e.value).endswith('.')
    assert not (tmp_path/'searches.json').exists()

LOCK_CHILD = r'''
import json, sys
from fastpipes.crawl import download_images
try: rows = download_images(json.load(open(sys.argv[1])), sys.argv[2], wait=float(sys.argv[3]), per_host=2, allow_private=True, quiet=True)
except Exception as e: print(json.dumps(dict(error=f'{type(e).__name__}: {e}'))); sys.exit(0)
print(json.dumps(dict(ok=sum(r['status'] == 'ok' for r in rows))))
'''

def test_concurrent_runs_on_one_folder(tmp_path):
    "Two processes download into one folder: the second waits for the first, or says the folder is in use; no row is lost."
    # a's URLs are slow (0.3 s each, 1.5 s in all): c, a process started after a has begun, finds the folder in use
    def route(p):
        i = int(p.strip('/').split('.')[0])
        return Route(photo(i), delay=0.3 if i < 20 else 0.1)
    with LoopbackServer(route) as srv:
        for name, ids in [('a', range(0, 20)), ('b', range(20, 40)), ('c', range(40, 45))]:
            (tmp_path/f'{name}.json').write_text(json.dumps([srv.url(f'/{i}.jpg') for i in ids]))
        run = lambda name, wait: subprocess.Popen([sys.executable, '-c', LOCK_CHILD, str(tmp_path/f'{name}.json'), str(tmp_path/'d'), str(wait)],
                                                  cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        a = run('a', 0)
        end = time.monotonic() + 30
        while not (tmp_path/'d'/'manifest.jsonl').exists() and time.monotonic() < end: time.sleep(0.02)   # a holds the folder
        b, c = run('b', 60), run('c', 0)
        res = [json.loads(p.communicate(timeout=90)[0].strip().splitlines()[-1]) for p in (a, b, c)]
    assert res[0] == dict(ok=20) and res[1] == dict(ok=20), res
    assert res[2]['error'].startswith('FastpipesError: The folder') and 'in use' in res[2]['error'], res[2]
    m = read_manifest(tmp_path/'d')
    assert len(m) == 40 and all(r['status'] == 'ok' for r in m)
    assert len((tmp_path/'d'/'manifest.jsonl').read_text().splitlines()) == 40

def test_connects_to_the_checked_address(tmp_path, monkeypatch):
    "DNS rebinding: a name is looked up once per run and the connection goes to that checked address, never to a later answer."
    calls, real = [], fn.socket.getaddrinfo
    def gai(host, port, *a, **k):
        if host != 'rebind.example': return real(host, port, *a, **k)
        calls.append(host)
        return real('127.0.0.1' if len(calls) == 1 else '127.0.0.2', port, *a, **k)   # public first, private after
    monkeypatch.setattr(fn.socket, 'getaddrinfo', gai)
    monkeypatch.setattr(fn, '_public', lambda ip: ip == '127.0.0.1')
    with LoopbackServer(lambda p: photo(len(p)), hosts=2) as srv:
        port = srv.url().rsplit(':', 1)[1].strip('/')
        rows = download_images([f'http://rebind.example:{port}/{i}.jpg' for i in range(6)], tmp_path, **dict(FAST, allow_private=False, per_host=2))
        assert rows.attrgot('status') == ['ok'] * 6, rows.attrgot('reason')
        assert calls == ['rebind.example'] and set(srv.n_conns) == {'127.0.0.1'}

# ---------------------------------------------------------------- the asyncio network backend

def test_big_bodies_whole(tmp_path):
    "Bodies over 1 MB, written at once or trickled in 256 KB pieces, arrive whole (the buffer's flow control: `test_protocol_flow_control`)."
    big = enc(Image.effect_noise((1400, 1400), 60).convert('RGB'), 'JPEG', quality=98)
    assert len(big) > 1 << 20
    routes = {'/big.jpg': big, '/slow.jpg': Route(big, chunk=1 << 18, chunk_delay=0.01)}
    with LoopbackServer(routes) as srv:
        rows = download_images([srv.url(p) for p in routes], tmp_path, allow_private=True, quiet=True)
    assert rows.attrgot('status') == ['ok', 'ok'], rows.attrgot('reason')
    assert all((tmp_path/r['file']).read_bytes() == big and (r['width'], r['height']) == (1400, 1400) for r in rows)

class FakeTransport:
    "Records what a protocol asks of its transport."
    def __init__(self): self.calls = []
    def pause_reading(self): self.calls.append('pause')
    def resume_reading(self): self.calls.append('resume')
    def is_closing(self): return False

def test_protocol_flow_control():
    "More than 256 KB waiting pauses reading; reading it down to 64 KB resumes it; reads never exceed `max_bytes`."
    import asyncio
    async def go():
        t, p = FakeTransport(), fn._Protocol()
        p.connection_made(t)
        s = fn._AsyncioStream(t, p)
        for _ in range(5): p.data_received(bytes(64 << 10))   # 320 KB
        assert t.calls == ['pause']
        got = [len(await s.read(48 << 10)) for _ in range(8)]   # 48 KB, then the 16 KB left of a 64 KB chunk: 256 KB read
        assert t.calls == ['pause', 'resume'] and set(got) <= {48 << 10, 16 << 10}
        p.eof_received()
        rest = b''
        while b := await s.read(1 << 20): rest += b
        assert sum(got) + len(rest) == 320 << 10
        with pytest.raises(fn.httpcore.ReadTimeout):
            await fn._AsyncioStream(t, fn._Protocol()).read(10, timeout=0.05)
        p2 = fn._Protocol(); p2.connection_made(t); p2.connection_lost(ConnectionResetError('reset by peer'))
        with pytest.raises(fn.httpcore.ReadError, match='reset by peer'): await fn._AsyncioStream(t, p2).read(10)
    asyncio.run(go())

def test_budget_within_the_open_file_limit(monkeypatch):
    "Downloads at once and connections kept stay within the open-file limit: a socket and a file per download."
    import resource
    for soft, want in [(256, (85, 128)), (1024, (100, 200)), (9, (3, 4)), (resource.RLIM_INFINITY, (100, 200))]:
        monkeypatch.setattr(resource, 'getrlimit', lambda kind, soft=soft: (soft, soft))
        assert fn.Transport.budget(100) == want, soft

def test_same_host_redirects_keep_the_workers_connection(tmp_path):
    "A redirect to the same host goes over the worker's own kept-alive connection: 2 workers, 16 requests, 2 connections."
    routes = {**{f'/r{i}.jpg': Route(status=302, redirect=f'/p{i}.jpg') for i in range(8)}, **{f'/p{i}.jpg': photo(i) for i in range(8)}}
    with LoopbackServer(routes) as srv:
        rows = download_images([srv.url(f'/r{i}.jpg') for i in range(8)], tmp_path, **dict(FAST, per_host=2))
        assert rows.attrgot('status') == ['ok'] * 8, rows.attrgot('reason')
        assert srv.n_requests == 16 and srv.max_conns['127.0.0.1'] == 2 and srv.n_conns['127.0.0.1'] == 2, srv.n_conns

def test_tls_handshake_that_never_ends(tmp_path):
    "A server that accepts the connection but never answers the TLS hello: the URL fails after the connect timeout, its socket closed."
    import socket
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0)); s.listen(8)
        rows = download_images([f'https://127.0.0.1:{s.getsockname()[1]}/x.jpg'], tmp_path, **FAST)
        c, _ = s.accept(); c.settimeout(2)
        try:
            while c.recv(4096): pass   # the TLS hello, then the end: the client closed its side (a timeout here fails)
        except ConnectionResetError: pass
        c.close()
    assert rows[0]['status'] == 'error' and rows[0]['reason'] == 'connect timed out after 1 s', rows[0]['reason']

# ---------------------------------------------------------------- a desync, a full disk, reserved labels, politeness

def http(body:bytes, ctype:str='image/jpeg', headers:str='')->bytes:
    "One whole HTTP/1.1 response with `body`."
    return f'HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n{headers}\r\n'.encode() + body

class RawServer:
    "A loopback server on plain sockets: each request gets `answer(path)` as is, in one write; request heads are kept."
    def __init__(self, answer, host='127.0.0.1'):
        self.answer, self.heads, self.n_conns, self.host = answer, [], 0, host
        self.sock = socket.create_server((host, 0)); self.sock.settimeout(0.05)
        self.stop, self.threads = threading.Event(), []

    def url(self, path:str)->str: return f'http://{self.host}:{self.sock.getsockname()[1]}{path}'

    def __enter__(self):
        self.threads.append(threading.Thread(target=self.serve, daemon=True)); self.threads[0].start(); return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in list(self.threads): t.join(5)
        self.sock.close()

    def serve(self):
        while not self.stop.is_set():
            try: c, _ = self.sock.accept()
            except TimeoutError: continue
            self.n_conns += 1
            t = threading.Thread(target=self.talk, args=(c,), daemon=True); self.threads.append(t); t.start()

    def talk(self, c):
        c.settimeout(5)
        with c, c.makefile('rb') as f:
            try:
                while not self.stop.is_set():
                    head = []
                    while (line := f.readline(8192)) not in (b'\r\n', b'\n', b''):
                        head.append(line.decode('latin-1').strip())
                    if not head: return
                    self.heads.append(head)
                    c.sendall(self.answer(head[0].split()[1]))
            except OSError: return

SMUGGLED = photo(99)

def test_overlong_body_closes_the_connection(tmp_path):
    "A body longer than its Content-Length, a second response smuggled after it: the connection is not used again."
    imgs = {f'/{i}.jpg': photo(10 + i) for i in range(4)}
    with RawServer(lambda p: http(imgs[p]) + (http(SMUGGLED) if p == '/0.jpg' else b'')) as srv:
        rows = download_images([srv.url(p) for p in imgs], tmp_path, **dict(FAST, per_host=1, num_workers=1))
    assert rows.attrgot('status') == ['ok'] * 4, rows.attrgot('reason')
    which = {v: k for k,v in imgs.items()} | {SMUGGLED: 'smuggled'}
    assert [which[(tmp_path/r['file']).read_bytes()] for r in rows] == list(imgs)   # each URL its own image
    assert srv.n_conns == 2 and len(srv.heads) == 4

def test_overlong_body_closes_a_pooled_connection(tmp_path):
    "The same on the connection pool of a redirect's host: no later redirect to that host gets the smuggled image."
    imgs = {f'/{i}.jpg': photo(20 + i) for i in range(3)}
    with RawServer(lambda p: http(imgs[p]) + (http(SMUGGLED) if p == '/0.jpg' else b''), host='127.0.0.2') as raw, \
         LoopbackServer({f'/r{i}': Route(status=302, redirect=raw.url(f'/{i}.jpg')) for i in range(3)}) as srv:
        rows = download_images([srv.url(f'/r{i}') for i in range(3)], tmp_path, **dict(FAST, per_host=1, num_workers=1))
    assert rows.attrgot('status') == ['ok'] * 3, rows.attrgot('reason')
    which = {v: k for k,v in imgs.items()} | {SMUGGLED: 'smuggled'}
    assert [which[(tmp_path/r['file']).read_bytes()] for r in rows] == list(imgs)
    assert raw.n_conns == 2

class FullDisk:
    "A file that takes `room` more bytes (a list shared by several files), then writes what fits and raises ENOSPC."
    def __init__(self, f, room:list): self.f, self.room = f, room
    def write(self, b):
        if len(b) > self.room[0]:
            if self.room[0]: self.f.write(b[:self.room[0]]); self.room[0] = 0
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room[0] -= len(b); return self.f.write(b)
    def __getattr__(self, k): return getattr(self.f, k)
    def __enter__(self): return self
    def __exit__(self, *exc): self.f.close()

def full_manifest(monkeypatch, room:int):
    "The manifest's disk takes `room` more bytes."
    real, left = ManifestWriter.__enter__, [room]
    def enter(self):
        real(self); self.f = FullDisk(self.f, left); return self
    monkeypatch.setattr(ManifestWriter, '__enter__', enter)

def check_kept(dest:Path, before:bytes):
    "What the user had is still there: the earlier manifest bytes first, every line whole, each ok row's file intact."
    text = (dest/'manifest.jsonl').read_bytes()
    assert text.startswith(before) and text.endswith(b'\n')
    for r in map(json.loads, text.decode().splitlines()):
        if r['status'] == 'ok': assert sha256_file(dest/r['file']) == r['sha256']
    assert not list(dest.rglob('*.part'))

def test_full_disk_on_the_manifest(tmp_path, monkeypatch):
    "The manifest append that finds the disk full: one sentence naming the folder; nothing lost; a re-run finishes."
    with LoopbackServer(lambda p: photo(int(p.strip('/').split('.')[0]))) as srv:
        urls = [srv.url(f'/{i}.jpg') for i in range(12)]
        download_images(urls[:3], tmp_path, **FAST)
        before = (tmp_path/'manifest.jsonl').read_bytes()
        with monkeypatch.context() as m:
            full_manifest(m, room=len(before) // 3 * 2)   # two rows fit, the third is cut
            with pytest.raises(FastpipesError) as e: download_images(urls, tmp_path, **FAST)
        msg = str(e.value)
        assert msg.startswith('No space left on') and str(tmp_path) in msg and '\n' not in msg, msg
        check_kept(tmp_path, before)
        kept = len(read_manifest(tmp_path))
        assert kept > 3                                                     # the rows that fitted stay
        rows = download_images(urls, tmp_path, **FAST)
    assert sorted(rows.attrgot('status')) == ['ok'] * (12 - kept) + ['skipped'] * kept
    assert len(read_manifest(tmp_path)) == 12
    check_kept(tmp_path, b'')

def test_full_disk_on_an_image(tmp_path, monkeypatch):
    "An image write that finds the disk full stops the run with the same sentence, `.part` removed; a re-run finishes."
    real, left = fc._create, [3 * len(photo(1)) + 100]   # about three images fit
    monkeypatch.setattr(fc, '_create', lambda part: FullDisk(real(part), left))
    with LoopbackServer(lambda p: photo(int(p.strip('/').split('.')[0]))) as srv:
        urls = [srv.url(f'/{i}.jpg') for i in range(40)]
        with pytest.raises(FastpipesError) as e: download_images(urls, tmp_path, **FAST)
        msg = str(e.value)
        assert msg.startswith('No space left on') and str(tmp_path) in msg, msg
        check_kept(tmp_path, b'')
        assert all(r['status'] == 'ok' for r in read_manifest(tmp_path))   # no row says a URL failed for want of space
        monkeypatch.setattr(fc, '_create', real)
        rows = download_images(urls, tmp_path, **FAST)
    assert all(s in ('ok', 'skipped') for s in rows.attrgot('status')) and len(read_manifest(tmp_path)) == 40

def test_full_disk_cli_exits_2(tmp_path, monkeypatch, capsys):
    from fastpipes.cli import main
    with LoopbackServer(lambda p: photo(3)) as srv:
        (tmp_path/'urls.txt').write_text('\n'.join(srv.url(f'/{i}.jpg') for i in range(3)))
        full_manifest(monkeypatch, room=0)
        rc = main(['download', str(tmp_path/'urls.txt'), str(tmp_path/'d'), '--allow-private', '--quiet'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and 'No space left on' in err and len(err.splitlines()) == 1, err

def test_full_disk_on_the_search_cache(tmp_path, monkeypatch):
    "crawl's searches.json that finds the disk full: the same sentence, nothing downloaded."
    def full(fn, data): raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(fc, 'atomic_write', full)
    with pytest.raises(FastpipesError, match='No space left on'):
        crawl_images(['cat'], tmp_path, n_train=2, search=lambda q, max_images: [dict(url='http://127.0.0.1:9/a.jpg')], **FAST)
    assert not (tmp_path/'manifest.jsonl').exists()

@pytest.mark.parametrize('name', sorted(OUTPUT_DIRS))
def test_reserved_names_refused(tmp_path, name):
    "fastpipes' own folders are neither labels nor splits: refused before anything is fetched or written."
    with LoopbackServer({'/a.jpg': JPG}) as srv:
        for item in [dict(label=name, split='train'), dict(label='cat', split=name), dict(label=name)]:
            with pytest.raises(FastpipesError, match='reserved') as e:
                download_images(dict(url=srv.url('/a.jpg'), **item), tmp_path/'d', **FAST)
            assert '\n' not in str(e.value)
        with pytest.raises(FastpipesError, match='reserved'):
            crawl_images({name: 'x'}, tmp_path/'c', search=lambda *a, **k: pytest.fail('searched'), **FAST)
        assert srv.n_requests == 0
    assert not (tmp_path/'d').exists() and not (tmp_path/'c').exists()

def test_reserved_label_cli_exits_2(tmp_path, capsys):
    from fastpipes.cli import main
    (tmp_path/'urls.txt').write_text('http://127.0.0.1:9/a.jpg\n')
    rc = main(['download', str(tmp_path/'urls.txt'), str(tmp_path/'d'), '--label', 'models', '--quiet'])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "'models' is reserved" in err and len(err.splitlines()) == 1, err

UNPORTABLE = ['../../x', 'CON', 'a/b', 'a\\b', '', 'x' * 300, '..', '.', 'nul.txt', 'tab\there', 'new\nline', 'a"b',
              'why?', 'a:b', ' padded', 'dot.', '.hidden', 3,
              'circle""" if __import__("os").system("touch X") else """']   # issue 23's label that ran code in a Space
NOWHERE = 'http://127.0.0.1:9/a.jpg'   # never fetched: the items are refused first

@pytest.mark.parametrize('label', UNPORTABLE)
def test_unportable_labels_refused(tmp_path, label):
    "A label that cannot name a folder on every OS is refused where it enters, in one sentence, before any write."
    d, c, no_search = tmp_path/'d', tmp_path/'c', lambda *a, **k: pytest.fail('searched')
    with pytest.raises(FastpipesError) as e: download_images(dict(url=NOWHERE, label=label, split='train'), d)
    assert '\n' not in str(e.value) and 'label' in str(e.value), str(e.value)
    with pytest.raises(FastpipesError): download_images(dict(url=NOWHERE, label='cat', split=label), d)
    if isinstance(label, str):
        with pytest.raises(FastpipesError): crawl_images({label: 'x'}, c, search=no_search)
    assert not (tmp_path/'d').exists() and not (tmp_path/'c').exists()

def test_portable_labels_kept(tmp_path):
    labels = ['grizzly bear', 'Ünïcödé', '日本の猫', "o'brien", 'a-b_c (2)', 'x' * 64, 'test']
    with LoopbackServer(lambda p: photo(len(p))) as srv:
        items = [dict(url=srv.url(f'/{i}.jpg'), label=l, split='train') for i,l in enumerate(labels)]
        rows = download_images(items, tmp_path, **FAST)
    assert rows.attrgot('status') == ['ok'] * len(labels)
    assert [Path(r['file']).parts[:2] for r in rows] == [('train', l) for l in labels]

def test_labels_that_share_a_folder_refused(tmp_path):
    "Labels that differ only in case name one folder on Windows and macOS; a class folder beside a split is a split."
    two = lambda a, b: [dict(url=NOWHERE, **a), dict(url=NOWHERE + '?2', **b)]
    with pytest.raises(FastpipesError, match='case'):
        download_images(two(dict(label='Cat'), dict(label='cat')), tmp_path/'d')
    with pytest.raises(FastpipesError, match='split'): download_images(dict(url=NOWHERE, label='train'), tmp_path/'d')
    with pytest.raises(FastpipesError, match='split'):
        download_images(two(dict(label='cat', split='train'), dict(label='dog')), tmp_path/'d')
    assert not (tmp_path/'d').exists()

OPT_OUT = {'/noai.jpg': 'noai', '/noimageai.jpg': 'noimageai', '/listed.jpg': 'noindex, NoAI',
           '/ours.jpg': 'fastpipes: noimageai', '/other-bot.jpg': 'otherbot: noai', '/noindex.jpg': 'noindex, nofollow',
           '/plain.jpg': None}
OPTED = {'/noai.jpg', '/noimageai.jpg', '/listed.jpg', '/ours.jpg', '/via-redirect'}

def test_opt_out_honoured(tmp_path):
    "X-Robots-Tag noai / noimageai (to all or to fastpipes): skipped as 'opted-out'; ignore_opt_out overrides."
    routes = {p: Route(photo(i), headers={'X-Robots-Tag': v} if v else None) for i,(p,v) in enumerate(OPT_OUT.items())}
    routes['/via-redirect'] = Route(status=302, redirect='/noai.jpg')
    with LoopbackServer(routes) as srv:
        urls = [srv.url(p) for p in routes]
        rows = download_images(urls, tmp_path, **FAST)
        got = {fc.urlsplit(r['url']).path: (r['status'], r['reason']) for r in rows}
        assert got == {p: ('skipped', 'opted-out') if p in OPTED else ('ok', None) for p in routes}, got
        assert {fc.urlsplit(r['url']).path for r in read_manifest(tmp_path) if r['status'] == 'skipped'} == OPTED
        assert len(list(tmp_path.rglob('*.jpg'))) == len(routes) - len(OPTED)
        n = srv.n_requests
        assert [r['status'] for r in download_images(urls, tmp_path, **FAST)] == ['skipped'] * len(routes)
        assert srv.n_requests == n                                                # settled: not asked again
        rows = download_images(urls, tmp_path, ignore_opt_out=True, **FAST)
    assert {fc.urlsplit(r['url']).path for r in rows if r['status'] == 'ok'} == OPTED
    assert len(list(tmp_path.rglob('*.jpg'))) == len(routes)

def test_user_agent_names_fastpipes(tmp_path):
    import fastpipes
    robots = http(b'User-agent: *\nAllow: /\n', 'text/plain')
    with RawServer(lambda p: http(JPG) if p.endswith('.jpg') else robots) as srv:
        download_images([srv.url('/a.jpg'), srv.url('/b.jpg')], tmp_path, robots=True, **FAST)
    agents = {l.split(':', 1)[1].strip() for h in srv.heads for l in h if l.lower().startswith('user-agent:')}
    assert agents == {f'fastpipes/{fastpipes.__version__} (+https://github.com/fastpipes/fastpipes)'}
    assert sorted(h[0] for h in srv.heads) == ['GET /a.jpg HTTP/1.1', 'GET /b.jpg HTTP/1.1', 'GET /robots.txt HTTP/1.1']

ROBOTS = b'User-agent: otherbot\nDisallow: /ok/\n\nUser-agent: fastpipes\nDisallow: /private/\nDisallow: /nofp/\n'

def robots_routes(robots, hosts_url):
    return {'/robots.txt': robots, **{f'/{d}/{i}.jpg': photo(i) for d in ('private', 'nofp', 'ok') for i in range(6)},
            '/to-private': Route(status=302, redirect=hosts_url('/private/0.jpg'))}

def test_robots_txt(tmp_path):
    "robots=True: each host's robots.txt fetched once (URLs on 4 loops, a redirect's host too); what it bars skipped."
    with LoopbackServer(hosts=3) as srv:
        srv.routes = robots_routes(Route(ROBOTS, content_type='text/plain'), lambda p: srv.url(p, host=2))
        paths = [p for p in srv.routes if p != '/robots.txt']
        urls = [srv.url(p, host=i % 2) for i,p in enumerate(paths)]
        rows = download_images(urls, tmp_path, robots=True, **FAST)
        got = {fc.urlsplit(r['url']).path: (r['status'], r['reason']) for r in rows}
        assert got == {p: ('ok', None) if p.startswith('/ok/') else ('skipped', 'robots.txt') for p in paths}, got
        assert srv.hits['/robots.txt'] == 3                            # hosts 0 and 1, and host 2 of the redirect
        assert not [p for p in srv.hits if p.startswith(('/private/', '/nofp/'))]
        assert len(read_manifest(tmp_path)) == len(urls)
        rows = download_images(urls, tmp_path, **FAST)                  # robots=False: the skipped URLs are fetched now
        assert srv.hits['/robots.txt'] == 3 and rows.attrgot('status').count('ok') == len(urls) - 6

@pytest.mark.parametrize('robots, status, reason', [
    (Route(b'nope', 404, 'text/plain'), 'ok', None),
    (Route(b'down', 503, 'text/plain'), 'error', 'robots.txt unreachable: http 503'),
    (Route(status=301, redirect='/real-robots.txt'), 'skipped', 'robots.txt')])
def test_robots_txt_missing_or_down(tmp_path, robots, status, reason):
    "robots.txt missing (4xx): all allowed; a server error: nothing fetched, error rows (retried later)."
    everything = Route(b'User-agent: *\nDisallow: /\n', content_type='text/plain')
    routes = {'/robots.txt': robots, '/real-robots.txt': everything, **{f'/{i}.jpg': photo(i) for i in range(5)}}
    with LoopbackServer(routes) as srv:
        rows = download_images([srv.url(f'/{i}.jpg') for i in range(5)], tmp_path, robots=True, **FAST)
        assert srv.hits['/robots.txt'] == 1
        assert sum(srv.hits[f'/{i}.jpg'] for i in range(5)) == (5 if status == 'ok' else 0)
    assert rows.attrgot('status') == [status] * 5
    reasons = rows.attrgot('reason')
    assert all(r.startswith(reason) for r in reasons) if reason else reasons == [None] * 5, reasons

def test_robots_txt_through_the_safe_transport(tmp_path):
    "robots.txt is fetched like an image: a private address refused unless `allow_private`; nothing reaches the server."
    with LoopbackServer({'/robots.txt': Route(ROBOTS, content_type='text/plain'), '/a.jpg': JPG}) as srv:
        r, = download_images(srv.url('/a.jpg'), tmp_path, robots=True, **dict(FAST, allow_private=False))
        assert srv.n_requests == 0
    assert r['status'] == 'error' and 'refused private' in r['reason'], r
