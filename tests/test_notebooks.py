"Run every notebook in `nbs/` as a test, skipping cells that carry one of the project's test flags."
from pathlib import Path
import pytest
from nbdev.config import get_config
from nbdev.test import test_nb as run_nb

NBS = Path(__file__).parent.parent/'nbs'
FLAGS = get_config().tst_flags.split()

@pytest.mark.parametrize('fn', sorted(NBS.glob('*.ipynb')), ids=lambda p: p.name)
def test_notebook(fn, monkeypatch):
    monkeypatch.chdir(NBS)
    ok, secs = run_nb(fn, skip_flags=FLAGS)
    assert ok, f"{fn.name} failed (run `nbdev-test {fn.relative_to(NBS.parent)}` to see the cell)"
