"The course's models and Learners (`fastpipes.course`), offline on CPU."
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from PIL import Image

from fastpipes.core import FastpipesError, set_seed
from fastpipes.course.datasets import sklearn_digits, tensor_dls, pets_dls
from fastpipes.course.cnn import (binary_accuracy, mlp, mlp_learner, course_cnn, course_learner, CNN_KINDS, layer_table,
                              shift_flip, BatchAug, pets_model, pets_learner, explain, pets_cam)
from fastpipes.course.core import course_opt

DIGITS = sklearn_digits()

def digit_dls(n=64, size=28, ch=1, bs=16, **kw):
    "A tiny `DataLoaders` of real digits (resized and repeated over channels when asked)."
    x, y = DIGITS
    x = torch.from_numpy(x[:n+n//2])[:, None].float()
    if size != 28: x = torch.nn.functional.interpolate(x, size=(size, size), mode='bilinear')
    x = x.repeat(1, ch, 1, 1).round().clamp(0, 255).to(torch.uint8).numpy()
    return tensor_dls(x[:n], y[:n], x[n:], y[n:n+n//2], bs=bs, vocab=tuple(range(10)), **kw)

def shape_of(kind): return (1, 28, 28) if kind == 'mnist' else (3, 32, 32)

# --- MLP -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize('scale', [False, True])
def test_mlp_zero_vs_one(scale):
    set_seed(1)
    x, y = sklearn_digits(digits=(0, 1))
    valid = np.arange(len(x)) % 3 == 0
    dls = tensor_dls(x[~valid], y[~valid], x[valid], y[valid], bs=32, flat=True, scale=scale)
    if not scale: assert dls.one_batch()[0].max() == 255          # really raw pixels
    learn = mlp_learner(dls)
    with learn.no_bar(): learn.fit(5)
    assert all(np.isfinite(v) for r in learn.recorder.values for v in r)
    assert all(torch.isfinite(p).all() for p in learn.model.parameters())
    assert learn.validate()[1] >= 0.99
    assert 'train_binary_accuracy' in learn.recorder.metric_names and 'valid_binary_accuracy' in learn.recorder.metric_names

def test_binary_accuracy_formula():
    z = torch.tensor([[3.], [-2.], [0.2], [-0.1]]); y = torch.tensor([[1], [1], [0], [0]])
    assert binary_accuracy(z, y) == 0.5                             # σ(z) > 0.5 ⇔ z > 0
    assert binary_accuracy(torch.zeros(3), torch.zeros(3)) == 1     # σ(0) = 0.5 is not > 0.5

def test_mlp_shapes():
    m = mlp((784, 64, 32, 10))
    assert [type(l) for l in m] == [nn.Linear, nn.ReLU, nn.Linear, nn.ReLU, nn.Linear]
    assert layer_table(m, (784,)).params.iloc[-1] == 784*64+64 + 64*32+32 + 32*10+10

def test_mlp_multiclass():
    set_seed(0)
    learn = mlp_learner(digit_dls(n=200, flat=True), sizes=(784, 32, 10), lr=1e-3)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert isinstance(learn.loss_func, nn.CrossEntropyLoss)

# --- CNNs ----------------------------------------------------------------------------------------------------

VARIANTS = [{}, dict(bn=True), dict(dropout=0.1), dict(xavier=True), dict(log_softmax=True), dict(bn=False),
            dict(bn=True, dropout=0.1, xavier=True, log_softmax=True)]

@pytest.mark.parametrize('kind', CNN_KINDS)
@pytest.mark.parametrize('variant', VARIANTS, ids=lambda v: ','.join(v) or 'plain')
def test_course_cnn_builds_and_counts(kind, variant):
    m = course_cnn(kind, **variant)
    t = layer_table(m, shape_of(kind))
    assert t.params.iloc[-1] == sum(p.numel() for p in m.parameters())
    assert t.output_shape.iloc[-2] == (10,)
    assert any(isinstance(l, nn.BatchNorm2d) for l in m) == bool(variant.get('bn', kind == 'deep'))
    assert any(isinstance(l, nn.LogSoftmax) for l in m) == bool(variant.get('log_softmax', kind == 'mnist'))
    if variant.get('dropout'): assert any(isinstance(l, nn.Dropout) and l.p == 0.1 for l in m)
    if variant.get('xavier'):   # Xavier-uniform bound: sqrt(6/(fan_in+fan_out))
        fc = [l for l in m if isinstance(l, nn.Linear)][-1]
        assert fc.weight.abs().max() <= (6/(fc.in_features+fc.out_features))**0.5 and (fc.bias == 0).all()

def test_course_cnn_architectures():
    m = course_cnn('mnist')
    assert [l.out_channels for l in m if isinstance(l, nn.Conv2d)] == [10, 20]
    assert [(l.in_features, l.out_features) for l in m if isinstance(l, nn.Linear)] == [(320, 50), (50, 10)]
    assert any(isinstance(l, nn.Dropout2d) for l in m)
    m = course_cnn('lenet')
    assert [(l.out_channels, l.kernel_size) for l in m if isinstance(l, nn.Conv2d)] == [(6, (5, 5)), (16, (5, 5))]
    assert [l.out_features for l in m if isinstance(l, nn.Linear)] == [120, 84, 10]
    names = [type(l).__name__ for l in course_cnn('conv32')]
    assert names == ['Conv2d', 'Conv2d', 'ReLU', 'MaxPool2d', 'Conv2d', 'Conv2d', 'ReLU', 'MaxPool2d', 'Flatten', 'Linear']
    m = course_cnn('deep')
    convs = [l for l in m if isinstance(l, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.padding) for c in convs] == [(32, (3, 3), (1, 1))]*2 + [(128, (3, 3), (1, 1))]*2
    assert any(isinstance(l, nn.AdaptiveAvgPool2d) for l in m)
    assert layer_table(m, (3, 32, 32)).output_shape.tolist()[-4:-1] == [(128, 1, 1), (128,), (10,)]
    assert course_cnn('lenet', in_ch=1, size=28).conv1.in_channels == 1
    assert course_cnn('deep', size=64).fc.in_features == 128        # global pooling: any size
    with pytest.raises(FastpipesError, match='Unknown net'): course_cnn('resnet')

LEARNER_VARIANTS = [dict(), dict(opt='adam', lr=1e-3), dict(aug=True), dict(bn=True), dict(dropout=0.1),
                    dict(xavier=True), dict(nll=True), dict(nll=False), dict(wd=5e-4)]

@pytest.mark.parametrize('kind', CNN_KINDS)
@pytest.mark.parametrize('variant', LEARNER_VARIANTS, ids=lambda v: ','.join(f'{k}={v}' for k, v in v.items()) or 'plain')
def test_course_learner_one_batch(kind, variant):
    set_seed(0)
    dls = digit_dls(n=16, size=28 if kind == 'mnist' else 32, ch=1 if kind == 'mnist' else 3, bs=16)
    learn = course_learner(dls, kind, **variant)
    before = [p.detach().clone() for p in learn.model.parameters()]
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert np.isfinite(learn.recorder.values[-1]).all()
    assert any(not torch.equal(a, b) for a, b in zip(before, learn.model.parameters()))   # it trained
    assert learn.recorder.metric_names[1:-1] == ['train_loss', 'train_accuracy', 'valid_loss', 'valid_accuracy']
    t = layer_table(learn.model, dls.train.x.shape[1:])
    assert t.params.iloc[-1] == sum(p.numel() for p in learn.model.parameters())
    nll = variant.get('nll', kind == 'mnist')
    assert isinstance(learn.loss_func, nn.NLLLoss) == nll
    assert isinstance(learn.model[-1], nn.LogSoftmax) == nll

def test_optimizers_are_the_course_ones():
    learn = course_learner(digit_dls(n=16), 'mnist', opt='sgd', lr=0.05, mom=0.5, wd=1e-3)
    learn.create_opt()
    g = learn.opt.opt.param_groups[0]
    assert isinstance(learn.opt.opt, torch.optim.SGD) and g['momentum'] == 0.5 and g['weight_decay'] == 1e-3
    learn = course_learner(digit_dls(n=16), 'mnist', opt='adam', wd=1e-4); learn.create_opt()
    assert type(learn.opt.opt) is torch.optim.Adam and learn.opt.opt.param_groups[0]['weight_decay'] == 1e-4
    with pytest.raises(FastpipesError, match='Unknown optimizer'): course_opt('lbfgs')

def test_batch_aug_only_in_training():
    set_seed(0)
    dls = digit_dls(n=16, bs=16)
    learn = course_learner(dls, 'mnist', aug=True)
    seen = []
    class Spy(BatchAug):
        order = 6
        def before_batch(self): seen.append((self.training, self.x.clone()))
    learn.add_cb(Spy())
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    (t_train, x_train), (t_valid, x_valid) = seen[0], seen[-1]
    assert t_train and not t_valid
    assert torch.equal(x_valid, dls.valid.decode_x(dls.valid.x))          # validation untouched
    assert x_train.shape == (16, 1, 28, 28)

def test_shift_flip_keeps_content():
    x = torch.rand(8, 3, 10, 10)
    y = shift_flip(x, shift=0, flip=True)
    for a, b in zip(x, y): assert torch.equal(a, b) or torch.equal(a.flip(-1), b)
    y = shift_flip(x, shift=3)
    assert y.shape == x.shape and (y.sum((1, 2, 3)) <= x.sum((1, 2, 3)) + 1e-4).all()

# --- layer_table ---------------------------------------------------------------------------------------------

def test_layer_table_course_answers():
    t = layer_table(nn.Conv2d(3, 10, 5, stride=1, padding=2), (3, 32, 32))
    assert t.output_shape[0] == (10, 32, 32) and t.params[0] == 760 and t.params.iloc[-1] == 760
    t = layer_table(nn.Conv2d(3, 64, 3, stride=1, padding=1), (3, 32, 32))
    assert t.output_shape[0] == (64, 32, 32) and t.params[0] == 1792

def test_layer_table_shared_frozen_and_mode():
    lin = nn.Linear(4, 4)
    m = nn.Sequential(lin, nn.ReLU(), lin, nn.BatchNorm1d(4))
    m[3].weight.requires_grad_(False)
    t = layer_table(m, (4,))
    assert t.params.tolist() == [20, 0, 0, 4, 24]                  # shared counted once, frozen weight not counted
    assert m.training                                             # mode restored

# --- pets ----------------------------------------------------------------------------------------------------

def test_pets_model_and_offline(monkeypatch):
    m = pets_model(pretrained=False)
    assert (m.fc.in_features, m.fc.out_features) == (512, 1)
    from urllib.error import URLError
    def offline(*a, **k): raise URLError('Temporary failure in name resolution')
    monkeypatch.setattr(torch.hub, 'load_state_dict_from_url', offline)
    with pytest.raises(FastpipesError, match='pretrained=False'): pets_model(pretrained=True)

@pytest.fixture
def pets_dir(tmp_path):
    d = tmp_path/'images'; d.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        a = rng.integers(0, 80, (40, 56, 3), dtype=np.uint8)
        if i % 2: a[5:25, 10:30] = 230     # "cats" carry a bright square
        Image.fromarray(a).save(d/(f'Persian_{i}.jpg' if i % 2 else f'pug_{i}.jpg'))
    return tmp_path

def test_pets_learner_and_explain(pets_dir):
    set_seed(0)
    dls = pets_dls(pets_dir, size=64, bs=4, valid_pct=0.25)
    learn = pets_learner(dls, pretrained=False)
    assert isinstance(learn.opt_func(list(learn.model.parameters()), lr=learn.lr).opt, torch.optim.Adam)
    assert learn.lr == 1e-5
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert np.isfinite(learn.recorder.values[-1]).all()
    img = Image.fromarray(np.random.default_rng(1).integers(0, 255, (50, 70), dtype=np.uint8))   # grey, any size
    res = explain(learn, img)
    assert set(res) >= {'logit', 'prob', 'decision', 'figure', 'cam'}
    assert 0 <= res['prob'] <= 1 and res['decision'] == ('dog' if res['prob'] > 0.5 else 'cat')
    assert abs(res['prob'] - 1/(1+np.exp(-res['logit']))) < 1e-5
    import matplotlib.figure
    assert isinstance(res['figure'], matplotlib.figure.Figure)
    xb = dls.test_dl([img.convert('RGB')]).one_batch()[0]
    logits, cams = pets_cam(learn, xb)
    assert torch.allclose(cams.mean((1, 2)) + learn.model.fc.bias, logits, atol=1e-4)

def test_pets_learner_builds_its_dls(pets_dir):
    learn = pets_learner(path=pets_dir, size=32, bs=2, pretrained=False)
    assert learn.dls.one_batch()[0].shape == (2, 3, 32, 32) and list(learn.dls.vocab) == ['cat', 'dog']
    with pytest.raises(FastpipesError, match='download=True'): pets_learner(path=pets_dir/'none', pretrained=False)

def test_explain_cam_agrees_with_grad_cam(pets_dir):
    "For pooling → Linear(512, 1), Grad-CAM at layer4 is ReLU(CAM) / (h·w): the two modules must agree."
    cam = pytest.importorskip('fastpipes.cam')
    set_seed(0)
    dls = pets_dls(pets_dir, size=64, bs=4, valid_pct=0.25)
    learn = pets_learner(dls, pretrained=False)
    xb = dls.valid.one_batch()[0]
    logits, cams = pets_cam(learn, xb)
    maps, probs = cam.grad_cam(learn, xb, layer=learn.model.layer4)
    hw = cams.shape[1]*cams.shape[2]
    assert maps.shape[1] == 1 and torch.allclose(maps[:, 0], torch.relu(cams)/hw, atol=1e-5)
    assert torch.allclose(probs.reshape(-1), torch.sigmoid(logits), atol=1e-6)

# --- LeanLearner: the same training, records and events as fastai's Learner ----------------------------------

def test_course_learner_records_like_fastai():
    from fastai.learner import Learner, Recorder
    from fastpipes.course.core import LeanLearner
    from fastpipes.course.cnn import ItemAccuracy, BCELogitsLoss
    res = {}
    for cls in (Learner, LeanLearner):
        set_seed(0)
        x, y = sklearn_digits(digits=(0, 1))
        dls = tensor_dls(x[:300], y[:300], x[300:], y[300:], bs=32, flat=True, scale=False)
        learn = cls(dls, mlp((784, 16, 1)), loss_func=BCELogitsLoss(), opt_func=course_opt('adam'), lr=3e-4,
                    metrics=ItemAccuracy(binary=True))
        learn.recorder.train_metrics = True
        with learn.no_bar(), learn.no_logging(): learn.fit(2)
        r = learn.recorder
        assert type(r) is Recorder                                         # fastai's own, for both
        res[cls] = r.metric_names, r.values, [float(v) for v in r.losses], r.lrs, r.iters, learn.smooth_loss
    (n1, v1, l1, lr1, it1, s1), (n2, v2, l2, lr2, it2, s2) = res.values()
    assert n1 == n2 and it1 == it2 and lr1 == lr2 and len(lr1) == 2*10
    assert np.allclose(v1, v2) and np.allclose(l1, l2) and np.isclose(float(s1), float(s2))

def test_course_learner_batches_and_casts():
    from fastai.torch_core import TensorImage, TensorCategory
    from fastai.learner import CastToTensor
    learn = course_learner(digit_dls(n=16), 'mnist')
    b = (torch.zeros(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))
    assert all(o is p for o, p in zip(learn._set_device(b), b))                # already there: untouched
    tb = (TensorImage(torch.zeros(2, 1, 28, 28)), TensorCategory(torch.zeros(2, dtype=torch.long)))
    assert all(isinstance(o, torch.Tensor) for o in learn._set_device(tb))
    cast = learn.cast_to_tensor
    assert type(cast) is CastToTensor
    learn.xb, learn.yb = tb[:1], tb[1:]
    cast.before_batch()
    assert type(learn.xb[0]) is torch.Tensor and type(learn.yb[0]) is torch.Tensor   # subclasses cast, as in fastai

def test_item_accuracy_counts_items():
    from fastpipes.course.cnn import ItemAccuracy
    from types import SimpleNamespace
    m = ItemAccuracy(); m.reset()
    m.accumulate(SimpleNamespace(pred=torch.eye(3)[[0, 1, 2, 0]], yb=(torch.tensor([0, 1, 0, 0]),)))   # 3 of 4
    m.accumulate(SimpleNamespace(pred=torch.eye(3)[[2]], yb=(torch.tensor([1]),)))                      # 0 of 1
    assert m.value == 3/5 and m.name == 'accuracy'
    with pytest.raises(FastpipesError, match='predictions for'):
        m.accumulate(SimpleNamespace(pred=torch.zeros(4, 3), yb=(torch.zeros(3, dtype=torch.long),)))

# --- user errors ---------------------------------------------------------------------------------------------

def test_shape_errors_are_clear():
    with pytest.raises(FastpipesError, match='use flat images'): mlp_learner(digit_dls(n=16))
    with pytest.raises(FastpipesError, match='sizes starting with 784'): mlp_learner(digit_dls(n=16, flat=True), sizes=(100, 1))
    with pytest.raises(FastpipesError, match='do not pass flat=True'): course_learner(digit_dls(n=16, flat=True), 'mnist')
    with pytest.raises(FastpipesError, match='too small'): course_cnn('deep', size=1)
    with pytest.raises(FastpipesError, match='too small'): course_learner(digit_dls(n=16, size=10, ch=3), 'lenet')
    with pytest.raises(FastpipesError, match=r'cannot take inputs of shape \(1, 28, 28\)'): layer_table(course_cnn('lenet'), (1, 28, 28))
    m = course_cnn('lenet'); m.train()
    with pytest.raises(FastpipesError): layer_table(m, (3, 20, 20))
    assert m.training                                                        # mode restored after the error

def test_explain_inputs_and_errors(pets_dir):
    set_seed(0)
    learn = pets_learner(pets_dls(pets_dir, size=64, bs=4, valid_pct=0.25), pretrained=False)
    learn.model.train()
    res = explain(learn, np.zeros((30, 40, 3), np.uint8))                    # a uint8 array
    assert learn.model.training and 0 <= res['prob'] <= 1                   # the model's mode is restored
    assert explain(learn, sorted((pets_dir/'images').iterdir())[0])['cam'].shape == (2, 2)
    with pytest.raises(FastpipesError, match='does not exist'): explain(learn, pets_dir/'nope.jpg')
    with pytest.raises(FastpipesError, match='one-logit'): explain(course_learner(digit_dls(n=16), 'mnist'), DIGITS[0][0])

def test_export_and_load(tmp_path):
    from fastai.learner import load_learner
    set_seed(0)
    learn = course_learner(digit_dls(n=32), 'mnist', opt='adam', lr=1e-3, aug=True)
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    learn.export(tmp_path/'cnn.pkl')
    new = load_learner(tmp_path/'cnn.pkl')
    xb = learn.dls.valid.one_batch()[0]
    learn.model.eval(); new.model.eval()
    assert torch.allclose(learn.model(xb), new.model(xb))
    assert type(new.recorder).__name__ == 'Recorder'
    new.dls = learn.dls
    with new.no_bar(), new.no_logging(): new.fit(1)                         # the loaded learner trains again
    assert isinstance(new.opt.opt, torch.optim.Adam)
