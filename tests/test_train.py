"Training, evaluation, pickle-free save/load and batched prediction on tiny generated images (CPU, no downloads)."
import json, os, pickle, random, urllib.error
import numpy as np, pytest, torch
from pathlib import Path
import matplotlib.pyplot as plt
from fastpipes.core import FastpipesError, sha256_file
from fastpipes.data import image_dls, name_dls
import fastpipes.train as train
from fastpipes.train import (train_classifier, evaluate, class_accuracy, confusion_figure, top_losses_figure, history,
                             save_classifier, load_classifier, predict)
from test_data import squares

torch.set_num_threads(1)

def tiny(path, **kw): return image_dls(path, **{'size': 32, 'bs': 8, 'num_workers': 0, **kw})

@pytest.fixture(scope='module')
def ds(tmp_path_factory): return squares(tmp_path_factory.mktemp('train')/'ds', n_train=8, n_test=4)

@pytest.fixture(scope='module')
def learn(ds): return train_classifier(tiny(ds), 'resnet18', epochs=1, pretrained=False, quiet=True, seed=0)

@pytest.fixture(scope='module')
def saved(learn, tmp_path_factory): return save_classifier(learn, tmp_path_factory.mktemp('model')/'model')

def _probs(learn, fns):
    dl = learn.dls.test_dl(fns)
    with learn.no_bar(): return learn.get_preds(dl=dl)[0]

@pytest.mark.parametrize('kw,msg', [
    (dict(epochs=0), 'epochs'), (dict(epochs=-1), 'epochs'), (dict(epochs=1.5), 'epochs'), (dict(epochs='3'), 'epochs'),
    (dict(epochs=True), 'epochs'), (dict(freeze_epochs=-1), 'freeze_epochs'), (dict(freeze_epochs=0.5), 'freeze_epochs'),
    (dict(lr=0), 'lr'), (dict(lr='fast'), 'lr'), (dict(lr=-1e-3), 'lr'),
])
def test_bad_arguments_fail_before_building(ds, monkeypatch, kw, msg):
    def boom(*a, **k): raise AssertionError("a learner was built")
    monkeypatch.setattr(train, 'build_learner', boom)
    with pytest.raises(FastpipesError, match=msg): train_classifier(tiny(ds), pretrained=False, **kw)

def test_bad_dls_and_arch(ds):
    with pytest.raises(FastpipesError, match='DataLoaders'): train_classifier([1, 2], pretrained=False)
    with pytest.raises(FastpipesError): train_classifier(tiny(ds), arch='resnet7', pretrained=False)

def test_offline_pretrained_names_the_fix(ds, tmp_path, monkeypatch):
    monkeypatch.setenv('TORCH_HOME', str(tmp_path/'torch'))
    def offline(*a, **k): raise urllib.error.URLError('[Errno -3] Temporary failure in name resolution')
    monkeypatch.setattr(torch.hub, 'download_url_to_file', offline)
    with pytest.raises(FastpipesError, match='pretrained=False'): train_classifier(tiny(ds), 'resnet18', epochs=1)

def test_trained_learner(learn):
    head = learn.model[-1]
    lins = [m for m in head.modules() if isinstance(m, torch.nn.Linear)]
    assert len(lins) == 1 and lins[0].bias is None          # CAM head from the start
    h = history(learn)
    assert len(h) == 1 and {'train_loss', 'valid_loss', 'accuracy', 'error_rate'} <= set(h.columns)
    assert np.isfinite(h.train_loss).all()
    assert hasattr(learn, 'progress')                       # quiet only for the run

def test_quiet_prints_nothing(ds, capsys):
    train_classifier(tiny(ds), 'resnet18', epochs=1, pretrained=False, quiet=True, cam=False)
    assert capsys.readouterr().out == ''
    train_classifier(tiny(ds), 'resnet18', epochs=1, pretrained=False, quiet=False, cam=False)
    assert 'train_loss' in capsys.readouterr().out

def test_fine_tune_phases_and_default_head(ds):
    l = train_classifier(tiny(ds), 'resnet18', epochs=1, freeze_epochs=1, pretrained=False, quiet=True, cam=False)
    assert history(l).phase.tolist() == ['frozen', 'unfrozen']
    assert any(isinstance(m, torch.nn.BatchNorm1d) for m in l.model[-1].modules())

def test_evaluate(learn, ds):
    ev = evaluate(learn)
    assert ev['n'] == 8 and abs(ev['accuracy'] + ev['error_rate'] - 1) < 1e-6
    loss, acc, err = learn.validate()
    assert abs(ev['loss'] - loss) < 1e-4 and abs(ev['accuracy'] - acc) < 1e-6
    assert set(ev['per_class']) == {'blue', 'red'}
    json.dumps(ev)
    t = class_accuracy(learn, ds/'test')
    assert t.n.tolist() == [4, 4] and (t.accuracy.between(0, 1)).all()
    squares(ds.parent/'other', classes=('green', 'red'), splits=('test',))
    with pytest.raises(FastpipesError, match='green'): evaluate(learn, ds.parent/'other'/'test')

def test_figures(learn):
    assert isinstance(confusion_figure(learn), plt.Figure)
    fig = top_losses_figure(learn, k=4)
    assert len([a for a in fig.axes if a.images]) == 4
    plt.close('all')

def test_round_trip(learn, saved, ds):
    meta = json.loads((saved/'classifier.json').read_text())
    assert meta['arch'] == 'resnet18' and meta['vocab'] == ['blue', 'red'] and meta['cam'] is True and meta['size'] == [32, 32]
    l2 = load_classifier(saved)
    fns = sorted((ds/'test').rglob('*.jpg'))
    assert torch.allclose(_probs(learn, fns), _probs(l2, fns), atol=1e-5)   # fastai's lighting tfms round-trip floats
    a, b = predict(learn, fns), predict(l2, fns)
    assert a.label.tolist() == b.label.tolist() and np.allclose(a.prob, b.prob, atol=1e-5)
    assert load_classifier(saved/'classifier.json').dls.vocab == ['blue', 'red']
    with pytest.raises(FastpipesError, match='no validation set'): evaluate(l2)
    assert evaluate(l2, ds/'test')['accuracy'] == evaluate(learn, ds/'test')['accuracy']
    assert len([a for a in top_losses_figure(l2, k=4, dl=ds/'test').axes if a.images]) == 4
    plt.close('all')

def test_load_never_unpickles(saved, tmp_path):
    "A weights file that would run code when unpickled is refused, and the code does not run."
    bad = _copy(saved, tmp_path/'evil')
    marker = tmp_path/'pwned'
    class Evil:
        def __reduce__(self): return (os.system, (f'touch {marker}',))
    (bad/'weights.pth').write_bytes(pickle.dumps({'w': Evil()}))
    _fix_sha(bad)
    with pytest.raises(FastpipesError, match='safely'): load_classifier(bad)
    assert not marker.exists()
    torch.save({'w': Path('x')}, bad/'weights.pth'); _fix_sha(bad)
    with pytest.raises(FastpipesError, match='safely'): load_classifier(bad)

def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir(): (dst/f.name).write_bytes(f.read_bytes())
    return dst

def _fix_sha(folder, **changes):
    fn = folder/'classifier.json'
    meta = json.loads(fn.read_text())
    meta.update(sha256=sha256_file(folder/'weights.pth'), **changes)
    fn.write_text(json.dumps(meta))

# Random bytes with a valid checksum: these seeds make torch's weights-only unpickler raise UnpicklingError,
# IndexError, KeyError and UnicodeDecodeError in turn (each must become the same one-line error).
@pytest.mark.parametrize('case,msg', [
    *[(f'random_weights_{s}', 'safely') for s in (0, 2, 20, 195)], ('checksum', 'checksum'), ('no_weights', 'weights.pth'), ('not_json', 'JSON'),
    ('missing_keys', 'lacks'), ('foreign_json', 'format'), ('other_arch', 'do not fit'), ('other_vocab', 'do not fit'),
    ('missing', 'does not exist'), ('no_meta', 'classifier.json'), ('bad_size', 'describes the data'),
])
def test_load_refuses(saved, tmp_path, case, msg):
    p = _copy(saved, tmp_path/'m') if case != 'missing' else tmp_path/'nope'
    if case.startswith('random_weights'):
        (p/'weights.pth').write_bytes(random.Random(int(case.rsplit('_', 1)[1])).randbytes(4096)); _fix_sha(p)
    elif case == 'checksum': (p/'weights.pth').write_bytes(os.urandom(4096))
    elif case == 'no_weights': (p/'weights.pth').unlink()
    elif case == 'not_json': (p/'classifier.json').write_bytes(os.urandom(64))
    elif case == 'missing_keys':
        meta = json.loads((p/'classifier.json').read_text()); del meta['vocab']; (p/'classifier.json').write_text(json.dumps(meta))
    elif case == 'foreign_json': (p/'classifier.json').write_text(json.dumps({'model': 'resnet'}))
    elif case == 'other_arch': _fix_sha(p, arch='resnet34')
    elif case == 'other_vocab': _fix_sha(p, vocab=['a', 'b', 'c'])
    elif case == 'no_meta': (p/'classifier.json').unlink()
    elif case == 'bad_size': _fix_sha(p, size='large')
    with pytest.raises(FastpipesError, match=msg) as e: load_classifier(p)
    assert '\n' not in str(e.value)

def test_predict(learn, ds, monkeypatch):
    calls = []
    orig = learn.get_preds
    monkeypatch.setattr(learn, 'get_preds', lambda *a, **k: calls.append(1) or orig(*a, **k))
    df = predict(learn, ds, bs=64, with_probs=True)          # a folder: 24 images, one batch
    assert len(calls) == 1 and len(df) == 24
    assert set(df.label) <= set(learn.dls.vocab)
    assert df.prob.between(0, 1).all() and (df.prob >= 0.5).all()
    assert np.allclose(df[['prob_blue', 'prob_red']].sum(axis=1), 1, atol=1e-5)
    assert len(predict(learn, sorted(ds.rglob('*.jpg'))[0])) == 1
    (ds.parent/'junk.jpg').write_bytes(b'no image')
    with pytest.raises(FastpipesError, match='junk.jpg'): predict(learn, [ds.parent/'junk.jpg'])
    with pytest.raises(FastpipesError, match='not a file'): predict(learn, [ds.parent/'absent.jpg'])

def test_bool_vocab_round_trip(ds, tmp_path):
    pets = tmp_path/'pets'; pets.mkdir()
    for i,fn in enumerate(sorted((ds/'train').rglob('*.jpg'))): (pets/(('Sphynx' if 'red' in fn.name else 'pug')+f'_{i}.jpg')).write_bytes(fn.read_bytes())
    dls = name_dls(pets, lambda n: n[0].isupper(), size=(32, 40), bs=8, num_workers=0)
    l = train_classifier(dls, 'resnet18', epochs=1, pretrained=False, quiet=True, cam=False)
    l2 = load_classifier(save_classifier(l, tmp_path/'m'))
    assert l2.dls.vocab == [False, True]
    assert json.loads((tmp_path/'m'/'classifier.json').read_text())['size'] == [32, 40]
    fns = sorted(pets.iterdir())
    assert torch.allclose(_probs(l, fns), _probs(l2, fns), atol=1e-5)
    assert set(predict(l2, fns).label) <= {False, True}

def _nested(depth): return '[' * depth + ']' * depth

# A crafted classifier.json is data: each bad field is one sentence naming it, before anything is built.
@pytest.mark.parametrize('change,msg', [
    (dict(model_kwargs={'weights': 'DEFAULT'}), 'model_kwargs'), (dict(model_kwargs={'lin_ftrs': [10**9]}), 'model_kwargs'),
    (dict(size=0), 'size'), (dict(size=100000), 'size'), (dict(size=[32, -1]), 'size'),
    (dict(normalize={'mean': [0.5]*3, 'std': [0, 1, 1]}), 'normalize'), (dict(normalize={'mean': [0.5], 'std': [1]}), 'normalize'),
    (dict(cam='no'), 'cam'), (dict(arch='os.system'), 'arch'), (dict(arch=['resnet18']), 'arch'),
    (dict(vocab=['a', 'a']), 'vocab'), (dict(vocab=[{'a': 1}, 'b']), 'vocab'), (dict(resize_method='exec'), 'resize_method'),
    (dict(url='https://example.com/evil.pth'), 'unknown keys'), (dict(pretrained='yes'), 'pretrained'),
])
def test_load_validates_every_field(saved, tmp_path, monkeypatch, change, msg):
    def no_net(*a, **k): raise AssertionError("a download was attempted")
    import torchvision.models._api as tv_api, timm.models._builder as timm_builder
    for mod, name in ((torch.hub, 'load_state_dict_from_url'), (torch.hub, 'download_url_to_file'),
                      (tv_api, 'load_state_dict_from_url'), (timm_builder, 'load_pretrained')):
        monkeypatch.setattr(mod, name, no_net)
    real_load = torch.load
    def safe_load(*a, **k):
        assert k.get('weights_only') is True, "an unpickling load was attempted"
        return real_load(*a, **k)
    monkeypatch.setattr(torch, 'load', safe_load)
    p = _copy(saved, tmp_path/'m'); _fix_sha(p, **change)
    with pytest.raises(FastpipesError, match=msg) as e: load_classifier(p)
    assert '\n' not in str(e.value)

def test_load_refuses_deep_json(saved, tmp_path):
    p = _copy(saved, tmp_path/'m'); (p/'classifier.json').write_text(_nested(100_000))
    with pytest.raises(FastpipesError, match='JSON'): load_classifier(p)

# ---- the recipe: the CAM layer probed first; head options that cannot give exact CAMs --------------------------

from fastpipes.train import probe_head, build_learner, is_cam_model
from fastpipes.cam import cam_maps

def _ce(learn)->float:
    "The loss of `learn` on its training images, through the validation transforms."
    feats, ys = train._pooled(learn)
    return float(torch.nn.functional.cross_entropy(feats @ learn.model[1][2].weight.detach().T, ys))

def _assert_exact_cams(learn):
    "The CAM maps' spatial mean is the model's logits (within 1e-4) on a validation batch."
    xb, _ = learn.dls.valid.one_batch()
    maps, _ = cam_maps(learn, xb)
    learn.model.eval()
    with torch.no_grad(): logits = learn.model(xb)
    assert torch.allclose(maps.mean((2, 3)), logits, atol=1e-4), (maps.mean((2, 3)) - logits).abs().max()

def test_probe_head_fits_the_cam_layer_only(ds):
    learn = build_learner(tiny(ds, aug=False), 'resnet18', pretrained=False)
    body = {k: v.clone() for k,v in learn.model[0].state_dict().items()}
    before = _ce(learn)
    w = probe_head(learn)
    assert torch.equal(w, learn.model[1][2].weight.detach().cpu()) and is_cam_model(learn.model)
    assert _ce(learn) < min(before, 0.5)                                    # it separates the training images
    assert all(torch.equal(v, learn.model[0].state_dict()[k]) for k,v in body.items())   # the body is untouched
    _assert_exact_cams(learn)   # still exact
    with pytest.raises(FastpipesError, match='cam=True'): probe_head(build_learner(tiny(ds), 'resnet18', pretrained=False, cam=False))

def test_pretrained_cam_default_probes_then_fine_tunes(ds, monkeypatch):
    "A pretrained body and the CAM head: the CAM layer is probed once, then every epoch trains the whole network (no frozen epoch)."
    calls = []
    real = train.probe_head
    monkeypatch.setattr(train, 'probe_head', lambda learn, **kw: calls.append(1) or real(learn, **kw))
    l = train_classifier(tiny(ds), 'efficientnet_lite0', epochs=1, quiet=True, seed=0)
    assert calls == [1] and history(l).phase.tolist() == ['train'] and is_cam_model(l.model)
    _assert_exact_cams(l)                                                           # probed, then fine-tuned: exact CAMs
    l = train_classifier(tiny(ds), 'efficientnet_lite0', epochs=1, quiet=True, seed=0, probe=False)
    assert calls == [1] and history(l).phase.tolist() == ['frozen', 'unfrozen']   # without the probe: fastai's fine_tune
    l = train_classifier(tiny(ds), 'resnet18', epochs=1, pretrained=False, quiet=True, seed=0)
    assert calls == [1] and history(l).phase.tolist() == ['train']                  # from scratch: no probe, one cycle

def test_pretrained_without_frozen_epoch_keeps_discriminative_rates(ds):
    "freeze_epochs=0 on a pretrained body is fine_tune's unfrozen phase: the body learns 100 times slower than the head."
    l = train_classifier(tiny(ds), 'efficientnet_lite0', epochs=1, freeze_epochs=0, quiet=True, seed=0, probe=False)
    lrs = [h['lr'] for h in l.opt.hypers]
    assert len(lrs) == 2 and lrs[1] == pytest.approx(100*lrs[0])

from fastai.callback.core import Callback

class _Lrs(Callback):
    "The learning rates of the parameter groups (body, head) at every training step."
    def __init__(self): self.seen = []
    def after_batch(self): self.seen.append([h['lr'] for h in self.opt.hypers])

def _rates(cb):
    "The ratio head/body at every step, and the head's highest rate (the one-cycle's peak falls between a few steps)."
    return {round(head/body, 6) for body, head in cb.seen}, max(head for _, head in cb.seen)

def test_probed_default_rates(ds):
    "After the probe: the head peaks at 2e-3 and the body learns 10 times slower (measured on real photos); both can be set."
    cb = _Lrs()
    train_classifier(tiny(ds), 'efficientnet_lite0', epochs=2, quiet=True, seed=0, cbs=[cb])
    ratios, peak = _rates(cb)
    assert ratios == {10.0} and 1.2e-3 < peak <= 2e-3 * (1 + 1e-6)
    cb = _Lrs()
    train_classifier(tiny(ds), 'efficientnet_lite0', epochs=2, quiet=True, seed=0, cbs=[cb], lr=1e-3, lr_mult=100)
    ratios, peak = _rates(cb)
    assert ratios == {100.0} and 3e-4 < peak <= 5e-4 * (1 + 1e-6)   # fine_tune's unfrozen phase peaks at half the base rate
    with pytest.raises(FastpipesError, match='lr_mult'): train_classifier(tiny(ds), pretrained=False, lr_mult=0)

@pytest.mark.parametrize('kw,msg', [
    (dict(lin_ftrs=[16]), 'lin_ftrs'), (dict(concat_pool=True), 'concat_pool'), (dict(ps=0.2), 'ps'),
    (dict(custom_head=torch.nn.Identity()), 'custom_head'), (dict(y_range=(0, 1)), 'y_range'),
    (dict(cam=False, probe=True), 'probe'),
])
def test_head_options_without_exact_cams_are_one_sentence(ds, monkeypatch, kw, msg):
    def boom(*a, **k): raise AssertionError("a learner was built")
    monkeypatch.setattr(train, 'build_learner', boom)
    with pytest.raises(FastpipesError, match=msg) as e: train_classifier(tiny(ds), pretrained=False, **kw)
    assert len(str(e.value).splitlines()) == 1 and str(e.value).endswith('.')
