"Hostile and odd files through `clean_images`: every case ends in the expected state with its reason in the manifest."
import io, struct, zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, features
from fastai.data.transforms import get_image_files

from fastpipes.clean import REASONS, clean_images, verify_image
from fastpipes.core import header_size
from fastpipes.core import LOCK, FastpipesError, new_row, read_manifest, sha256_file, write_manifest

def photo(seed:int, size=(160, 120))->Image.Image:
    "A smooth photo-like RGB image, different for each seed."
    g = np.random.default_rng(seed).random((5, 5, 3))
    return Image.fromarray((g*255).astype(np.uint8)).resize(size, Image.Resampling.BICUBIC)

def encode(im:Image.Image, fmt:str, **kw)->bytes:
    buf = io.BytesIO(); im.save(buf, fmt, **kw); return buf.getvalue()

def bomb_png(w=30000, h=30000)->bytes:
    "A PNG whose header claims `w`×`h` RGB pixels, with a tiny (invalid) data chunk: nothing big is allocated."
    def chunk(kind, data): return struct.pack('>I', len(data)) + kind + data + struct.pack('>I', zlib.crc32(kind + data))
    return (b'\x89PNG\r\n\x1a\n' + chunk(b'IHDR', struct.pack('>IIBBBBB', w, h, 8, 2, 0, 0, 0)) +
            chunk(b'IDAT', zlib.compress(b'\0' * 1000)) + chunk(b'IEND', b''))

def palette_transparent()->Image.Image:
    im = Image.new('P', (80, 60), 0); im.putpalette([0,0,0, 200,30,30]); im.info['transparency'] = 0
    for x in range(20, 60):
        for y in range(20, 40): im.putpixel((x, y), 1)
    return im

def exif_rotated()->bytes:
    "A 120×60 JPEG, red on the left half, with EXIF orientation 6 (view rotated 90° clockwise)."
    im = Image.new('RGB', (120, 60), 'blue'); im.paste((255, 0, 0), (0, 0, 60, 60))
    ex = im.getexif(); ex[0x0112] = 6
    return encode(im, 'JPEG', exif=ex, quality=95)

def animated_gif()->bytes:
    frames = [Image.new('RGB', (64, 64), c) for c in ['red', 'green', 'blue']]
    return encode(frames[0], 'GIF', save_all=True, append_images=frames[1:], duration=100, loop=0)

HAVE_AVIF = features.check('avif')

@pytest.fixture
def dataset(tmp_path):
    "A `train/test` dataset with one file of every kind; returns `(path, {relative file: expected outcome})`."
    d = tmp_path/'ds'
    jpg = encode(photo(0), 'JPEG', quality=90)
    files = {
        'train/cat/photo.jpg': (jpg, 'ok'),
        'train/cat/page.jpg': (b'<!DOCTYPE html><html><head><title>403</title></head></html>', 'html'),
        'train/cat/empty.jpg': (b'', 'empty'),
        'train/cat/cut.jpg': (encode(photo(1), 'JPEG')[:1500], 'truncated'),
        'train/cat/logo.jpg': (b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>', 'svg'),
        'train/cat/bomb.png': (bomb_png(), 'too-large'),
        'train/cat/noise.jpg': (bytes(range(256))*4, 'undecodable'),
        'train/cat/palette.png': (encode(palette_transparent(), 'PNG'), 'ok'),
        'train/cat/cmyk.jpg': (encode(photo(2).convert('CMYK'), 'JPEG'), 'ok'),
        'train/cat/la.png': (encode(photo(3).convert('LA'), 'PNG'), 'ok'),
        'train/cat/grey.jpg': (encode(photo(4).convert('L'), 'JPEG'), 'ok'),
        'train/cat/deep.png': (encode(Image.fromarray((np.asarray(photo(5).convert('L'), np.uint16)*257)), 'PNG'), 'ok'),
        'train/cat/anim.gif': (animated_gif(), 'ok'),
        'train/cat/web.webp': (encode(photo(6), 'WEBP'), 'ok'),
        'train/cat/rotated.jpg': (exif_rotated(), 'ok'),
        'train/cat/tiny.png': (encode(photo(7, (4, 4)), 'PNG'), 'too-small'),
        'train/cat/png-named.jpg': (encode(photo(8), 'PNG'), 'ok'),
        'train/cat/same.png': (encode(photo(9), 'PNG'), 'ok'),
        'train/cat/same-again.bmp': (encode(photo(9), 'BMP'), 'duplicate'),
        'train/cat/big.jpg': (encode(photo(10, (320, 240)), 'JPEG', quality=95), 'ok'),
        'train/cat/big-smaller.jpg': (encode(photo(10, (300, 225)), 'JPEG', quality=70), 'near-duplicate'),
        'train/dog/dog.jpg': (encode(photo(11), 'JPEG'), 'ok'),
        'test/dog/dog-again.jpg': (encode(photo(11, (150, 112)), 'JPEG', quality=80), 'leak'),
        'test/dog/fresh.jpg': (encode(photo(12), 'JPEG'), 'ok'),
        'train/dog/both.jpg': (encode(photo(13), 'JPEG'), 'two-labels'),
        'train/cat/both.jpg': (encode(photo(13), 'JPEG'), 'two-labels'),
    }
    if HAVE_AVIF: files['train/dog/av.avif'] = (encode(photo(14), 'AVIF'), 'ok')
    for rel,(b,_) in files.items():
        (d/rel).parent.mkdir(parents=True, exist_ok=True); (d/rel).write_bytes(b)
    write_manifest(d, [new_row(url='http://example.com/photo.jpg', label='cat', split='train', status='ok', file='train/cat/photo.jpg')])
    return d, {k: v[1] for k,v in files.items()}

def tree(d:Path)->dict:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob('*')) if p.is_file()}

KEPT_AS = {'train/cat/palette.png': 'train/cat/palette.png', 'train/cat/anim.gif': 'train/cat/anim.png',
           'train/cat/web.webp': 'train/cat/web.jpg', 'train/cat/png-named.jpg': 'train/cat/png-named.png',
           'train/cat/deep.png': 'train/cat/deep.png', 'train/dog/av.avif': 'train/dog/av.jpg'}

def test_every_case(dataset):
    d, expect = dataset
    res = clean_images(d, quiet=True)
    rows = {r['file']: r for r in read_manifest(d)}
    got = {r.file: (r.status if pd.isna(r.reason) else r.reason) for r in res.files.itertuples()}
    assert got == expect
    for rel,want in expect.items():
        name = Path(rel).name
        if want == 'ok':
            new = KEPT_AS.get(rel, rel)
            assert (d/new).is_file(), rel
            im = Image.open(d/new); im.load()
            assert im.mode == 'RGB' and im.format in ('JPEG', 'PNG') and getattr(im, 'n_frames', 1) == 1, (rel, im.mode, im.format)
            row = rows[new]
            assert row['status'] == 'ok' and row['reason'] is None and (row['width'], row['height']) == im.size
            assert row['bytes'] == (d/new).stat().st_size and row['sha256'] == sha256_file(d/new)
        else:
            assert want in REASONS
            assert not (d/rel).exists(), rel
            moved = [p for p in (d/'rejected'/want).iterdir() if p.name.startswith(Path(name).stem)]
            assert moved, rel
            assert any(rows.get(p.relative_to(d).as_posix(), {}).get('reason') == want for p in moved), rel
    # the two copies under two labels keep unique names in the same reject folder
    assert len(list((d/'rejected'/'two-labels').iterdir())) == 2
    # the crawl's row (keyed by URL) was updated, not duplicated
    assert [r['url'] for r in read_manifest(d) if r['url']] == ['http://example.com/photo.jpg']
    # every kept file is one fastai lists; every file fastai lists is kept
    kept = {(d/KEPT_AS.get(k, k)) for k,v in expect.items() if v == 'ok'}
    assert set(get_image_files(d, folders=['train', 'test'])) == kept
    assert res.counts['two-labels'] == 2 and res.n_kept == len(kept)
    assert str(res).startswith(f"Kept {len(kept)} of {len(expect)} files")

def test_pixels(dataset):
    d, _ = dataset
    clean_images(d, quiet=True)
    rot = Image.open(d/'train/cat/rotated.jpg')
    assert rot.size == (60, 120) and not rot.getexif().get(0x0112)
    r,g,b = rot.getpixel((30, 20)); assert r > 200 and b < 60   # the red half is now on top
    r,g,b = rot.getpixel((30, 100)); assert b > 200 and r < 60
    pal = Image.open(d/'train/cat/palette.png')
    assert pal.getpixel((0, 0)) == (255, 255, 255) and pal.getpixel((30, 30)) == (200, 30, 30)
    assert Image.open(d/'train/cat/anim.png').getpixel((5, 5)) == (255, 0, 0)   # the first frame
    deep = np.asarray(Image.open(d/'train/cat/deep.png')).astype(int)
    want = np.asarray(photo(5).convert('L')).astype(int)
    assert np.abs(deep[..., 0] - want).max() <= 1     # 16 bits scaled, not clipped to white
    la = np.asarray(Image.open(d/'train/cat/la.png'))
    assert np.abs(la[..., 0].astype(int) - np.asarray(photo(3).convert('L'))).max() <= 1

def test_idempotent(dataset):
    d, _ = dataset
    clean_images(d, quiet=True)
    before = tree(d)
    res = clean_images(d, quiet=True)
    assert tree(d) == before
    assert res.counts == {} and res.files.action.isna().all()

def test_delete(dataset):
    d, expect = dataset
    clean_images(d, delete=True, quiet=True)
    assert not (d/'rejected').exists()
    rows = [r for r in read_manifest(d) if r['status'] == 'rejected']
    assert sorted(r['reason'] for r in rows) == sorted(v for v in expect.values() if v != 'ok')
    assert all(not (d/r['file']).exists() for r in rows)   # the row keeps where the file was

def test_max_size(dataset):
    d, _ = dataset
    big = encode(photo(20, (900, 500)), 'JPEG', quality=95)
    (d/'train/cat/huge.jpg').write_bytes(big)
    (d/'train/cat/huge.png').write_bytes(encode(photo(21, (500, 900)), 'PNG'))
    res = clean_images(d, max_size=100, quiet=True)
    for fn in get_image_files(d, folders=['train', 'test']):
        assert max(Image.open(fn).size) <= 100, fn
    assert Image.open(d/'train/cat/huge.jpg').size == (100, 56)
    assert Image.open(d/'train/cat/huge.png').size == (56, 100)
    assert set(res.files.set_index('file').loc[['train/cat/huge.jpg', 'train/cat/photo.jpg'], 'action']) == {'presized'}
    before = tree(d)
    clean_images(d, max_size=100, quiet=True)
    assert tree(d) == before

def test_plain_folder_and_labels(tmp_path):
    (tmp_path/'a.jpg').write_bytes(encode(photo(1), 'JPEG'))
    (tmp_path/'b.webp').write_bytes(encode(photo(2), 'WEBP'))
    (tmp_path/'c.jpg').write_bytes(b'')
    res = clean_images(tmp_path, quiet=True)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file() and p.name != LOCK) == ['a.jpg', 'b.jpg', 'manifest.jsonl']
    rows = {r['file']: r for r in read_manifest(tmp_path)}
    assert rows['b.jpg']['status'] == 'ok' and rows['rejected/empty/c.jpg']['reason'] == 'empty'
    assert res.counts == {'empty': 1}

def test_near_dup_threshold(tmp_path):
    (tmp_path/'cat').mkdir()
    photo(1, (200, 150)).save(tmp_path/'cat/a.jpg', quality=95)
    photo(1, (190, 142)).save(tmp_path/'cat/b.jpg', quality=60)
    assert clean_images(tmp_path, near_dup=None, quiet=True).counts == {}
    assert clean_images(tmp_path, quiet=True).counts == {'near-duplicate': 1}

def test_distinct_photos_kept(tmp_path):
    "Different photos of one class are never called near duplicates (no false positives among 60 images)."
    (tmp_path/'x').mkdir()
    for i in range(60): photo(100+i).save(tmp_path/'x'/f'{i}.jpg')
    assert clean_images(tmp_path, quiet=True).counts == {}

def test_errors(tmp_path):
    with pytest.raises(FastpipesError, match='does not exist'): clean_images(tmp_path/'missing')
    (tmp_path/'cat').mkdir()
    with pytest.raises(FastpipesError, match='holds no files'): clean_images(tmp_path)

def test_verify_and_header():
    assert header_size(bomb_png()) == (30000, 30000)
    assert header_size(bomb_png(100, 50)) == (100, 50)

def test_verify_image(tmp_path):
    (tmp_path/'bomb.png').write_bytes(bomb_png(7000, 7000))
    assert verify_image(tmp_path/'bomb.png') == 'too-large'          # 49 MP > the 40 MP default, below Pillow's limit
    assert verify_image(tmp_path/'bomb.png', max_pixels=10**8) == 'truncated'  # allowed size, but its pixel data ends early
    (tmp_path/'ok.png').write_bytes(encode(photo(1), 'PNG'))
    assert verify_image(tmp_path/'ok.png') is None

def jpeg_bomb(w=20000, h=20000)->bytes:
    "A small JPEG whose start-of-frame is patched to claim `w`×`h`, after a 70 KB EXIF-like segment."
    b = bytearray(encode(photo(1), 'JPEG'))
    i = b.index(b'\xff\xc0')
    b[i+5:i+9] = struct.pack('>HH', h, w)
    pad = b'\xff\xe2' + struct.pack('>H', 65535) + b'\0'*65533   # two big APP2 segments push the SOF past 64 KB
    return bytes(b[:2] + pad + pad + b[2:])

def test_jpeg_bomb(tmp_path):
    b = jpeg_bomb()
    assert header_size(b) == (20000, 20000)
    (tmp_path/'bomb.jpg').write_bytes(b)
    assert verify_image(tmp_path/'bomb.jpg') == 'too-large'
    # above Pillow's own limit (2 × Image.MAX_IMAGE_PIXELS) Pillow refuses too, and it is still 'too-large'
    assert verify_image(tmp_path/'bomb.jpg', max_pixels=10**9) == 'too-large'

@pytest.mark.filterwarnings('ignore:Corrupt EXIF data')   # Pillow warns while reading cut TIFF headers
@pytest.mark.parametrize('fmt', ['PNG', 'JPEG', 'GIF', 'WEBP', 'BMP', 'TIFF'] + (['AVIF'] if HAVE_AVIF else []))
def test_prefixes_never_raise(tmp_path, fmt):
    "Every cut of a valid file gets a reason (or passes), and no exception escapes."
    b = encode(photo(3, (64, 48)), fmt)
    for n in sorted({*range(0, 40), *range(40, len(b), max(1, len(b)//40))}):
        (tmp_path/'x').write_bytes(b[:n])
        r = verify_image(tmp_path/'x')
        assert r in REASONS, (n, r)
    (tmp_path/'x').write_bytes(b)
    assert verify_image(tmp_path/'x') is None

@pytest.mark.filterwarnings('ignore')   # Pillow warns about some corrupt headers
@pytest.mark.parametrize('fmt', ['JPEG', 'PNG', 'GIF', 'WEBP', 'BMP', 'TIFF'] + (['AVIF'] if HAVE_AVIF else []))
def test_corrupt_bytes_get_a_reason(tmp_path, fmt):
    "Random byte changes in a valid file: each result is a reason or a usable image, never an escaped exception."
    rng = np.random.default_rng(0)
    b = encode(Image.fromarray((rng.random((48, 64, 3))*255).astype(np.uint8)), fmt)
    for t in range(60):
        c = bytearray(b)
        for _ in range(rng.integers(1, 6)): c[rng.integers(0, len(c))] = rng.integers(0, 256)
        (tmp_path/'x').write_bytes(bytes(c))
        assert verify_image(tmp_path/'x') in (None, *REASONS)

@pytest.mark.parametrize('full', [False, True])
def test_near_dups_across_decode_scales(tmp_path, full):
    "Copies of one photo at sizes that JPEG's DCT scaling decodes at different scales (1/8, 1/4, 1/2, 1) are still found."
    sizes = [(800, 600), (400, 300), (200, 150), (96, 72), (60, 48)]
    for i,s in enumerate(sizes):
        fn = tmp_path/('train' if i == 0 else 'test')/'cat'/f'{i}.jpg'; fn.parent.mkdir(parents=True, exist_ok=True)
        photo(30, s).save(fn, quality=90 - 5*i)
    (tmp_path/'train/dog').mkdir(); (tmp_path/'test/dog').mkdir()
    for seed in range(31, 36):   # small pairs: 96×64 is decoded at 1/2 (48×32 if the scan size were 32), 90×60 in full
        photo(seed, (96, 64)).save(tmp_path/'train/dog'/f's{seed}.jpg', quality=95)
        photo(seed, (90, 60)).save(tmp_path/'test/dog'/f's{seed}.jpg', quality=80)
    for i in range(4): photo(40+i, (400, 300)).save(tmp_path/'train'/'cat'/f'other{i}.jpg')
    res = clean_images(tmp_path, full_decode=full, quiet=True)
    assert res.counts == {'leak': len(sizes) - 1 + 5}
    assert (tmp_path/'train/cat/0.jpg').exists() and len(list((tmp_path/'rejected'/'leak').iterdir())) == 9

def test_keeper_and_part_files(tmp_path):
    "Among equal copies the one needing no conversion, then the larger file, is kept; unfinished downloads are left alone."
    d = tmp_path/'train'/'cat'; d.mkdir(parents=True)
    photo(50, (200, 150)).save(d/'a-low.jpg', quality=60); photo(50, (200, 150)).save(d/'b-high.jpg', quality=95)
    photo(51).save(d/'c.webp', lossless=True); photo(51).save(d/'d.png')
    (d/'e.part').write_bytes(b'half a download')
    res = clean_images(tmp_path, quiet=True)
    assert dict(zip(res.files.file, res.files.reason.fillna('ok'))) == {
        'train/cat/a-low.jpg': 'near-duplicate', 'train/cat/b-high.jpg': 'ok', 'train/cat/c.webp': 'duplicate', 'train/cat/d.png': 'ok'}
    assert (d/'e.part').read_bytes() == b'half a download'
    assert sorted(p.name for p in d.iterdir()) == ['b-high.jpg', 'd.png', 'e.part']

# --- hostile files and careless use (issue 13) ---

def _unblock(fifo:Path):
    "If a regression opens `fifo` for reading, a timer opens it for writing after 20 s so the test fails instead of hanging."
    import os, threading
    def poke():
        try: os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError: pass
    t = threading.Timer(20, poke); t.daemon = True; t.start()
    return t

def test_links_and_special_files(tmp_path):
    "A FIFO, a link to /dev/zero and a link to a private file outside: rejected unopened, links moved as links, targets intact."
    import os
    secret = tmp_path/'id_rsa'; secret.write_bytes(b'-----BEGIN PRIVATE KEY----- s3cr3t')
    d = tmp_path/'ds'; (d/'train'/'cat').mkdir(parents=True); (d/'train'/'dog').mkdir()
    photo(1).save(d/'train/cat/a.jpg'); photo(2).save(d/'train/dog/b.jpg')
    os.mkfifo(d/'train/cat/pipe.jpg'); os.symlink('/dev/zero', d/'train/cat/zero.jpg'); os.symlink(secret, d/'train/dog/key.jpg')
    os.mkfifo(d/'train/dog/fifo-notes')   # not an image name: left alone, never opened
    t = _unblock(d/'train/cat/pipe.jpg')
    res = clean_images(d, quiet=True, num_workers=2)
    t.cancel()
    got = dict(zip(res.files.file, res.files.reason.fillna('ok')))
    assert got == {'train/cat/a.jpg': 'ok', 'train/cat/pipe.jpg': 'special-file', 'train/cat/zero.jpg': 'symlink',
                   'train/dog/b.jpg': 'ok', 'train/dog/key.jpg': 'symlink'}
    assert os.readlink(d/'rejected/symlink/key.jpg') == str(secret) and os.readlink(d/'rejected/symlink/zero.jpg') == '/dev/zero'
    assert secret.read_bytes().endswith(b's3cr3t') and (d/'train/dog/fifo-notes').exists()
    rows = {r['file']: r for r in read_manifest(d)}
    assert rows['rejected/special-file/pipe.jpg']['reason'] == 'special-file'
    assert verify_image(d/'rejected/symlink/zero.jpg') == 'symlink'

def test_links_deleted(tmp_path):
    import os
    secret = tmp_path/'secret.jpg'; photo(3).save(secret)
    d = tmp_path/'ds'; (d/'cat').mkdir(parents=True); photo(1).save(d/'cat/a.jpg'); os.symlink(secret, d/'cat/s.jpg')
    assert clean_images(d, delete=True, quiet=True).counts == {'symlink': 1}
    assert not os.path.lexists(d/'cat/s.jpg') and secret.exists()   # the link goes, never what it points to

def test_scans_bounded(tmp_path, monkeypatch):
    "A progressive JPEG of many empty scans is rejected from its markers, before Pillow decodes anything."
    from PIL import ImageFile
    from fastpipes.clean import MAX_SCANS
    pj = encode(photo(4, (400, 300)), 'JPEG', progressive=True)
    j = pj.rindex(b'\xff\xda'); empty = pj[j:j+2+struct.unpack('>H', pj[j+2:j+4])[0]]
    d = tmp_path/'cat'; d.mkdir()
    (d/'ok.jpg').write_bytes(pj); (d/'scans.jpg').write_bytes(pj[:-2] + empty*5000 + pj[-2:])
    assert verify_image(d/'ok.jpg') is None
    loads = []
    real = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, 'load', lambda self: loads.append(self.size) or real(self))
    assert verify_image(d/'scans.jpg') == 'too-many-scans' and loads == []
    assert clean_images(tmp_path, quiet=True).counts == {'too-many-scans': 1}
    assert (pj[:-2] + empty*(MAX_SCANS - pj.count(b'\xff\xda')) + pj[-2:]).count(b'\xff\xda') == MAX_SCANS

def test_one_run_at_a_time(tmp_path):
    "While another process cleans (holds the dataset's lock), a second run stops with one sentence and changes nothing."
    import subprocess, sys, os
    d = tmp_path/'ds'; (d/'cat').mkdir(parents=True)
    for i in range(3): photo(60+i).save(d/'cat'/f'{i}.jpg')
    (d/'cat/bad.jpg').write_bytes(b'')
    code = ("import sys, time\nfrom fastpipes.core import dataset_lock\nwith dataset_lock(sys.argv[1]):\n"
            "    print('held', flush=True); sys.stdin.readline()")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]))
    p = subprocess.Popen([sys.executable, '-c', code, str(d)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert p.stdout.readline().strip() == 'held'
        before = tree(d)
        with pytest.raises(FastpipesError, match='is in use by another fastpipes run') as e: clean_images(d, quiet=True)
        assert '\n' not in str(e.value) and tree(d) == before
    finally: p.communicate('\n', timeout=30)
    res = clean_images(d, quiet=True)
    assert res.counts == {'empty': 1} and len(read_manifest(d)) == 4   # one row per file, no extra
    clean_images(d, quiet=True)
    assert len(read_manifest(d)) == 4

def _all_pairs(ph, thumbs, near_dup, colour_tol=24.):
    "The all-pairs definition of near duplicates, for reference."
    from fastpipes.clean import _popcount
    d = _popcount(ph[:, None] ^ ph[None, :]); t = np.abs(thumbs[:, None] - thumbs[None, :]).mean(-1)
    return sorted(zip(*np.nonzero((d <= near_dup) & (t <= colour_tol) & np.triu(np.ones_like(d, bool), 1))))

def test_near_pairs_same_as_all_pairs():
    "Multi-index hashing finds exactly the pairs that comparing all pairs finds: distinct images, near copies, a big family."
    from fastpipes.clean import _near_pairs
    rng = np.random.default_rng(1)
    base = rng.integers(0, 2**62, 300, dtype=np.uint64) << np.uint64(2)
    src = np.concatenate([rng.integers(0, 300, 300), np.zeros(300, int)])   # random copies, and 300 copies of image 0
    flips = [np.bitwise_or.reduce(np.uint64(1) << rng.integers(0, 64, k).astype(np.uint64)) for k in rng.integers(0, 8, len(src))]
    ph = np.concatenate([base, base[src] ^ np.array(flips, np.uint64)])
    th0 = rng.integers(0, 255, (300, 48))
    th = np.concatenate([th0, th0[src] + rng.integers(-30, 30, (len(src), 48))]).astype(np.int16)
    for nd,least in [(0, 10), (4, 1000), (9, 10000)]:
        want = _all_pairs(ph, th, nd)
        assert sorted(zip(*_near_pairs(ph, th, nd))) == want and len(want) >= least, (nd, len(want))

def test_emoji_label_folder(tmp_path):
    "A label of 64 emoji gives a folder name within the file system's 255 bytes, stable and unique; cleaning works in it."
    from fastpipes.core import safe_name
    lbl = '🐈'*64
    assert len(safe_name(lbl).encode()) <= 255 and safe_name(lbl) == safe_name(lbl) != safe_name('🐈'*65)
    d = tmp_path/safe_name(lbl); d.mkdir(); photo(1).save(d/'a.jpg')
    assert clean_images(tmp_path, quiet=True).n_kept == 1

# --- a full disk (issue 23) ---

def _enospc(*a, **k):
    import errno
    raise OSError(errno.ENOSPC, 'No space left on device')

def crawled(d:Path)->dict:
    "A crawled dataset with a manifest row (with URL and SHA-256) per file, of files clean keeps, converts, presizes, "
    "renames and rejects; returns `{url: (relative file, bytes)}`."
    files = {'train/cat/a.jpg': encode(photo(70), 'JPEG'), 'train/cat/b.webp': encode(photo(71), 'WEBP'),
             'train/cat/c.bmp': encode(photo(72), 'BMP'), 'train/cat/d-png.jpg': encode(photo(73), 'PNG'),
             'train/dog/page.jpg': b'<html><body>403</body></html>', 'train/dog/e.jpg': encode(photo(74), 'JPEG'),
             'train/dog/e-copy.png': encode(photo(74), 'PNG'), 'test/dog/big.jpg': encode(photo(75, (400, 300)), 'JPEG'),
             'test/cat/f.jpg': encode(photo(76), 'JPEG')}
    rows, out = [], {}
    for i,(rel,b) in enumerate(files.items()):
        (d/rel).parent.mkdir(parents=True, exist_ok=True); (d/rel).write_bytes(b)
        url = f'http://example.com/{i}'
        out[url] = (rel, b)
        rows.append(new_row(url=url, label=rel.split('/')[1], split=rel.split('/')[0], status='ok', file=rel,
                            sha256=sha256_file(d/rel)))
    write_manifest(d, rows)
    return out

def contents(d:Path)->dict:
    "`tree(d)` without the lock file that every run creates."
    return {k: v for k,v in tree(d).items() if k != LOCK}

def assert_consistent(d:Path, files:dict):
    "Every file is where its manifest row says: kept ones with the row's SHA-256, rejected ones unchanged; no strays."
    from fastpipes.core import dataset_view
    rows = {r['url']: r for r in read_manifest(d)}
    for url,(rel,b) in files.items():
        r = rows[url]
        if r['status'] == 'rejected' and not (d/r['file']).exists(): continue   # deleted (`delete=True`)
        assert (d/r['file']).is_file(), (rel, r)
        if r['status'] == 'rejected': assert (d/r['file']).read_bytes() == b, rel
        else: assert sha256_file(d/r['file']) == r['sha256'], rel
    assert sorted(dataset_view(d).files()) == sorted(d/r['file'] for r in rows.values() if r['status'] == 'ok')
    assert not (d/'.fastpipes-clean').exists() and not (d/'.fastpipes-trash').exists()

def test_full_disk_while_converting(tmp_path, monkeypatch):
    "A full disk while a converted copy is written: one sentence, every file and the manifest as they were."
    d = tmp_path/'ds'; crawled(d); before = contents(d)
    monkeypatch.setattr(Image.Image, 'save', _enospc)
    with pytest.raises(FastpipesError, match=r'^No space left on the device to write `.*`; free some space') as e:
        clean_images(d, quiet=True, num_workers=2)
    assert '\n' not in str(e.value) and contents(d) == before

@pytest.mark.parametrize('delete', [False, True])
def test_full_disk_at_every_move(tmp_path, monkeypatch, delete):
    "The disk fills at the 1st, 2nd, ... rename of a run (moves, conversions, the manifest's own): one sentence, and "
    "every file is where it was or where the manifest says; cleaning again then finishes the work."
    import os
    real = {k: getattr(os, k) for k in ('replace', 'rename')}
    def run(d:Path, fail_at:int|None=None)->int:
        "Clean `d`, the `fail_at`-th rename failing for a full disk; how many renames were tried."
        calls = [0]
        def renamer(k):
            def f(src, dst):
                calls[0] += 1
                if calls[0] == fail_at: _enospc()
                return real[k](src, dst)
            return f
        for k in real: monkeypatch.setattr(os, k, renamer(k))
        try: clean_images(d, quiet=True, delete=delete)
        finally:
            for k,f in real.items(): monkeypatch.setattr(os, k, f)
        return calls[0]
    crawled(tmp_path/'all'); n = run(tmp_path/'all')
    assert n >= 5   # 5 files move or are converted, then the manifest is written
    for k in range(1, n+1):
        d = tmp_path/f'{k}'; files = crawled(d)
        with pytest.raises(FastpipesError, match='^No space left on the device to write'): run(d, k)
        assert_consistent(d, files)
        clean_images(d, quiet=True, delete=delete)
        assert_consistent(d, files)

def test_full_disk_at_manifest(tmp_path, monkeypatch):
    "When the manifest cannot be written, every file moved, converted or deleted is put back as it was."
    import builtins, fastpipes.core
    d = tmp_path/'ds'; crawled(d); before = contents(d)
    def open_(fn, *a, **k): return _enospc() if str(fn).endswith('.part') else builtins.open(fn, *a, **k)
    monkeypatch.setattr(fastpipes.core, 'open', open_, raising=False)   # `atomic_write` writing the `.part` file
    with pytest.raises(FastpipesError, match='No space left on the device to write `.*manifest.jsonl`'):
        clean_images(d, quiet=True, delete=True)
    assert contents(d) == before

def test_full_disk_nothing_put_back(tmp_path, monkeypatch):
    "If even the renames back fail, the files stay in `.fastpipes-trash` and the sentence says so: none is deleted."
    import os
    d = tmp_path/'ds'; files = crawled(d); real, moved = os.replace, []
    def replace(src, dst):
        if Path(dst).name.startswith('manifest.jsonl') or len(moved) >= 4: _enospc()
        moved.append(dst); return real(src, dst)
    monkeypatch.setattr(os, 'replace', replace)
    with pytest.raises(FastpipesError, match=r'could not be put back; they are in `.*\.fastpipes-trash`'):
        clean_images(d, quiet=True)
    monkeypatch.setattr(os, 'replace', real)
    left = {p.read_bytes() for p in d.rglob('*') if p.is_file()}
    assert all(b in left for _,b in files.values())
