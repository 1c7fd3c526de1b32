"Data-parallel training on two gloo processes, mixed precision, and checkpoints that resume after a kill (CPU, offline)."
import os, pickle, signal, subprocess, sys, time
from functools import partial
from pathlib import Path
import pytest, torch, torch.nn as nn
import torch.distributed as dist
from fastai.callback.core import Callback
from fastai.learner import Learner
from fastai.metrics import accuracy
from fastai.torch_core import params
from fastpipes.core import FastpipesError
from fastpipes.data import image_dls
from fastpipes.distrib import (rank, rank0, world_size, launch, fit_on, distributed, resumable_fine_tune, resumable_one_cycle, read_checkpoint,
                               checkpoint_path, set_precision, precision_of, single_process)
from test_data import squares

torch.set_num_threads(1)
HERE = Path(__file__).parent
FT = dict(epochs=2, base_lr=5e-2, freeze_epochs=2, seed=3)   # 4 epochs: 2 frozen, 2 unfrozen

def _split(m): return [params(m[0]), params(m[1])]

class TrainHistory(Callback):
    "Like fastpipes.train's `TrainHistory`: `learn.train_history` keeps one row per training epoch over every fit."
    order = 55
    def __init__(self): self.rows = []
    def before_fit(self): self.learn.train_history = self.rows
    def before_epoch(self): self.trained = False
    def before_train(self): self.trained = True
    def after_epoch(self):
        if self.trained: self.rows.append(dict(epoch=len(self.rows), valid_loss=float(self.recorder.log[2])))

def tiny(dls, width=8, cbs=None):
    "A two-group CNN (body, head) with BatchNorm and dropout, so freezing, buffers and randomness all matter."
    torch.manual_seed(0)
    body = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, 16, 3, 2, 1), nn.BatchNorm2d(16), nn.ReLU())
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, dls.c))
    return Learner(dls, nn.Sequential(body, head), metrics=accuracy, splitter=_split, cbs=[TrainHistory(), *(cbs or [])])

def dls_of(ds, bs=8, **kw): return image_dls(ds, size=32, bs=bs, num_workers=0, seed=0, **kw)   # augmented: randomness per epoch

def sd(learn): return {k: v.detach().clone() for k,v in learn.model.state_dict().items()}

def assert_close(a, b, tol=1e-5):
    assert a.keys() == b.keys()
    for k in a: assert torch.allclose(a[k].float(), b[k].float(), atol=tol), k

@pytest.fixture(scope='module')
def ds(tmp_path_factory): return squares(tmp_path_factory.mktemp('distrib')/'ds', n_train=12, n_test=6, size=32)

@pytest.fixture(scope='module')
def full(ds, tmp_path_factory):
    "An uninterrupted checkpointed run: its checkpoint and final weights."
    fn = checkpoint_path(tmp_path_factory.mktemp('full'))
    learn = tiny(dls_of(ds))
    with learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, checkpoint=fn, **FT)
    return fn, sd(learn), learn.train_history

# ---- resume -----------------------------------------------------------------------------------------------------

class Stop(Callback):
    "After `n` training epochs: raise KeyboardInterrupt (Ctrl-C) or, with `hang`, stall so that the test can SIGKILL."
    order = 70  # after the `Checkpointer` wrote the epoch's checkpoint
    def __init__(self, n, hang=False): self.n,self.hang = n,hang
    def before_train(self): self.n -= 1
    def after_epoch(self):
        if self.n: return
        if self.hang: time.sleep(600)
        raise KeyboardInterrupt

@pytest.mark.parametrize('n', [1, 2, 3], ids=['mid-frozen', 'phase-boundary', 'mid-unfrozen'])
def test_ctrl_c_then_resume_matches_uninterrupted(ds, full, tmp_path, n):
    fn = checkpoint_path(tmp_path)
    learn = tiny(dls_of(ds), cbs=[Stop(n)])
    with pytest.raises(KeyboardInterrupt), learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, checkpoint=fn, **FT)
    assert read_checkpoint(fn)['done'] == n
    learn = tiny(dls_of(ds))
    with learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, checkpoint=fn, resume=True, **FT)
    assert_close(sd(learn), full[1])
    assert read_checkpoint(fn)['done'] == 4
    assert [r['epoch'] for r in learn.train_history] == [0, 1, 2, 3]          # the history of the finished epochs came back
    assert learn.train_history[:n] == full[2][:n]

def test_without_per_epoch_seeds_a_resume_would_differ(ds, full, tmp_path):
    "The test above can fail: a resumed run with another seed ends elsewhere."
    fn = checkpoint_path(tmp_path)
    learn = tiny(dls_of(ds))
    with learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, checkpoint=fn, **{**FT, 'seed': 4})
    assert max((a.float()-b.float()).abs().max() for a,b in zip(sd(learn).values(), full[1].values())) > 1e-3

def _train_main(ds, fn):
    "Entry point of the killed subprocess: the `full` run, stalling after its first checkpoint."
    learn = tiny(dls_of(Path(ds)), cbs=[Stop(1, hang=True)])
    with learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, checkpoint=Path(fn), **FT)

def test_sigkill_after_first_checkpoint_then_resume(ds, full, tmp_path):
    fn = checkpoint_path(tmp_path)
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get('PYTHONPATH', '')]), 'OMP_NUM_THREADS': '1'}
    p = subprocess.Popen([sys.executable, '-c', f'import test_distrib as t; t._train_main({str(ds)!r}, {str(fn)!r})'],
                         env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not fn.exists() and p.poll() is None and time.monotonic() < deadline: time.sleep(0.1)
        assert fn.exists(), f"no checkpoint: {p.poll()} {p.stderr.read().decode()[-2000:] if p.poll() is not None else ''}"
        os.kill(p.pid, signal.SIGKILL)
    finally:
        if p.poll() is None: p.kill()
        p.wait(30); p.stderr.close()
    assert p.returncode == -signal.SIGKILL
    assert read_checkpoint(fn)['done'] == 1 and not list(fn.parent.glob('*.part'))
    learn = tiny(dls_of(ds))
    with learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, checkpoint=fn, resume=True, **FT)
    assert_close(sd(learn), full[1])

def test_resuming_a_finished_run_trains_nothing(ds, full):
    learn = tiny(dls_of(ds))
    with learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, checkpoint=full[0], resume=True, **FT)
    assert_close(sd(learn), full[1], tol=0)
    assert getattr(learn.recorder, "values", []) == []   # no fit ran

def test_resume_without_checkpoint_starts_afresh(ds, full, tmp_path):
    learn = tiny(dls_of(ds))
    with learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, checkpoint=checkpoint_path(tmp_path), resume=True, **FT)
    assert_close(sd(learn), full[1])

@pytest.mark.parametrize('make,kw,msg', [
    (lambda ds: tiny(dls_of(ds), width=4), {}, 'written for another architecture'),
    (lambda ds: tiny(dls_of(ds, valid_pct=0.3)), {}, 'written for another dataset'),
    (lambda ds: tiny(dls_of(ds)), dict(epochs=3), 'written with epochs=2, not 3'),
    (lambda ds: tiny(dls_of(ds, bs=4)), {}, 'written with bs=8, not 4'),
    (lambda ds: set_precision(tiny(dls_of(ds)), 'bf16'), {}, "written with precision='fp32', not 'bf16'"),
])
def test_wrong_checkpoint_is_one_sentence(ds, full, make, kw, msg):
    learn = make(ds)
    with pytest.raises(FastpipesError, match=msg) as e: resumable_fine_tune(learn, checkpoint=full[0], resume=True, **{**FT, **kw})
    assert '\n' not in str(e.value) and str(e.value).endswith('.')

def test_other_vocab_is_one_sentence(ds, full, tmp_path):
    import shutil
    other = tmp_path/'ds'; shutil.copytree(ds, other)
    for split in ('train', 'test'): (other/split/'red').rename(other/split/'green')
    with pytest.raises(FastpipesError, match='other classes'):
        resumable_fine_tune(tiny(image_dls(other, size=32, bs=8, num_workers=0, seed=0)), checkpoint=full[0], resume=True, **FT)

def test_other_input_size_is_one_sentence(ds, full):
    "`--resume` with another `--size`: the input size is part of the fingerprint."
    learn = tiny(image_dls(ds, size=48, bs=8, num_workers=0, seed=0))
    with pytest.raises(FastpipesError, match='written for another input size'):
        resumable_fine_tune(learn, checkpoint=full[0], resume=True, **FT)

def _tamper(src, dst, **changes):
    "A copy of the checkpoint `src` with its entries changed (a function of the old value, or the new value)."
    ck = torch.load(src, weights_only=True)
    for k,v in changes.items(): ck[k] = v(ck[k]) if callable(v) else v
    torch.save(ck, dst); return dst

def _drop_first(sd): return dict(list(sd.items())[1:])
def _reshape_first(sd): k = next(iter(sd)); return {**sd, k: sd[k].flatten()}

@pytest.mark.parametrize('change,msg', [
    (dict(model=_drop_first), 'do not fit this model'),
    (dict(model=_reshape_first), 'do not fit this model'),
    (dict(history='{"epoch": 1}'), 'history is not a list'),
    (dict(history=7), 'history is not a list'),
    (dict(done=-3), 'count of finished epochs is -3'),
    (dict(done='2'), "count of finished epochs is '2'"),
    (dict(params=[1]), 'settings are missing'),
    (dict(done=9), 'says 9 epochs are done, more than'),
], ids=['missing-tensor', 'reshaped-tensor', 'history-dict', 'history-int', 'done-negative', 'done-str', 'params', 'done-too-many'])
def test_malformed_checkpoint_is_one_sentence(ds, full, tmp_path, change, msg):
    "A checkpoint whose structure was damaged (or crafted) is one sentence, never a RuntimeError or TypeError from inside."
    fn = _tamper(full[0], tmp_path/'last.pth', **change)
    with pytest.raises(FastpipesError, match=msg) as e: resumable_fine_tune(tiny(dls_of(ds)), checkpoint=fn, resume=True, **FT)
    assert '\n' not in str(e.value) and str(e.value).endswith('.')

def test_foreign_files_are_refused_without_running_them(ds, tmp_path):
    marker = tmp_path/'pwned'
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    (bad := tmp_path/'evil.pth').write_bytes(pickle.dumps({'format': 'fastpipes-checkpoint/1', 'model': Evil()}))
    (junk := tmp_path/'junk.pth').write_bytes(os.urandom(256))
    torch.save({'format': 'something else', 'model': {}}, other := tmp_path/'other.pth')
    for fn in (bad, junk, other):
        with pytest.raises(FastpipesError, match='not a fastpipes checkpoint'):
            resumable_fine_tune(tiny(dls_of(ds)), checkpoint=fn, resume=True, **FT)
    assert not marker.exists()

# ---- two processes ---------------------------------------------------------------------------------------------

def _rank_run(ds, out):
    "One rank of a data-parallel run: train, dump this rank's weights (for the test), write the model on rank 0 only."
    learn = tiny(dls_of(ds, bs=4))           # 2 processes × 4 = the one-process batch of 8
    with distributed(learn), learn.no_bar(), learn.no_logging():
        resumable_fine_tune(learn, checkpoint=checkpoint_path(out/'run'), **FT)
    torch.save(sd(learn), out/'ranks'/f'{rank()}.pth')
    if rank0():
        world = world_size()
        with single_process():                 # rank 0 alone: the whole validation set, no gathering
            torch.save(sd(learn), out/'run'/'model.pth')
            return dict(world=world, backend=dist.get_backend(), valid=[float(v) for v in learn.validate()])

def test_two_gloo_processes(ds, tmp_path):
    (tmp_path/'ranks').mkdir(); (tmp_path/'run').mkdir()
    res = launch(_rank_run, ds, tmp_path, n=2)
    assert res['world'] == 2 and res['backend'] == 'gloo'
    r0, r1 = (torch.load(tmp_path/'ranks'/f'{r}.pth', weights_only=True) for r in (0, 1))
    assert_close(r0, r1, tol=0)                                     # identical weights and BatchNorm statistics
    assert sorted(p.name for p in (tmp_path/'run').rglob('*') if p.is_file()) == ['last.pth', 'model.pth']
    learn = tiny(dls_of(ds))                                        # one process, the whole validation set
    learn.model.load_state_dict(torch.load(tmp_path/'run'/'model.pth', weights_only=True))
    with learn.no_bar(): valid = [float(v) for v in learn.validate()]
    assert valid == pytest.approx(res['valid'], abs=1e-6)
    assert read_checkpoint(tmp_path/'run'/'checkpoints'/'last.pth')['params']['processes'] == 2

def test_fit_on_hands_back_rank0s_training(ds, tmp_path):
    learn = tiny(dls_of(ds, bs=4))
    before = sd(learn)
    fit_on(learn, partial(resumable_fine_tune, checkpoint=checkpoint_path(tmp_path), **FT), n=2)
    ck = read_checkpoint(checkpoint_path(tmp_path))
    assert_close(sd(learn), ck['model'], tol=0)
    assert max((a.float()-b.float()).abs().max() for a,b in zip(sd(learn).values(), before.values())) > 1e-3
    assert [r['epoch'] for r in learn.train_history] == [0, 1, 2, 3] and len(learn.recorder.values) == 2
    with learn.no_bar(): learn.validate()                      # a later fit-like call keeps the history
    assert len(learn.train_history) == 4

def _fails():
    if rank() == 1: raise FastpipesError("Rank 1 found a problem; fix it.")
    dist.barrier()

def _crashes():
    if rank() == 1: raise ValueError("boom")
    dist.barrier()

def test_launch_errors_and_results():
    with pytest.raises(FastpipesError, match='^Rank 1 found a problem; fix it.$'): launch(_fails, n=2)
    with pytest.raises(RuntimeError, match='Process 1 of 2 failed: ValueError: boom'): launch(_crashes, n=2)
    assert launch(world_size, n=2) == 2 and launch(world_size, n=1) == 1
    with pytest.raises(FastpipesError, match='whole number'): launch(world_size, n=0)

# ---- precision -------------------------------------------------------------------------------------------------

def test_precision_on_cpu(ds):
    with pytest.raises(FastpipesError, match='fp16 mixed precision needs a CUDA GPU') as e: set_precision(tiny(dls_of(ds)), 'fp16')
    assert '\n' not in str(e.value)
    learn = set_precision(tiny(dls_of(ds)), 'bf16')
    assert precision_of(learn) == 'bf16'
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-2)
    assert all(torch.isfinite(torch.tensor(learn.recorder.values[-1][:2])))
    assert learn.model[0][0].weight.dtype == torch.float32      # autocast: the weights stay float32
    assert precision_of(set_precision(learn, 'fp32')) == 'fp32'

@pytest.mark.gpu
def test_fp16_on_cuda(ds):
    dls = dls_of(ds).to('cuda')
    learn = set_precision(tiny(dls), 'fp16')
    with learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, **FT)
    assert precision_of(learn) == 'fp16' and all(torch.isfinite(torch.tensor(learn.recorder.values[-1][:2])))

def _nccl_rank(ds):
    learn = tiny(dls_of(ds, bs=4))
    with distributed(learn), learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, **FT)
    w = torch.cat([v.float().flatten() for v in sd(learn).values()]).cuda()
    ws = [torch.zeros_like(w) for _ in range(world_size())]; dist.all_gather(ws, w)
    return dist.get_backend(), all(torch.equal(ws[0], x) for x in ws)

@pytest.mark.gpu
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs two GPUs")
def test_two_nccl_processes(ds):
    assert launch(_nccl_rank, ds, n=2) == ('nccl', True)

# ---- Ctrl-C on two processes (slow; fast twins: test_sigkill_after_first_checkpoint_then_resume, test_two_gloo_processes)

def _rank_resumable(ds, run, stop):
    "One rank of a resumable two-process run; `stop`: stall after that many epochs (for the test's Ctrl-C)."
    learn = tiny(dls_of(ds, bs=4), cbs=[Stop(stop, hang=True)] if stop else [])
    with distributed(learn), learn.no_bar(), learn.no_logging():
        resumable_fine_tune(learn, checkpoint=checkpoint_path(run), resume=True, **FT)
    if rank0(): torch.save(sd(learn), Path(run)/'model.pth')

def _launch_main(ds, run, stop):
    "What `fastpipes train --processes 2 --resume` does around the library: exit 130 on Ctrl-C."
    try: launch(_rank_resumable, Path(ds), Path(run), stop, n=2)
    except KeyboardInterrupt: sys.exit(130)

@pytest.mark.slow
def test_ctrl_c_on_two_processes_then_resume(ds, tmp_path):
    run, fn = tmp_path/'run', checkpoint_path(tmp_path/'run')
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get('PYTHONPATH', '')]), 'OMP_NUM_THREADS': '1'}
    p = subprocess.Popen([sys.executable, '-c', f'import test_distrib as t; t._launch_main({str(ds)!r}, {str(run)!r}, 3)'],
                         env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while p.poll() is None and time.monotonic() < deadline:
            if fn.exists() and read_checkpoint(fn)['done'] == 3: break
            time.sleep(0.2)
        assert p.poll() is None, p.stderr.read().decode()[-2000:]
        os.killpg(p.pid, signal.SIGINT)                                   # Ctrl-C reaches the whole process group
        p.wait(60)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait(30)
        p.stderr.close()
    assert p.returncode == 130
    assert read_checkpoint(fn)['done'] == 3 and not (run/'model.pth').exists()
    launch(_rank_resumable, ds, run, 0, n=2)                             # --resume
    launch(_rank_resumable, ds, tmp_path/'full', 0, n=2)                 # an uninterrupted two-process run
    assert_close(torch.load(run/'model.pth', weights_only=True), torch.load(tmp_path/'full'/'model.pth', weights_only=True))

def test_sigterm_to_the_launcher_exits_130_and_cleans_up(ds, tmp_path):
    "SIGTERM to the parent of `launch` (as `kill` or a job scheduler sends it) stops both processes, removes the launch's temporary folder and exits 130."
    run, fn, tmp = tmp_path/'run', checkpoint_path(tmp_path/'run'), tmp_path/'tmp'
    tmp.mkdir()
    env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(HERE), str(HERE.parent), os.environ.get('PYTHONPATH', '')]),
           'OMP_NUM_THREADS': '1', 'TMPDIR': str(tmp)}
    p = subprocess.Popen([sys.executable, '-c', f'import test_distrib as t; t._launch_main({str(ds)!r}, {str(run)!r}, 1)'],
                         env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while p.poll() is None and time.monotonic() < deadline and not fn.exists(): time.sleep(0.2)
        assert p.poll() is None and list(tmp.glob('fastpipes-launch-*')), p.stderr.read().decode()[-2000:]
        p.send_signal(signal.SIGTERM)                                     # the parent alone, as `kill PID` does
        p.wait(60)
    finally:
        if p.poll() is None: os.killpg(p.pid, signal.SIGKILL); p.wait(30)
        p.stderr.close()
    assert p.returncode == 130
    assert not list(tmp.glob('fastpipes-launch-*'))
    assert read_checkpoint(fn)['done'] == 1                               # what was done is kept: `--resume` goes on from it

@pytest.mark.gpu
def test_ctrl_c_then_resume_on_cuda_fp16(ds, tmp_path):
    "The checkpoint's optimiser and gradient-scaler states go back to the GPU; the resumed run ends where an uninterrupted one does."
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    def run(fn, cbs=(), resume=False):
        learn = set_precision(tiny(dls_of(ds).to('cuda'), cbs=list(cbs)), 'fp16')
        with learn.no_bar(), learn.no_logging(): resumable_fine_tune(learn, checkpoint=fn, resume=resume, **FT)
        return sd(learn)
    full = run(checkpoint_path(tmp_path/'full'))
    fn = checkpoint_path(tmp_path/'cut')
    with pytest.raises(KeyboardInterrupt): run(fn, [Stop(3)])
    assert read_checkpoint(fn)['scaler']
    assert_close(run(fn, resume=True), full, tol=1e-3)

def test_resume_needs_a_checkpoint_file(ds):
    with pytest.raises(FastpipesError, match='Resuming needs the checkpoint file'): resumable_fine_tune(tiny(dls_of(ds)), resume=True, **FT)

def test_one_cycle_from_scratch_resumes(ds, tmp_path):
    "Training from scratch (no frozen phase): `unfreeze` + `fit_one_cycle`, interrupted and resumed."
    def run(fn, cbs=(), resume=False):
        learn = tiny(dls_of(ds), cbs=list(cbs))
        with learn.no_bar(), learn.no_logging(): resumable_one_cycle(learn, 3, 5e-2, checkpoint=fn, resume=resume, seed=3)
        return sd(learn)
    full = run(checkpoint_path(tmp_path/'full'))
    fn = checkpoint_path(tmp_path/'cut')
    with pytest.raises(KeyboardInterrupt): run(fn, [Stop(2)])
    assert_close(run(fn, resume=True), full)
    with pytest.raises(FastpipesError, match="schedule='one_cycle', not 'fine_tune'"):
        resumable_fine_tune(tiny(dls_of(ds)), checkpoint=fn, resume=True, **FT)

@pytest.mark.slow
def test_spawned_processes_train_like_forked_ones(ds, tmp_path):
    "Where CUDA is in use before the launch, processes are spawned and the Learner pickled; on a CPU the weights are the fork's (fast twin: test_fit_on_hands_back_rank0s_training)."
    learn, forked = tiny(dls_of(ds, bs=4)), tiny(dls_of(ds, bs=4))
    fit_on(learn, partial(resumable_fine_tune, checkpoint=checkpoint_path(tmp_path), **FT), n=2, start_method='spawn')
    assert_close(sd(learn), read_checkpoint(checkpoint_path(tmp_path))['model'], tol=0)
    fit_on(forked, partial(resumable_fine_tune, **FT), n=2)
    assert_close(sd(learn), sd(forked))

def test_a_group_that_fails_to_form_is_formed_again_once(tmp_path, monkeypatch):
    "A lost loopback connection while the processes meet (before `fn` runs) is retried once, then one sentence."
    import fastpipes.distrib as D
    real, flag = D.dist.init_process_group, tmp_path/'failed-once'
    def flaky(*a, rank=0, always=False, **kw):
        if rank == 1 and (always or not flag.exists()):
            flag.touch(); raise RuntimeError("Gloo connectFullMesh failed: Connection closed by peer")
        return real(*a, rank=rank, **kw)
    monkeypatch.setattr(D.dist, 'init_process_group', flaky)     # the forked processes inherit the patch
    assert launch(world_size, n=2) == 2 and flag.exists()
    monkeypatch.setattr(D.dist, 'init_process_group', partial(flaky, always=True))
    with pytest.raises(RuntimeError, match='could not form a process group'): launch(world_size, n=2)
