"""Write README.md from nbs/index.ipynb.

`nbdev-readme` renders through Quarto, a binary that cannot be installed on an offline machine; this does the
part fastpipes needs: markdown cells as they are, code cells as fenced Python with their text outputs, and
cells marked `#| hide` left out. Run it after editing the index notebook: `python tools/make_readme.py`.
"""
from pathlib import Path
import json, re

ROOT = Path(__file__).resolve().parent.parent
_DIRECTIVE = re.compile(r'^\s*#\|.*$\n?', re.M)
_HIDDEN = re.compile(r'^\s*#\|\s*(hide|export|exporti)\s*$', re.M)

def _text(src): return ''.join(src) if isinstance(src, list) else src

def _code(cell):
    src = _text(cell['source'])
    if _HIDDEN.search(src): return ''
    out = ['```python', _DIRECTIVE.sub('', src).strip(), '```']
    for o in cell.get('outputs', []):
        if o.get('name') == 'stderr': continue  # warnings from dependencies are not part of the example
        if 'image/png' in o.get('data', {}): continue  # a figure: its text form (`<Figure size ...>`) says nothing
        txt = _text(o.get('text') or o.get('data', {}).get('text/plain', ''))
        if txt.strip(): out += ['', '```', txt.rstrip(), '```']
    return '\n'.join(out)

def readme(nb=ROOT/'nbs'/'index.ipynb'):
    cells = json.loads(Path(nb).read_text())['cells']
    parts = [_text(c['source']).strip() if c['cell_type'] == 'markdown' else _code(c) for c in cells]
    md = '\n\n'.join(p for p in parts if p) + '\n'
    # images referenced from the notebook folder are relative to the repository root in the README
    return re.sub(r'\]\((?!https?:|/|nbs/)([^)]+\.(?:png|jpg|svg|gif))\)', r'](nbs/\1)', md)

if __name__ == '__main__':
    (ROOT/'README.md').write_text(readme())
    print('wrote', ROOT/'README.md')
