"Tests of `fastpipes.tabular` beyond the notebook: many data sets, options and bad inputs."
import matplotlib
matplotlib.use('Agg')
import numpy as np, pandas as pd, pytest, torch
from fastpipes.core import FastpipesError
from fastpipes.course.tabular import (IRIS_COLS, autoencoder_learner, coefs, course_split, encode, exp_decay, fit_mle,
                               free_fall, iris_df, line_data, lstsq_coefs, overparam_learner, pca_mse, plot_fit,
                               reconstruct, regression_learner, set_coefs, show_reconstruction, table_classifier)


def fit(learn, epochs:int, one_cycle:bool=False):
    "Train `learn` quietly for `epochs` (the factories' recipes: regressions `fit(10)`, overparam `fit(60)`, one-cycle 40/20)."
    with learn.no_bar(), learn.no_logging(): (learn.fit_one_cycle if one_cycle else learn.fit)(epochs)
    return learn


def close(a:dict, b:dict, eps=1e-3):
    assert list(a) == list(b), (a, b)
    assert all(abs(a[k] - b[k]) < eps for k in a), (a, b)


@pytest.fixture(scope='module')
def iris(): return iris_df()


# ---- regression

@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('kind', ['free_fall', 'exp_decay'])
def test_fit_equals_lstsq(kind, seed):
    df, x, y, tfm = (free_fall(seed=seed), 'h', 't', 'sqrt') if kind == 'free_fall' else (exp_decay(seed=seed), 'x', 'y', 'exp(-x)')
    learn = fit(regression_learner(df, x, y, transform=tfm), 10)
    close(coefs(learn), lstsq_coefs(df, x, y, tfm))


@pytest.mark.parametrize('kw,epochs', [(dict(opt='adam', lr=0.1), 300), (dict(mom=0.5), 60)])
def test_options_reach_lstsq(kw, epochs):
    df = free_fall(seed=3)
    close(coefs(fit(regression_learner(df, 'h', 't', 'sqrt', **kw), epochs)), lstsq_coefs(df, 'h', 't', 'sqrt'))


def test_minibatches():
    "Mini-batch SGD at a constant rate ends in a noise ball around the optimum, not on it."
    df = free_fall(seed=3)
    learn = fit(regression_learner(df, 'h', 't', 'sqrt', bs=16, lr=0.05), 20)
    assert len(learn.dls.train) == 7
    close(coefs(learn), lstsq_coefs(df, 'h', 't', 'sqrt'), eps=0.03)


def test_several_columns_no_bias_and_callable():
    rng = np.random.default_rng(0)
    df = pd.DataFrame(dict(a=rng.uniform(1, 5, 80), b=rng.uniform(-2, 2, 80)))
    df['y'] = 2*df.a**2 - 0.5*df.b**2 + rng.normal(0, .1, 80)
    close(coefs(fit(regression_learner(df, ['a', 'b'], 'y', 'x^2'), 10)), lstsq_coefs(df, ['a', 'b'], 'y', 'x^2'))
    learn = fit(regression_learner(df, ['a', 'b'], 'y', lambda v: v**2, bias=False), 10)
    close(coefs(learn), lstsq_coefs(df, ['a', 'b'], 'y', 'x^2', bias=False))
    assert list(coefs(learn)) == ['b1', 'b2']
    assert np.allclose(learn.predict(df[['a', 'b']].to_numpy()), learn.predict(df), atol=1e-5)
    with pytest.raises(FastpipesError, match='Expected 2 input'): learn.predict([1., 2., 3.])
    assert plot_fit(learn).axes


def test_predict_is_on_raw_inputs():
    df = free_fall(seed=4)
    learn = fit(regression_learner(df, 'h', 't', 'sqrt'), 10)
    c = coefs(learn)
    assert np.allclose(learn.predict([0., 25., 81.]), [c['b0'] + c['b1']*v for v in (0, 5, 9)], atol=1e-4)
    assert learn.predict(16.).shape == (1,)
    with pytest.raises(FastpipesError, match=r'NaN or inf.*h=-9'): learn.predict(pd.DataFrame(dict(h=[1., -9.])))


def test_seeded_and_norm_off():
    df = exp_decay(seed=5)
    a, b = [coefs(fit(regression_learner(df, 'x', 'y', 'exp(-x)', seed=7), 10)) for _ in range(2)]
    assert a == b
    learn = fit(regression_learner(df, 'x', 'y', 'exp(-x)', norm=False, lr=0.5), 400)
    close(coefs(learn), lstsq_coefs(df, 'x', 'y', 'exp(-x)'))


def test_five_point_gradient_step():
    five = pd.DataFrame(dict(x=[11., 12, 13, 14, 15], y=[17.7, 18.5, 21.2, 23.6, 24.2]))
    learn = set_coefs(regression_learner(five, 'x', 'y', norm=False, lr=0.01), b0=3, b1=3)
    xb, yb = learn.dls.train.one_batch()
    loss = learn.loss_func(learn.model(xb), yb)
    loss.backward()
    assert abs(loss.item() - 442.436) < 1e-3
    assert np.allclose([learn.model.lin.bias.grad.item(), learn.model.lin.weight.grad.item()], [41.92, 549.72], atol=1e-3)
    learn.create_opt(); learn.opt.step()
    close(coefs(learn), {'b0': 2.5808, 'b1': -2.4972})


def test_set_coefs_roundtrip_with_norm():
    learn = regression_learner(free_fall(), 'h', 't', 'sqrt')
    set_coefs(learn, b0=0.25, b1=-1.5)
    close(coefs(learn), {'b0': 0.25, 'b1': -1.5}, 1e-6)
    with pytest.raises(FastpipesError, match='Unknown coefficient'): set_coefs(learn, b7=1)


def test_overparam_sums_match_simple_fit():
    ld = line_data(seed=1)
    ls = lstsq_coefs(ld, 'x', 'y')
    c = coefs(fit(overparam_learner(ld, 'x', 'y', ('a0', 'b0'), ('a1', 'b1')), 60))
    assert abs(c['a0'] + c['b0'] - ls['b0']) < 1e-3 and abs(c['a1'] + c['b1'] - ls['b1']) < 1e-3
    c = coefs(fit(overparam_learner(ld, 'x', 'y', (), ('b1',)), 60))
    assert abs(c['b1'] - lstsq_coefs(ld, 'x', 'y', bias=False)['b1']) < 1e-3
    assert abs(coefs(fit(overparam_learner(ld, 'x', 'y', ('b0',), ()), 60))['b0'] - ld.y.mean()) < 1e-3
    with pytest.raises(FastpipesError, match='at least one'): overparam_learner(ld, 'x', 'y', (), ())


@pytest.mark.parametrize('df,args,msg', [
    (free_fall(), ('height', 't'), 'not in the table'),
    (free_fall().assign(h=lambda d: d.h.astype(str)), ('h', 't'), 'not numeric'),
    (free_fall().assign(h=lambda d: d.h - 50), ('h', 't', 'sqrt'), 'NaN or inf'),
    (pd.DataFrame(dict(x=[1., np.nan], y=[1., 2.])), ('x', 'y'), 'missing or infinite'),
    (pd.DataFrame(dict(x=[1., 1.], y=[1., 2.])), ('x', 'y'), 'constant'),
    (free_fall(), ('h', 't', 'cube'), 'Unknown transform'),
    ([1, 2], ('h', 't'), 'DataFrame'),
])
def test_regression_bad_input(df, args, msg):
    with pytest.raises(FastpipesError, match=msg): regression_learner(df, *args)


def test_bad_optimiser():
    with pytest.raises(FastpipesError, match='Unknown optimi[sz]er'): regression_learner(free_fall(), 'h', 't', opt='lbfgs')


# ---- maximum likelihood

def exp_logpdf(x, lam): return -x/lam - torch.log(lam)


@pytest.mark.parametrize('scale', [0.05, 1., 2., 50.])
def test_mle_exponential(scale):
    x = np.random.default_rng(1).exponential(scale, 300)
    lam, hist = fit_mle(exp_logpdf, x, 1.)
    assert abs(lam - x.mean()) < 1e-3*max(1, scale)
    assert len(hist) == 1000 and hist.nll.iloc[-1] <= hist.nll.iloc[0]


def test_mle_normal_two_params_and_adam():
    x = np.random.default_rng(2).normal(3., 2., 500)
    def logpdf(x, mu, sigma): return -0.5*((x - mu)/sigma)**2 - torch.log(sigma) - 0.5*np.log(2*np.pi)
    est, hist = fit_mle(logpdf, x, dict(mu=0., sigma=1.), constraint=[None, 'positive'], steps=2000, lr=0.1)
    assert abs(est['mu'] - x.mean()) < 1e-3 and abs(est['sigma'] - x.std()) < 1e-3
    assert list(hist.columns) == ['nll', 'mu', 'sigma']
    lam, _ = fit_mle(exp_logpdf, x - x.min() + 0.1, 1., opt='adam', lr=0.05, steps=2000)
    assert abs(lam - (x - x.min() + 0.1).mean()) < 1e-3


def test_mle_errors():
    x = np.random.default_rng(1).exponential(0.02, 100)
    with pytest.raises(FastpipesError, match='became nan'): fit_mle(exp_logpdf, x, 1., constraint=None)
    with pytest.raises(FastpipesError, match='constraint'): fit_mle(exp_logpdf, x, 1., constraint='bounded')
    with pytest.raises(FastpipesError, match='above 0'): fit_mle(exp_logpdf, x, -1.)
    with pytest.raises(FastpipesError, match='No data'): fit_mle(exp_logpdf, [], 1.)


# ---- iris

def test_iris_loader_and_csv(iris, tmp_path):
    assert list(iris.columns) == IRIS_COLS and len(iris) == 150
    fn = tmp_path/'iris.csv'
    iris.rename(columns=lambda c: c.replace('_', '.').title() if c != 'species' else 'variety').assign(
        variety=lambda d: 'Iris-' + d.variety).to_csv(fn, index=False)
    pd.testing.assert_frame_equal(iris_df(fn), iris)
    with pytest.raises(FastpipesError, match='Could not read'): iris_df(tmp_path/'nope.csv')


def test_course_split_reproduces_pandas(iris):
    tr, va = course_split(iris)
    assert tr == list(iris.sample(frac=0.8, random_state=42).index) and len(va) == 30
    assert set(tr).isdisjoint(va)
    shuffled = iris.sample(frac=1, random_state=0)  # labels no longer positions
    tr2, _ = course_split(shuffled)
    assert list(shuffled.index[tr2]) == list(shuffled.sample(frac=0.8, random_state=42).index)


def test_iris_classifier_prints_train_and_test_accuracy(iris, capsys):
    learn = table_classifier(iris, 'species')
    learn.fit_one_cycle(20)
    out = capsys.readouterr().out
    assert 'train_accuracy' in out and 'test_accuracy' in out
    lines = [l.split() for l in out.splitlines() if l.split() and l.split()[0].isdigit()]
    assert len(lines) == 20 and all(len(l) == 6 for l in lines)
    tr, va = course_split(iris)
    assert list(learn.dls.train.items.index) == tr and list(learn.dls.valid.items.index) == va
    train_acc, test_acc = learn.recorder.values[-1][2:]
    assert test_acc >= 0.9 and train_acc >= 0.9
    assert float(lines[-1][4]) == pytest.approx(test_acc, abs=1e-4)


def test_random_split_and_categorical_column(iris):
    df = iris.assign(size=np.where(iris.petal_length > 4, 'big', 'small'))
    learn = fit(table_classifier(df, 'species', split='random'), 3, one_cycle=True)
    assert learn.dls.cat_names == ['size'] and len(learn.dls.valid.items) == 30


@pytest.mark.parametrize('make,kw,msg', [
    (lambda d: d[d.species == 'setosa'], {}, 'single class'),
    (lambda d: d.iloc[[0, 100]], {}, 'rows'),
    (lambda d: d.iloc[[0, 1, 2, 100]], dict(valid_pct=0.1), 'rows'),
    (lambda d: d, dict(y='kind'), 'not in the table'),
    (lambda d: d, dict(split='kfold'), 'Unknown split'),
    (lambda d: d.assign(species=d.species.where(d.index > 0)), {}, 'missing classes'),
])
def test_classifier_bad_input(iris, make, kw, msg):
    kw = dict(y='species') | kw
    with pytest.raises(FastpipesError, match=msg): table_classifier(make(iris), **kw)


# ---- autoencoder

def test_linear_autoencoder_reaches_pca(iris):
    X = iris[IRIS_COLS[:4]]
    ae = fit(autoencoder_learner(X), 40, one_cycle=True)
    assert ae.validate()[0] <= 1.05*pca_mse(X)
    Z = encode(ae, X.to_numpy())
    assert Z.shape == (150, 2)
    Xh = reconstruct(ae, X)
    assert Xh.shape == (150, 4) and np.mean((Xh - X.to_numpy())**2) < 0.1
    fig = show_reconstruction(ae, X, n=8)
    assert sum(l.get_linestyle() == '--' for l in fig.axes[0].lines) == 2
    assert fig.axes[0].images[0].get_array().shape == (8, 10)


def test_autoencoder_nonlinear_and_errors(iris):
    X = iris[IRIS_COLS[:4]].to_numpy()
    ae = fit(autoencoder_learner(X, latent=1, linear=False), 3, one_cycle=True)
    assert encode(ae, X).shape == (150, 1)
    with pytest.raises(FastpipesError, match='latent'): autoencoder_learner(X, latent=0)
    with pytest.raises(FastpipesError, match='not numeric'): autoencoder_learner(iris)
    with pytest.raises(FastpipesError, match='constant'): autoencoder_learner(np.c_[X, np.ones(150)])
    with pytest.raises(FastpipesError, match='2-d'): autoencoder_learner(X[:, 0])


def test_export_and_load(tmp_path):
    from fastai.learner import load_learner
    learn = fit(regression_learner(free_fall(), 'h', 't', 'sqrt'), 10)
    learn.export(tmp_path/'ff.pkl')
    back = load_learner(tmp_path/'ff.pkl')
    assert coefs(back) == coefs(learn) and np.allclose(back.predict([4., 9.]), learn.predict([4., 9.]))
    with pytest.raises(FastpipesError, match='no data'): plot_fit(back)


# ---- lean fit path

def test_lean_learner_matches_fastai_learner():
    "`LeanLearner`'s event dispatch gives exactly what fastai's `Learner` gives: same losses, same weights."
    from fastai.learner import Learner
    from fastpipes.course.tabular import RegressionLearner
    df = free_fall(seed=6)
    runs = []
    for cls in (RegressionLearner, Learner):
        learn = regression_learner(df, 'h', 't', 'sqrt', seed=3, bs=16, lr=0.05)
        assert type(learn) is RegressionLearner
        if cls is Learner: learn = Learner(learn.dls, learn.model, loss_func=learn.loss_func, opt_func=learn.opt_func, lr=learn.lr)
        with learn.no_bar(), learn.no_logging(): learn.fit(4)
        runs.append((learn.recorder.losses, learn.recorder.values, learn.model.lin.weight.detach().clone()))
    (l1, v1, w1), (l2, v2, w2) = runs
    assert [float(a) for a in l1] == [float(b) for b in l2] and v1 == v2 and torch.equal(w1, w2)


def test_lean_learner_follows_added_callbacks():
    from fastai.callback.core import Callback
    class Count(Callback):
        def __init__(self): self.n = 0
        def after_batch(self): self.n += 1
    learn = fit(regression_learner(free_fall(), 'h', 't', 'sqrt'), 2)
    cb = Count()
    with learn.added_cbs(cb), learn.no_bar(), learn.no_logging(): learn.fit(3)
    assert cb.n == 6  # 3 training + 3 validation batches: the cache saw the new callback
    with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert cb.n == 6  # and forgot it once removed


@pytest.mark.parametrize('bs,drop_last', [(7, False), (7, True), (100, False), (500, False)])
def test_slice_dl_batches(bs, drop_last):
    from fastpipes.course.datasets import TensorDL
    x = torch.arange(100.)[:, None]
    dl = TensorDL(x, 2*x, bs=bs, shuffle=bs < 100, drop_last=drop_last, scale=False)
    got = torch.cat([xb for xb, yb in dl])
    assert all(torch.equal(yb, 2*xb) for xb, yb in dl)
    n = 100 - 100 % bs if drop_last else 100
    assert len(got) == n and len(set(got[:, 0].tolist())) == n
    assert len(list(dl)) == len(dl)


def test_diverging_fit_raises():
    with pytest.raises(FastpipesError, match=r'loss became .* in epoch \d+; lower `lr`'):
        fit(regression_learner(free_fall(), 'h', 't', 'sqrt', norm=False, lr=5.), 10)


def test_train_accuracy_is_whole_training_set(iris, tmp_path):
    "The per-epoch train accuracy equals a fresh count over every training row."
    learn = fit(table_classifier(iris, 'species'), 3, one_cycle=True)
    preds, targs = learn.get_preds(dl=learn.dls.train.new(shuffle=False, drop_last=False))
    assert learn.recorder.values[-1][2] == pytest.approx((preds.argmax(1) == targs.view(-1)).float().mean().item())
    from fastai.learner import load_learner
    learn.export(tmp_path/'iris.pkl')  # the cached batch stays out of the pickle
    back = load_learner(tmp_path/'iris.pkl')
    assert not hasattr(back.metrics[0], '_b') and back.predict(iris.iloc[0])[1] == learn.predict(iris.iloc[0])[1]


# ---- bad input: one sentence each

ff = free_fall()

@pytest.mark.parametrize('call,msg', [
    (lambda: regression_learner(ff.iloc[:1], 'h', 't'), 'at least two rows'),
    (lambda: regression_learner(ff.iloc[:0], 'h', 't'), 'no rows'),
    (lambda: regression_learner(ff, 'h', 't', lr=-1), '`lr` must be a positive'),
    (lambda: regression_learner(ff, 'h', 't', bs=0), '`bs` must be'),
    (lambda: regression_learner(ff, 'h', ['t']), 'Column names must be'),
    (lambda: regression_learner(pd.concat([ff, ff], axis=1), 'h', 't'), 'more than once'),
    (lambda: regression_learner(ff, 'h', 't', transform=['sqrt']), 'Unknown transform'),
    (lambda: regression_learner(ff, 'h', 't', transform=lambda v: v.foo), r'transform <lambda> failed'),
    (lambda: regression_learner(ff, 'h', 't', transform=lambda v: v.sum()), 'changed the shape'),
    (lambda: fit(regression_learner(ff, 'h', 't'), 1).predict(['a']), 'Expected numbers'),
    (lambda: fit(regression_learner(ff, 'h', 't'), 1).predict(np.ones((2, 2, 1))), 'shape'),
    (lambda: set_coefs(regression_learner(ff, 'h', 't'), b0='a'), 'Expected numbers'),
    (lambda: set_coefs(regression_learner(ff, 'h', 't'), b0=np.nan), 'finite'),
    (lambda: overparam_learner(ff, ['h', 't'], 't'), 'one input column'),
    (lambda: coefs(autoencoder_learner(iris_df()[IRIS_COLS[:4]])), 'Expected a learner from `regression_learner`'),
    (lambda: fit_mle(exp_logpdf, [1., np.nan], 1.), 'NaN or inf'),
    (lambda: fit_mle(exp_logpdf, ['a'], 1.), 'Expected numbers for the data'),
    (lambda: fit_mle(exp_logpdf, [[1., 2.]], 1.), '1-d'),
    (lambda: fit_mle(lambda x, l: x.foo, [1.], 1.), '`logpdf` failed'),
    (lambda: fit_mle(lambda x, l: 1.0, [1.], 1.), '`logpdf` must return a tensor'),
    (lambda: fit_mle(exp_logpdf, [1.], 'a'), 'Expected numbers for `init`'),
    (lambda: fit_mle(exp_logpdf, [1.], []), 'no parameters'),
    (lambda: fit_mle(exp_logpdf, [1.], 1., steps=-1), '`steps`'),
    (lambda: fit_mle(exp_logpdf, [1.], 1., lr=0), '`lr`'),
    (lambda: table_classifier(iris_df().iloc[:0], 'species'), 'no rows'),
    (lambda: table_classifier(iris_df(), 'species', x=['species']), 'both the class column and an input'),
    (lambda: table_classifier(iris_df(), 'species', valid_pct=1.5), '`valid_pct`'),
    (lambda: table_classifier(iris_df().assign(sepal_length=np.nan), 'species'), 'no values at all'),
    (lambda: table_classifier(iris_df().assign(sepal_length=np.inf), 'species'), 'infinite'),
    (lambda: table_classifier(iris_df().assign(species=iris_df().sepal_length), 'species'), 'no training row has'),
    (lambda: table_classifier(iris_df().assign(sepal_length=lambda d: d.sepal_length.where(d.index != course_split(d)[1][0])),
                              'species'), 'missing values only among the test rows'),
    (lambda: autoencoder_learner(np.array([['a', 'b'], ['c', 'd']])), 'Expected numbers for the table'),
    (lambda: autoencoder_learner(iris_df()[['sepal_length']]), 'at least two columns'),
    (lambda: autoencoder_learner(np.zeros((0, 4))), 'no rows'),
    (lambda: encode(autoencoder_learner(iris_df()[IRIS_COLS[:4]]), np.ones((2, 3))), 'Expected 4 column'),
    (lambda: encode(regression_learner(ff, 'h', 't'), np.ones((2, 1))), 'autoencoder_learner'),
    (lambda: show_reconstruction(autoencoder_learner(iris_df()[IRIS_COLS[:4]]), iris_df()[IRIS_COLS[:4]], n=0), '`n`'),
    (lambda: pca_mse(iris_df()[IRIS_COLS[:4]], k=9), '`k`'),
])
def test_bad_input_is_one_sentence(call, msg):
    with pytest.raises(FastpipesError, match=msg) as e: call()
    assert '\n' not in str(e.value)


def test_slice_tab_dl_gives_fastais_batches(iris):
    "`SliceTabDL` hands out exactly the batches of fastai's `TabDataLoader` (categories, filled NaNs, targets)."
    from fastai.data.block import CategoryBlock
    from fastai.tabular.core import Categorify, FillMissing, Normalize, TabDataLoader, TabularPandas
    from fastpipes.core import set_seed
    from fastpipes.course.tabular import SliceTabDL
    df = iris.assign(size=np.where(iris.petal_length > 4, 'big', 'small'))
    df.loc[[3, 50], 'sepal_width'] = np.nan
    to = TabularPandas(df, [Categorify, FillMissing, Normalize], ['size'], IRIS_COLS[:4], y_names='species',
                       y_block=CategoryBlock(), splits=course_split(df))
    out = []
    for cls in (TabDataLoader, SliceTabDL):
        set_seed(1)
        dls = to.dataloaders(bs=16, num_workers=0, dl_type=cls)
        set_seed(2)
        out.append([b for dl in (dls.train, dls.valid, dls.test_dl(df.iloc[:20])) for b in dl])
    assert len(out[0]) == len(out[1]) == 8 + 2 + 1
    for a, b in zip(*out):
        assert len(a) == len(b) and all(x.dtype == y.dtype and torch.equal(x, y) for x, y in zip(a, b))
    assert out[1][0][0].shape == (16, 2)  # size + sepal_width_na


def test_regression_prints_per_epoch_table(capsys):
    learn = regression_learner(free_fall(), 'h', 't', 'sqrt')
    learn.fit(10)
    out = capsys.readouterr().out
    assert 'train_loss' in out and 'valid_loss' in out
    rows = [l.split() for l in out.splitlines() if l.split() and l.split()[0].isdigit()]
    assert [int(r[0]) for r in rows] == list(range(10))
    assert float(rows[-1][2]) == pytest.approx(learn.recorder.values[-1][1], abs=1e-6)
