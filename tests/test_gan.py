"Tests of `fastpipes.gan`: shapes, seeds, saving, bad input, collapse, and sample quality on real digits."
import time, warnings
import numpy as np, pytest, torch, torch.nn as nn
from fastpipes.core import FastpipesError, set_seed
from fastpipes.course.datasets import sklearn_digits, save_idx
from fastpipes.course.gan import (gan_learner, generate, show_samples, save_generator, load_generator, digit_images,
                           DigitGenerator, digit_classifier, sample_scores, diversity)

@pytest.fixture(scope='module')
def digits(): return sklearn_digits(28)

@pytest.fixture(scope='module')
def eights(digits): return digits[0][digits[1] == 8]

def _fit(learn, n):
    with learn.no_bar(), learn.no_logging(): learn.fit(n)
    return learn

def _one_sentence(e):
    msg = str(e.value)
    assert '\n' not in msg and msg.endswith('.') and msg.count('. ') == 0, msg

@pytest.mark.parametrize('shape,c', [((4, 28, 28), 1), ((4, 1, 28, 28), 1), ((4, 3, 32, 32), 3), ((4, 1, 12, 20), 1)])
def test_generated_shapes_and_range(shape, c):
    learn = gan_learner(np.random.randint(0, 256, shape, dtype=np.uint8), nz=3, bs=4, epoch_size=8)
    x = generate(learn, 5, seed=0)
    assert x.shape == (5, c, *shape[-2:]) and x.dtype == torch.float32
    assert 0 <= x.min() and x.max() <= 1

def test_default_is_six_noise_to_28px_digits(eights):
    "The exam's setting: `(n, 6)` noise in, `(n, 1, 28, 28)` digits out, Adam with GAN momentum."
    learn = gan_learner(eights)
    xb, yb = learn.dls.one_batch()
    assert xb.shape == (64, 6) and yb.shape == (64, 1, 28, 28)
    assert learn.model.generator(torch.randn(5, 6)).shape == (5, 1, 28, 28)
    assert learn.model.critic(yb).shape == (64,)
    learn.create_opt()
    assert learn.opt.hypers[0]['mom'] == 0.5 and learn.opt.hypers[0]['sqr_mom'] == 0.999

@pytest.mark.parametrize('loss', ['bce', 'wgan-gp'])
def test_fit_emits_no_warnings(eights, loss):
    "fastai's `GANTrainer` warns about shadowing `generator`, `critic`, `gen_mode`; ours does not."
    set_seed(0)
    learn = gan_learner(eights, loss=loss, bs=16, epoch_size=32)
    with warnings.catch_warnings(record=True) as ws:
        warnings.simplefilter('always')
        _fit(learn, 1)
    assert not [w for w in ws if 'shadowing' in str(w.message)], [str(w.message) for w in ws]
    assert learn.gan_trainer.generator is learn.model.generator and learn.gan_trainer.gen_mode == learn.model.gen_mode

def test_float_and_tensor_inputs(eights):
    for imgs in (eights/255., torch.tensor(eights), torch.tensor(eights).float(), eights.astype(np.float32)):
        learn = gan_learner(imgs, bs=8, epoch_size=16)
        yb = learn.dls.one_batch()[1]
        assert -1 <= yb.min() and yb.max() <= 1 and yb.max() > 0.5

def test_seed_is_deterministic_and_private(eights):
    learn = gan_learner(eights, bs=16, epoch_size=32)
    a = generate(learn, 8, seed=3)
    state = torch.get_rng_state()
    assert torch.equal(generate(learn, 8, seed=3), a)
    assert torch.equal(torch.get_rng_state(), state)
    assert not torch.equal(generate(learn, 8, seed=4), a)
    assert learn.model.generator.training  # generate restores the mode it found

def test_training_is_deterministic(eights):
    ws = []
    for _ in range(2):
        set_seed(0)
        learn = _fit(gan_learner(eights, bs=16, epoch_size=64), 1)
        ws.append(generate(learn, 4, seed=0))
    assert torch.equal(*ws)

def test_losses_per_epoch(eights):
    set_seed(0)
    learn = _fit(gan_learner(eights, bs=16, epoch_size=64), 2)
    assert list(learn.recorder.metric_names[1:4]) == ['train_loss', 'gen_loss', 'crit_loss']
    assert len(learn.recorder.values) == 2 and np.isfinite(np.array(learn.recorder.values, dtype=float)).all()
    assert len(learn.gan_monitor.hist) == 2

def test_save_load_round_trip(tmp_path, eights):
    set_seed(0)
    learn = _fit(gan_learner(eights, nz=4, bs=16, epoch_size=32), 1)
    fn = save_generator(learn, tmp_path/'sub'/'g.pth')
    assert fn.exists() and fn.with_suffix('.json').exists()
    g = load_generator(fn)
    assert isinstance(g, DigitGenerator) and g.nz == 4 and not g.training
    assert torch.equal(generate(g, 6, seed=1), generate(learn, 6, seed=1))
    g3 = DigitGenerator(5, (16, 12), 3, nf=8)
    g3b = load_generator(save_generator(g3, tmp_path/'g3.pth'))
    assert torch.equal(generate(g3b, 2, seed=0), generate(g3, 2, seed=0))
    with pytest.raises(FastpipesError, match='save_generator') as e: load_generator(tmp_path/'missing.pth')
    _one_sentence(e)

def test_show_samples(eights):
    import matplotlib; matplotlib.use('Agg')
    fig = show_samples(gan_learner(eights, bs=16, epoch_size=32), 3, 4, seed=0)
    assert len(fig.axes) == 12

@pytest.mark.parametrize('images,kw,match', [
    (np.zeros((3, 2, 28, 28), np.uint8), {}, 'channels'),
    (np.zeros((3, 28, 28, 3), np.uint8), {}, 'channels'),
    (np.zeros((3, 30, 30), np.uint8), {}, 'multiples of 4'),
    (np.zeros((28, 28), np.uint8), {}, 'shaped'),
    (np.zeros((0, 28, 28), np.uint8), {}, 'no images'),
    (np.zeros((3, 28, 28)), dict(nz=0), '`nz` must be a whole number >= 1, not 0.'),
    (np.zeros((3, 28, 28)), dict(nz=-2), '`nz` must be a whole number >= 1'),
    (np.zeros((3, 28, 28)), dict(nz=2.5), '`nz` must be a whole number >= 1'),
    (np.full((3, 28, 28), np.nan), {}, 'NaN'),
    (np.zeros((3, 28, 28)), dict(loss='hinge'), 'must be one of'),
])
def test_bad_input(images, kw, match):
    with pytest.raises(FastpipesError, match=match) as e: gan_learner(images, **kw)
    _one_sentence(e)

@pytest.mark.parametrize('call,match', [
    (lambda l: generate(l, 0), '`n` must be a whole number >= 1'),
    (lambda l: generate(l, -3), '`n` must be a whole number >= 1'),
    (lambda l: generate(nn.Linear(6, 6), 2), 'gan_learner'),
    (lambda l: show_samples(l, 0, 4), '`nrows` must be a whole number >= 1'),
    (lambda l: save_generator(nn.Linear(6, 6), 'x.pth'), 'gan_learner'),
])
def test_bad_sampling_calls(eights, call, match):
    with pytest.raises(FastpipesError, match=match) as e: call(gan_learner(eights, bs=8, epoch_size=8))
    _one_sentence(e)

def test_digit_images_offline_download(tmp_path, monkeypatch):
    "Offline, `download=True` fails with one sentence that says where to put the files."
    import torchvision.datasets as tvd
    def offline(*args, **kwargs): raise RuntimeError('Error downloading train-images-idx3-ubyte.gz')
    monkeypatch.setattr(tvd, 'MNIST', offline)
    with pytest.raises(FastpipesError, match='put its files in') as e: digit_images(tmp_path, 8, download=True)
    assert str(tmp_path/'MNIST'/'raw') in str(e.value)

def test_digit_images_local_first(tmp_path):
    raw = tmp_path/'MNIST'/'raw'; raw.mkdir(parents=True)
    x, y = np.random.randint(0, 256, (30, 28, 28), dtype=np.uint8), (np.arange(30) % 10).astype(np.uint8)
    for pre in ('train', 't10k'):
        save_idx(x, raw/f'{pre}-images-idx3-ubyte'); save_idx(y, raw/f'{pre}-labels-idx1-ubyte')
    assert np.array_equal(digit_images(tmp_path, 8), x[y == 8])
    assert np.array_equal(digit_images(raw, 8, split='test'), x[y == 8])
    assert len(digit_images(tmp_path, 8, split='all')) == 6
    with pytest.raises(FastpipesError, match='download=True') as e: digit_images(tmp_path/'empty', 8)
    with pytest.raises(FastpipesError, match='0 to 9'): digit_images(tmp_path, 11)
    with pytest.raises(FastpipesError, match='split'): digit_images(tmp_path, 1, split='valid')
    assert digit_images('sklearn', 0).shape[1:] == (28, 28)

class _Black(nn.Module):
    "A generator that can only draw black images: the critic wins every round."
    def __init__(self, nz): super().__init__(); self.lin = nn.Linear(nz, 1)
    def forward(self, z): return self.lin(z)[:, :, None, None].expand(-1, 1, 28, 28)*0 - 1

def test_stops_when_critic_wins(eights):
    set_seed(0)
    learn = gan_learner(eights, bs=32, epoch_size=128, lr=1e-2, patience=2)
    learn.model.generator = _Black(6)
    with pytest.warns(UserWarning, match='critic won outright'): _fit(learn, 30)
    assert learn.gan_monitor.stopped is not None and len(learn.recorder.values) < 30
    g, c = learn.gan_monitor.hist[-1]
    assert c < 0.02 and g > 5

def test_no_stop_when_patience_zero(eights):
    set_seed(0)
    learn = gan_learner(eights, bs=32, epoch_size=128, lr=1e-2, patience=0)
    learn.model.generator = _Black(6)
    with warnings.catch_warnings():
        warnings.filterwarnings('error', message='.*critic won outright.*')
        _fit(learn, 8)
    assert len(learn.recorder.values) == 8

def _split(y, digit=8, seed=0):
    "Half of the `digit` images for the GAN; the rest of the set (other half included) for the classifier."
    idx = np.where(y == digit)[0]
    gan = np.sort(np.random.default_rng(seed).permutation(idx)[:len(idx)//2])
    return gan, np.setdiff1d(np.arange(len(y)), gan)

def test_samples_look_like_the_digit(digits):
    "A few minutes of CPU training: samples a classifier of the other real digits calls 8, without collapse."
    x, y = digits
    gan, rest = _split(y)
    t = time.time()
    set_seed(0)
    learn = _fit(gan_learner(x[gan], nz=6), 60)
    clf = digit_classifier(x[rest], y[rest])
    sc = sample_scores(generate(learn, 500, seed=1), x[rest][y[rest] == 8], clf, 8)
    print(f"\nGAN quality after {time.time()-t:.0f}s: {sc}")
    assert sc['share'] >= 0.8, sc
    assert sc['diversity'] > 0.5, sc
