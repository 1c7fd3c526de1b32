"README.md is generated from nbs/index.ipynb, and the README's commands are what CI runs."
import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

def _make_readme():
    spec = importlib.util.spec_from_file_location('make_readme', ROOT/'tools'/'make_readme.py')
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod

def test_readme_in_sync():
    assert (ROOT/'README.md').read_text() == _make_readme().readme(), "README.md is stale: run `python tools/make_readme.py`"

def test_ci_runs_readme_test_command():
    cmd = 'pip install -e ".[dev]" && pytest'
    assert cmd in (ROOT/'README.md').read_text()
    assert cmd in (ROOT/'.ci'/'run').read_text()
    assert 'pip install -e . && fastpipes demo' in (ROOT/'README.md').read_text()

def test_readme_figures_in_sync():
    "The README shows the index notebook's figures as files in assets/, each the notebook's own bytes."
    figs = _make_readme().figures()
    assert figs, "the index notebook keeps at least one figure (the CAM grid)"
    for f,png in figs.items(): assert (ROOT/f).is_file() and (ROOT/f).read_bytes() == png, f"{f} is stale: run `python tools/make_readme.py`"
    assert sorted(p.relative_to(ROOT).as_posix() for p in (ROOT/'assets').glob('index-*.png')) == sorted(figs)
    assert all(f'![The figure this cell draws]({f})' in (ROOT/'README.md').read_text() for f in figs)

# ------------------------------------------------------------- the README's examples run as written

import io, json, re
import pytest

def _prose_examples()->list[str]:
    "The Python examples in the index notebook's prose (its code cells run as the notebook, in `test_notebooks.py`)."
    cells = json.loads((ROOT/'nbs'/'index.ipynb').read_text())['cells']
    return [b for c in cells if c['cell_type'] == 'markdown' for b in re.findall(r'```python\n(.*?)```', ''.join(c['source']), re.S)]

def _photos(n:int)->dict:
    "Loopback routes of `n` generated pictures for each of the example's two queries (rings for one, crosses for the other)."
    from fastpipes.synth import marks_image
    routes = {}
    for q,kind in (('jeff bezos', 'circle'), ('elon musk', 'cross')):
        for i in range(n):
            buf = io.BytesIO(); marks_image(kind, size=96, seed=i, mark_frac=0.45)[0].save(buf, 'JPEG')
            routes[f"/{q.replace(' ', '-')}/{i}.jpg"] = buf.getvalue()
    return routes

def test_readme_prose_examples_are_found():
    ex = _prose_examples()
    assert len(ex) >= 2 and any('crawl_images(' in e for e in ex) and any('gan_learner(' in e for e in ex)
    assert all(e in (ROOT/'README.md').read_text() for e in ex)

@pytest.mark.slow
def test_readme_examples_run(tmp_path, monkeypatch):
    "Every Python example of the README's prose runs as written; the network is replaced at its edges: DuckDuckGo by a "
    "loopback server of generated pictures, torchvision's MNIST download by real digits written to disk."
    import torch, torchvision.datasets as tvd
    import fastpipes.crawl, fastpipes.net
    from fastpipes.serve import LoopbackServer
    from test_datasets import write_mnist
    torch.set_num_threads(2)
    class FakeMNIST:
        def __init__(self, root, train=True, download=False, **kw): write_mnist(Path(root)/'MNIST'/'raw', n=64, gz=False)
    monkeypatch.setattr(tvd, 'MNIST', FakeMNIST)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv('FASTPIPES_DATA', str(tmp_path/'data'))
    routes = _photos(24)
    with LoopbackServer(routes) as srv:
        def search(query, max_images=200, **kw):
            return [dict(url=srv.url(p), title=p) for p in routes if p.startswith(f"/{query.replace(' ', '-')}/")][:max_images]
        monkeypatch.setattr(fastpipes.crawl, 'search_images', search)
        monkeypatch.setattr(fastpipes.net, '_public', lambda ip: True)   # the server is on loopback; the example crawls the web
        for code in _prose_examples(): exec(compile(code, 'README.md', 'exec'), {'__name__': '__readme__'})
    assert (tmp_path/'model'/'classifier.json').is_file() and (tmp_path/'faces'/'manifest.jsonl').is_file()
