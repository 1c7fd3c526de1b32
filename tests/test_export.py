"""Export: the ONNX graph (probabilities and CAM maps) agrees with PyTorch to 1e-4 under onnxruntime, safetensors
weights load back, a missing optional package is one sentence naming the extra, and the exported Space folder starts
with `python app.py` (no fastpipes, loopback only) and answers its API."""
import os, re, socket, subprocess, sys, time, urllib.request
from pathlib import Path
import numpy as np, pytest, torch
from fastpipes.core import FastpipesError
from fastpipes.synth import make_marks
from fastpipes.data import image_dls
from fastpipes.train import train_classifier, save_classifier

@pytest.fixture(scope='module')
def run(tmp_path_factory):
    d = tmp_path_factory.mktemp('export')
    make_marks(d/'data', n_train=8, n_test=4, size=48, seed=5)
    dls = image_dls(d/'data', size=(32, 40), bs=8, aug=False, num_workers=0)
    learn = train_classifier(dls, 'resnet18', epochs=1, pretrained=False, quiet=True, seed=0)
    save_classifier(learn, d/'run'/'model')
    return d, learn

@pytest.fixture(scope='module')
def exported(run, tmp_path_factory):
    "`export_run` with a Space: one ONNX export for every test here."
    from fastpipes.export import export_run
    d, _ = run
    t = tmp_path_factory.mktemp('exported')
    return export_run(d/'run', t/'export', space=t/'space', path=d/'data')

def test_onnx_matches_pytorch(run, exported):
    from fastpipes.export import check_onnx, onnx_session
    from fastpipes.cam import cam_maps
    d, learn = run
    fn = exported['onnx']
    sess = onnx_session(fn)
    assert [o.name for o in sess.get_outputs()] == ['probs', 'cams']
    for n in (1, 5):
        diff = check_onnx(learn, fn, torch.rand(n, 3, 32, 40))
        assert diff['probs'] < 1e-4 and diff['cams'] < 1e-4, diff
    # the graph takes [0, 1] images: fed the same pictures, it agrees with the learner's own normalised pass
    xb = learn.dls.valid.one_batch()[0].as_subclass(torch.Tensor).cpu()
    norm = learn.spec.normalize   # the model contract says how inputs were normalised
    x01 = xb*torch.tensor(norm['std']).view(1, -1, 1, 1) + torch.tensor(norm['mean']).view(1, -1, 1, 1)
    maps, probs = cam_maps(learn, xb)
    p, m = sess.run(None, {'image': x01.numpy()})
    assert np.abs(p - probs.cpu().numpy()).max() < 1e-4 and np.abs(m - maps.cpu().numpy()).max() < 1e-4
    assert m.shape[:2] == (len(xb), 2)

def test_safetensors(run, tmp_path):
    from fastpipes.export import export_safetensors
    from safetensors import safe_open
    from safetensors.torch import load_file
    d, learn = run
    fn = export_safetensors(learn, tmp_path/'w.safetensors')
    sd = load_file(str(fn))
    assert all(torch.equal(sd[k], v.cpu()) for k,v in learn.model.state_dict().items())
    with safe_open(str(fn), 'pt') as f: assert f.metadata()['vocab'] == '["circle", "cross"]'

def test_missing_extra_is_one_sentence(monkeypatch, run, tmp_path):
    from fastpipes.export import need_extra, onnx_session
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)   # as if it were not installed
    with pytest.raises(FastpipesError, match=r"pip install 'fastpipes\[app\]'") as e: onnx_session(tmp_path/'m.onnx')
    assert len(str(e.value).splitlines()) == 1 and 'onnxruntime' in str(e.value)
    with pytest.raises(FastpipesError, match=r"`onnxruntime` is not installed"): need_extra('onnxruntime')
    monkeypatch.setitem(sys.modules, 'gradio', None)
    from fastpipes.app import build_app
    with pytest.raises(FastpipesError, match=r"`gradio` is not installed"): build_app(run[0]/'run')

def test_bad_run_folder(tmp_path):
    from fastpipes.export import export_run
    with pytest.raises(FastpipesError, match='holds no model'): export_run(tmp_path)

def _free_port()->int:
    with socket.socket() as s: s.bind(('127.0.0.1', 0)); return s.getsockname()[1]

def wait_http(url:str, proc=None, timeout:float=120)->int:
    "Poll `url` until it answers (bounded in time); the status code."
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc is not None and proc.poll() is not None: raise AssertionError(f"the server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=3) as r: return r.status
        except OSError: time.sleep(0.3)
    raise AssertionError(f"{url} did not answer within {timeout} s")

def test_space_folder(exported, tmp_path, monkeypatch):
    "The fast twin of the subprocess test: the files, and `app.py` imported in this process classifies an example."
    import importlib.util
    space = exported['space']
    assert {p.name for p in space.iterdir()} >= {'app.py', 'inference.py', 'requirements.txt', 'model.onnx', 'model.json', 'README.md', 'examples'}
    assert exported['safetensors'].is_file()
    readme = (space/'README.md').read_text()
    assert readme.startswith('---\n') and 'sdk: gradio' in readme and 'app_file: app.py' in readme
    assert '## Dataset: data' in readme and '24 images in 2 classes (circle, cross)' in readme   # the dataset card
    reqs = (space/'requirements.txt').read_text().split()
    assert {'gradio', 'onnxruntime'} <= {l.split('>')[0] for l in reqs}
    import gradio
    assert f"gradio>={gradio.__version__.split('.')[0]},<{int(gradio.__version__.split('.')[0])+1}" in reqs   # below the next major
    for f in ('app.py', 'inference.py'): assert 'import fastpipes' not in (space/f).read_text()
    spec = importlib.util.spec_from_file_location('space_app', space/'app.py')
    mod = importlib.util.module_from_spec(spec)
    with monkeypatch.context() as m:
        m.setitem(sys.modules, 'fastpipes', None); m.setitem(sys.modules, 'fastpipes.core', None)   # as on the Space
        m.delitem(sys.modules, 'inference', raising=False)
        spec.loader.exec_module(mod)
    inf = mod.inference
    label, probs, ov = inf.classify(mod.predict, str(sorted((space/'examples').iterdir())[0]), mod.META)
    assert label in ('circle', 'cross') and abs(sum(probs.values()) - 1) < 1e-5 and ov.size[1] == 256
    (tmp_path/'e.png').write_bytes(b'')
    with pytest.raises(inf.FastpipesError, match='is empty'): inf.classify(mod.predict, str(tmp_path/'e.png'), mod.META)

@pytest.mark.slow
def test_space_starts_and_answers(exported, tmp_path):
    from gradio_client import Client, handle_file
    space = exported['space']
    port = _free_port()
    env = {k: v for k,v in os.environ.items() if k != 'PYTHONPATH'}
    env.update(GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED='False', PYTHONNOUSERSITE='1')
    # fastpipes must not be needed: run from the Space folder with the package hidden from the import path
    proc = subprocess.Popen([sys.executable, '-I', 'app.py'], cwd=space, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert wait_http(f'http://127.0.0.1:{port}/', proc) == 200
        c = Client(f'http://127.0.0.1:{port}/', verbose=False)
        ex = sorted((space/'examples').iterdir())
        label, probs, cam = c.predict(handle_file(str(ex[-1])), api_name='/classify')
        assert label in ('circle', 'cross') and Path(cam).is_file()
        (tmp_path/'text.png').write_text('not an image')
        with pytest.raises(Exception, match='not an image that can be decoded'): c.predict(handle_file(str(tmp_path/'text.png')), api_name='/classify')
    finally:
        proc.terminate()
        out = proc.communicate(timeout=20)[0].decode(errors='replace')
    # Gradio logs the user's error (`gradio.exceptions.Error`: the one sentence); nothing else may fail
    errors = [l for l in out.splitlines() if re.match(r'^[\w.]+(Error|Exception)\b', l) and not l.startswith(('gradio.exceptions.Error', 'FastpipesError'))]
    assert not errors, out[-3000:]

@pytest.mark.slow
def test_onnx_other_architectures(run, tmp_path):
    "Any `Sequential(body, cam_head)` exports (the fast twin is `test_onnx_matches_pytorch` on a resnet)."
    from torchvision import models as tvm
    from fastpipes.export import export_onnx, check_onnx
    from fastpipes.train import is_cam_model
    dls = image_dls(run[0]/'data', size=64, bs=8, aug=False, num_workers=0)
    for arch in (tvm.mobilenet_v3_small, tvm.squeezenet1_1):
        learn = train_classifier(dls, arch, epochs=1, pretrained=False, quiet=True, seed=0)
        assert is_cam_model(learn.model)
        diff = check_onnx(learn, export_onnx(learn, tmp_path/f'{arch.__name__}.onnx'), torch.rand(3, 3, 64, 64))
        assert diff['probs'] < 1e-4 and diff['cams'] < 1e-4, (arch.__name__, diff)
