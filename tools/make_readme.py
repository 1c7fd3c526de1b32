"""Write README.md from nbs/index.ipynb.

`nbdev-readme` renders through Quarto, a binary that cannot be installed on an offline machine; this does the
part fastpipes needs: markdown cells as they are, code cells as fenced Python with their text outputs, figures
as PNG files in `assets/` shown under their cell, and cells marked `#| hide` left out. Run it after editing the index
notebook: `python tools/make_readme.py`.
"""
from pathlib import Path
import base64, json, re

ROOT = Path(__file__).resolve().parent.parent
ASSETS = 'assets'
_DIRECTIVE = re.compile(r'^\s*#\|.*$\n?', re.M)
_HIDDEN = re.compile(r'^\s*#\|\s*(hide|export|exporti)\s*$', re.M)

def _text(src): return ''.join(src) if isinstance(src, list) else src

def _figures(cells)->dict:
    "`{cell index: {path in the repository: PNG bytes}}`: the figures the shown code cells keep, named after their cell."
    figs = {}
    for i,c in enumerate(cells):
        if c['cell_type'] != 'code' or _HIDDEN.search(_text(c['source'])): continue
        pngs = [o['data']['image/png'] for o in c.get('outputs', []) if 'image/png' in o.get('data', {})]
        if pngs: figs[i] = {f"{ASSETS}/index-{i}{'-'+str(k) if k else ''}.png": base64.b64decode(_text(p)) for k,p in enumerate(pngs)}
    return figs

def _code(cell, figs=()):
    src = _text(cell['source'])
    if _HIDDEN.search(src): return ''
    out = ['```python', _DIRECTIVE.sub('', src).strip(), '```']
    for o in cell.get('outputs', []):
        if o.get('name') == 'stderr': continue  # warnings from dependencies are not part of the example
        if 'image/png' in o.get('data', {}): continue  # a figure: shown below as its file (its text form says nothing)
        txt = _text(o.get('text') or o.get('data', {}).get('text/plain', ''))
        if txt.strip(): out += ['', '```', txt.rstrip(), '```']
    out += [f'\n![The figure this cell draws]({f})' for f in figs]
    return '\n'.join(out)

def figures(nb=ROOT/'nbs'/'index.ipynb')->dict:
    "The figure files the README shows: `{path in the repository: PNG bytes}`."
    return {f: png for d in _figures(json.loads(Path(nb).read_text())['cells']).values() for f,png in d.items()}

def readme(nb=ROOT/'nbs'/'index.ipynb'):
    cells = json.loads(Path(nb).read_text())['cells']
    figs = _figures(cells)
    parts = [_text(c['source']).strip() if c['cell_type'] == 'markdown' else _code(c, figs.get(i, ())) for i,c in enumerate(cells)]
    md = '\n\n'.join(p for p in parts if p) + '\n'
    # images referenced from the notebook folder are relative to the repository root in the README
    return re.sub(rf'\]\((?!https?:|/|nbs/|{ASSETS}/)([^)]+\.(?:png|jpg|svg|gif))\)', r'](nbs/\1)', md)

if __name__ == '__main__':
    (ROOT/'README.md').write_text(readme())
    for f in (ROOT/ASSETS).glob('index-*.png'): f.unlink()   # figures of cells that no longer draw one
    for f,png in figures().items():
        (ROOT/f).parent.mkdir(exist_ok=True); (ROOT/f).write_bytes(png)
    print('wrote', ROOT/'README.md', 'and', len(figures()), 'figures in', ROOT/ASSETS)
