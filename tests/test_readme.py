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
