"""A run folder and its images under a run's feet: an image deleted or cut short after the DataLoaders listed it (one
process or two) ends `train_run` with one sentence naming it; two trains into one `--out` at once: the second exits 2
with one sentence and the first finishes."""
import os, subprocess, sys, threading, time
from pathlib import Path
import pytest
from fastai.callback.core import Callback
from fastpipes.core import FastpipesError
from fastpipes.synth import make_marks

TIMEOUT = 300   # seconds any one wait of these tests may take
TRAIN = dict(size=32, bs=8, arch='resnet18', pretrained=False, epochs=1, aug=False, quiet=True)

@pytest.fixture
def data(tmp_path):
    make_marks(tmp_path/'data', n_train=6, n_test=3, size=48, seed=5)
    return tmp_path/'data'

class Break(Callback):
    "When training starts (the DataLoaders are built), delete or cut short `fn` (in rank 0, the others waiting for it)."
    def __init__(self, fn, how): self.fn, self.how = Path(fn), how
    def before_fit(self):
        from fastpipes.distrib import rank0, barrier
        if getattr(self.learn, 'lr_finder', None): return
        if rank0() and self.fn.exists():
            if self.how == 'delete': self.fn.unlink()
            else: self.fn.write_bytes(self.fn.read_bytes()[:200])
        barrier()

@pytest.mark.parametrize('how', ['delete', 'truncate'])
def test_image_broken_during_training(data, tmp_path, how):
    from fastpipes.pipeline import train_run
    fn = sorted((data/'train'/'cross').iterdir())[0]
    with pytest.raises(FastpipesError) as e: train_run(data, tmp_path/'run', cbs=[Break(fn, how)], **TRAIN)
    msg = str(e.value)
    assert f"The image `{fn}` changed during training" in msg and len(msg.splitlines()) == 1, msg
    assert ('it is gone' if how == 'delete' else 'it no longer decodes') in msg

def _train(path, out, kw):
    from fastpipes.pipeline import train_run
    return train_run(path, out, **kw)[1]

@pytest.mark.slow
def test_image_broken_during_training_two_processes(data, tmp_path):
    "`fastpipes train --processes 2`'s path: the process that meets the broken image names it; the parent raises that sentence."
    from fastpipes.distrib import launch
    fn = sorted((data/'train'/'circle').iterdir())[1]
    with pytest.raises(FastpipesError) as e: launch(_train, data, tmp_path/'run', dict(cbs=[Break(fn, 'truncate')], **TRAIN), n=2)
    msg = str(e.value)
    assert f"The image `{fn}` changed during training (it no longer decodes" in msg and len(msg.splitlines()) == 1, msg

def _cli(*args, env=None):
    return subprocess.run([sys.executable, '-m', 'fastpipes.cli', *map(str, args)], capture_output=True, text=True,
                          timeout=TIMEOUT, env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path), **(env or {})})

TRAIN_ARGS = ['--size', '32', '--bs', '8', '--arch', 'resnet18', '--no-pretrained', '--epochs', '1', '--no-aug', '--quiet']

def test_train_into_a_run_folder_in_use(data, tmp_path, capsys):
    "Another process holds the run folder (as a running train does): `fastpipes train` into it exits 2 with one sentence, touching nothing."
    from fastpipes.cli import main
    out = tmp_path/'run'; out.mkdir()
    holder = subprocess.Popen([sys.executable, '-c', 'import sys; from fastpipes.core import dataset_lock\n'
                               f'with dataset_lock({str(out)!r}): print("held", flush=True); sys.stdin.read()'],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env={**os.environ, 'PYTHONPATH': os.pathsep.join(sys.path)})
    try:
        assert holder.stdout.readline().strip() == 'held'
        assert main(['train', str(data), '--out', str(out), *TRAIN_ARGS]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"fastpipes: error: The folder `{out}` is in use by another fastpipes run; wait for it to finish, then run again."], err
        assert sorted(p.name for p in out.iterdir()) == ['.fastpipes.lock']
    finally:
        holder.communicate('', timeout=TIMEOUT)
    from fastpipes.core import dataset_lock
    with dataset_lock(out): pass   # free again once the other run ends

class Hold(Callback):
    "Keep training at its first epoch until `go` exists (bounded), so another train can try the same folder meanwhile."
    def __init__(self, started, go): self.started, self.go = started, Path(go)
    def before_epoch(self):
        self.started.set()
        deadline = time.monotonic() + TIMEOUT
        while not self.go.exists() and time.monotonic() < deadline: time.sleep(0.05)

@pytest.mark.slow
def test_two_trains_into_one_out(data, tmp_path):
    "Two real trains into one `--out` at once: the second (`fastpipes train` in its own process) exits 2, the first finishes."
    from fastpipes.pipeline import train_run
    out, started, go, res = tmp_path/'run', threading.Event(), tmp_path/'go', {}
    def first():
        try: res['metrics'] = train_run(data, out, cbs=[Hold(started, go)], **TRAIN)[1]
        except BaseException as e: res['error'] = e
    t = threading.Thread(target=first, daemon=True); t.start()
    try:
        assert started.wait(TIMEOUT)
        second = _cli('train', data, '--out', out, *TRAIN_ARGS)
    finally: go.touch()
    t.join(TIMEOUT)
    assert second.returncode == 2, second.stderr
    assert second.stderr.strip().splitlines() == [f"fastpipes: error: The folder `{out}` is in use by another fastpipes run; wait for it to finish, then run again."]
    assert 'error' not in res and 0 <= res['metrics']['accuracy'] <= 1 and (out/'report.html').is_file()
