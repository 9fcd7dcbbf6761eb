"""AW-Net's own behaviour: routes, MixBN branches, router gradients, ablations, errors, sizes."""
import math

import pytest
import timm
import torch

from awnet_timm import AWNet, RouterOutput, use_route
from awnet_timm.layers import MixBatchNorm2d


def _tiny(**kwargs) -> AWNet:
    """A small AW-Net (1 block per stage, narrow) with nonzero signal heads, for fast checks."""
    args = dict(layers=(1, 1, 1, 1), channels=(8, 16, 16, 32), router_layers=(1, 1, 1, 1),
                router_channels=(8, 8, 16, 16), signal_init='default')
    return AWNet(**dict(args, **kwargs))


def _trained_stats(model: AWNet) -> AWNet:
    """Give Clean and Adv BNs different running statistics, as after training."""
    model.train()
    with torch.no_grad():
        model.forward_features(torch.rand(8, 3, 32, 32) * 0.5, route='clean')
        model.forward_features(torch.rand(8, 3, 32, 32), route='adv')
    return model.eval()


def _mixbns(model):
    return [m for m in model.modules() if isinstance(m, MixBatchNorm2d)]


def test_forced_routes_equal_auto_with_fixed_p():
    model = _trained_stats(_tiny())
    x = torch.rand(3, 3, 32, 32)
    r = model.forward_router(x)
    for route, p in (('clean', 1.), ('adv', 0.)):
        given = RouterOutput(r.type_logits, torch.full((3,), p), r.omega)
        torch.testing.assert_close(model.forward_features(x, route=route), model.forward_features(x, router_out=given))
    assert not torch.allclose(model.forward_features(x, route='clean'), model.forward_features(x, route='adv'))


@pytest.mark.parametrize('route', ['clean', 'adv'])
def test_forced_route_in_training_updates_only_its_branch(route):
    model = _tiny().train()
    other = 'adv' if route == 'clean' else 'clean'
    before = [(getattr(m, route).running_mean.clone(), getattr(m, other).running_mean.clone()) for m in _mixbns(model)]
    logits, router_out = model.forward_with_router(torch.rand(4, 3, 32, 32), route=route)
    assert router_out.type_logits.shape == (4, 2)  # the type head still runs, for the type loss
    for m, (own, oth) in zip(_mixbns(model), before):
        assert not torch.equal(getattr(m, route).running_mean, own)
        assert torch.equal(getattr(m, other).running_mean, oth)


def test_auto_route_blends_by_router_p_clean():
    model = _trained_stats(_tiny())
    x = torch.rand(2, 3, 32, 32)
    logits, r = model.forward_with_router(x)
    torch.testing.assert_close(r.p_clean, torch.softmax(r.type_logits, 1)[:, 1])
    torch.testing.assert_close(logits, model(x))
    torch.testing.assert_close(model.forward_features(x, router_out=r), model.forward_features(x))


@pytest.mark.parametrize('route', ['auto', 'clean', 'adv', 'detach'])
def test_eval_output_of_a_sample_does_not_depend_on_its_batch(route):
    model = _trained_stats(_tiny())
    model.set_route(route)
    x = torch.rand(5, 3, 32, 32)
    full = model(x)
    for i in range(5):
        torch.testing.assert_close(model(x[i:i + 1]), full[i:i + 1], rtol=1e-4, atol=1e-5)


def _router_trunk_grad(model: AWNet, **forward_kwargs) -> float:
    model.zero_grad()
    model.forward_with_router(torch.rand(3, 3, 32, 32), **forward_kwargs)[0].logsumexp(1).sum().backward()
    grads = [p.grad for n, p in model.router.named_parameters() if n.startswith('stages')]
    return sum(float(g.abs().sum()) for g in grads if g is not None)


def test_gradients_reach_router_through_p_clean():
    model = _trained_stats(_tiny(modulate=False))  # no omega: P(clean) is the only path
    assert model.router.signal_head is None
    assert _router_trunk_grad(model) > 0
    assert _router_trunk_grad(model, route='detach') == 0
    assert _router_trunk_grad(model, route='adv') == 0


def test_gradients_reach_router_through_omega():
    model = _trained_stats(_tiny(mix_bn=False))  # no MixBN, no type head: omega is the only path
    assert model.router.type_head is None
    assert _router_trunk_grad(model) > 0
    assert _router_trunk_grad(model, route='detach') == 0


def test_gradients_reach_given_router_outputs():
    model = _trained_stats(_tiny())
    x = torch.rand(2, 3, 32, 32)
    r = model.forward_router(x)
    p = r.p_clean.detach().requires_grad_()
    omega = [o.detach().requires_grad_() for o in r.omega]
    model.forward_features(x, router_out=RouterOutput(r.type_logits, p, omega)).sum().backward()
    assert p.grad.abs().sum() > 0 and all(o.grad.abs().sum() > 0 for o in omega)


def test_detach_route_equals_auto_forward():
    model = _trained_stats(_tiny())
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.forward_features(x, route='detach'), model.forward_features(x))


def _per_sample_reference(model: AWNet, x: torch.Tensor, weight) -> torch.Tensor:
    """The slow, obvious route: each image alone, MixBN blended by weight(its P(clean)) given as a router output
    (to the model without its threshold, which would otherwise apply on top of the given value)."""
    kept, bound = (model.route_threshold, model.route_temperature), model.clean_share_max
    model.set_route_threshold(None)
    model.set_clean_share_max(1.)
    rows = []
    for i in range(len(x)):
        r = model.forward_router(x[i:i + 1])
        given = RouterOutput(r.type_logits, weight(r.p_clean), r.omega)
        rows.append(model.forward_with_router(x[i:i + 1], router_out=given)[0])
    model.set_route_threshold(*kept)
    model.set_clean_share_max(bound)
    return torch.cat(rows)


def test_hard_route_threshold_runs_one_bn_branch_per_image():
    model = _trained_stats(_tiny())
    x = torch.rand(6, 3, 32, 32)
    p = model.forward_router(x).p_clean.detach()
    low, high = p.sort().values[2:4].tolist()
    t = (low + high) / 2  # three images on each side, none near it
    soft = model(x)
    model.set_route_threshold(t)
    hard = model(x)
    for i in range(len(x)):
        branch = 'clean' if p[i] > t else 'adv'
        torch.testing.assert_close(hard[i:i + 1], model.forward_with_router(x[i:i + 1], route=branch)[0],
                                   rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(hard, _per_sample_reference(model, x, lambda q: (q > t).float()), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(hard, soft)
    _, r = model.forward_with_router(x)
    torch.testing.assert_close(r.p_clean, p)  # the router's outputs are left as they are
    model.set_route_threshold(None)
    torch.testing.assert_close(model(x), soft)


def test_route_threshold_benchmark_scores_each_threshold_as_the_thresholded_model_does():
    """benchmarks/route_threshold.py scores every threshold from one pass per BN path; the thresholded model agrees."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'benchmarks', 'route_threshold.py')
    spec = importlib.util.spec_from_file_location('route_threshold', path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    # the counting, by hand: the Clean BN path is right, the Adv BN path wrong, on every image
    z, labels = torch.tensor([-1., .5, 2.]), torch.tensor([0, 1, 2])
    on_clean, on_adv = torch.eye(3), torch.eye(3).roll(1, 1)
    scores = bench.score_thresholds(z, on_clean, on_adv, labels, [-2., 0., 1., 3.])
    assert [s['share_on_clean_bn'] for s in scores] == pytest.approx([1, 2 / 3, 1 / 3, 0])
    assert [s['accuracy'] for s in scores] == pytest.approx([1, 2 / 3, 1 / 3, 0])
    # the premise: a thresholded model gives each image the logits of its path, as the benchmark scores it
    torch.manual_seed(0)
    model = _trained_stats(_tiny())
    x = torch.rand(12, 3, 32, 32)
    z, soft, on_clean, on_adv = bench.router_logit_and_logits(model, x, batch_size=5)
    torch.testing.assert_close(soft, model(x), rtol=1e-4, atol=1e-4)  # batches of 5 against one of 12
    zs = z.sort().values
    for zt in (float(zs[0]) - 1, float(zs[3] + zs[4]) / 2, float(zs[8] + zs[9]) / 2):  # 12, 8 and 3 on Clean BN
        model.set_route_threshold(1 / (1 + math.exp(-zt)))
        torch.testing.assert_close(model(x), torch.where((z > zt)[:, None], on_clean, on_adv), rtol=1e-4, atol=1e-4)
    model.set_route_threshold(None)


@pytest.mark.parametrize('temperature', [0.5, 2.0])
def test_route_temperature_blends_by_the_sharpened_p_clean(temperature):
    model = _trained_stats(_tiny(route_threshold=0.3, route_temperature=temperature))
    x = torch.rand(4, 3, 32, 32)

    def sharpened(q):  # sigmoid((logit q - logit t) / T), written out
        q = q.double()
        odds = (q / (1 - q)) / (0.3 / 0.7)
        return (odds ** (1 / temperature) / (1 + odds ** (1 / temperature))).float()
    torch.testing.assert_close(model(x), _per_sample_reference(model, x, sharpened), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.forward_features(x, route='detach'), model.forward_features(x))
    with use_route(model, 'adv'):  # a forced route ignores the threshold
        torch.testing.assert_close(model(x), model.forward_with_router(x, route='adv')[0])


def test_sharpening_reads_the_router_logits_where_p_clean_has_rounded_to_one():
    from awnet_timm.models.awnet import sharpen_p_clean
    type_logits = torch.tensor([[0., 12.], [0., 10.]], dtype=torch.bfloat16)  # [adv, clean]: P(clean) 0.999994, 0.99995
    p = type_logits.softmax(1)[:, 1]
    assert p.tolist() == [1., 1.]  # bfloat16 cannot tell them apart
    t = 1 / (1 + math.exp(-11))
    assert sharpen_p_clean(p, t, 0., type_logits).tolist() == [1., 0.]
    expected = torch.sigmoid(torch.tensor([1., -1.]) / 0.5)
    torch.testing.assert_close(sharpen_p_clean(p, t, 0.5, type_logits).float(), expected, atol=1e-2, rtol=0)
    assert sharpen_p_clean(torch.tensor([0.2, 0.4]), 0.3).tolist() == [0., 1.]  # without logits: from p itself


def test_a_sharpened_route_passes_gradients_to_the_router_only_when_soft_and_not_detached():
    model = _trained_stats(_tiny(modulate=False))  # P(clean) is the only path to the router
    model.set_route_threshold(0.5, 1.0)
    assert _router_trunk_grad(model) > 0
    assert _router_trunk_grad(model, route='detach') == 0
    model.set_route_threshold(0.5)  # a hard threshold has no gradient
    assert _router_trunk_grad(model) == 0


def test_route_threshold_through_timm_and_bad_values():
    model = timm.create_model('awnet_r18_025', route_threshold=0.9)
    assert (model.route_threshold, model.route_temperature) == (0.9, 0.)
    for kwargs, match in (({'route_threshold': 1.0}, 'strictly between 0 and 1'),
                          ({'route_threshold': '0.5'}, 'must be a number'),
                          ({'route_threshold': 0.5, 'route_temperature': float('nan')}, 'finite number >= 0'),
                          ({'route_threshold': 0.5, 'route_temperature': -1.}, 'finite number >= 0'),
                          ({'route_temperature': 1.}, 'give one too')):
        with pytest.raises(ValueError, match=match):
            _tiny(**kwargs)
    with pytest.raises(ValueError, match='needs a router with a type head'):
        timm.create_model('cifar_resnet18_025', route_threshold=0.5)


@pytest.mark.parametrize('bound', [0.0, 0.3, 0.8])
def test_bounded_routing_blends_by_the_capped_p_clean(bound):
    model = _trained_stats(_tiny(clean_share_max=bound))
    x = torch.rand(4, 3, 32, 32)
    torch.testing.assert_close(model(x), _per_sample_reference(model, x, lambda q: bound * q), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(model.forward_features(x, route='detach'), model.forward_features(x))
    if bound == 0.:  # the Adv BN alone, signals still the router's
        torch.testing.assert_close(model(x), model.forward_with_router(x, route='adv')[0])
    with use_route(model, 'clean'):  # a forced route ignores the bound
        torch.testing.assert_close(model(x), model.forward_with_router(x, route='clean')[0])


def test_bounded_routing_applies_to_given_router_outputs_and_on_top_of_a_threshold():
    model = _trained_stats(_tiny(clean_share_max=0.5))
    x = torch.rand(4, 3, 32, 32)
    r = model.forward_router(x)
    model.set_clean_share_max(1.)
    halved = model.forward_features(x, router_out=RouterOutput(r.type_logits, 0.5 * r.p_clean, r.omega))
    model.set_clean_share_max(0.5)
    torch.testing.assert_close(model.forward_features(x, router_out=r), halved)  # training passes router_out
    t = float(r.p_clean.detach().median())
    model.set_route_threshold(t)
    torch.testing.assert_close(model(x), _per_sample_reference(model, x, lambda q: 0.5 * (q > t).float()),
                               rtol=1e-4, atol=1e-5)


def test_bounded_routing_through_timm_and_bad_values():
    model = timm.create_model('awnet_r18_025', clean_share_max=0.25)
    assert model.clean_share_max == 0.25
    for bad in (1.5, -0.1, '0.5', True, float('nan')):
        with pytest.raises(ValueError, match=r'clean_share_max must be a number in \[0, 1\]'):
            _tiny(clean_share_max=bad)
    with pytest.raises(ValueError, match='no router type head'):
        timm.create_model('cifar_resnet18_025', clean_share_max=0.5)
    assert timm.create_model('cifar_resnet18_025', clean_share_max=1.0).clean_share_max == 1.


def test_use_route_sets_and_restores():
    model = _trained_stats(_tiny())
    x = torch.rand(2, 3, 32, 32)
    with use_route(model, 'adv'):
        torch.testing.assert_close(model(x), model.forward_with_router(x, route='adv')[0])
    assert model.route == 'auto'
    with pytest.raises(TypeError, match='needs an AWNet'):
        with use_route(torch.nn.Linear(2, 2), 'adv'):
            pass


def test_ablation_type_head_off_uses_adv_bn_at_test():
    model = _trained_stats(_tiny(type_head=False))
    assert model.router.type_head is None and model.router.signal_head is not None
    x = torch.rand(2, 3, 32, 32)
    torch.testing.assert_close(model.forward_features(x), model.forward_features(x, route='adv'))


def test_ablation_switches_build_the_right_parts():
    static = _tiny(mix_bn=False, modulate=False)
    assert static.router is None and not _mixbns(static)
    assert static.forward_with_router(torch.rand(1, 3, 32, 32))[1] is None
    no_mod = _tiny(modulate=False)
    assert no_mod.router.signal_head is None and no_mod.router.type_head is not None
    every_conv = _tiny(modulate_stem_shortcut=True)
    assert len(every_conv.forward_router(torch.rand(1, 3, 32, 32)).omega) == 1 + 4 * 2 + 3  # stem, blocks, shortcuts
    last_only = _tiny(router_feature='last')
    assert last_only.router.feature_dim == 16 and _tiny().router.feature_dim == 8 + 8 + 16 + 16


def test_modulated_stem_and_shortcut_follow_omega():
    model = _trained_stats(_tiny(modulate_stem_shortcut=True))
    x = torch.rand(2, 3, 32, 32)
    r = model.forward_router(x)
    base = model.forward_features(x, router_out=r)
    for i in (0, len(r.omega) - 1):  # the stem's and the last shortcut's signal
        omega = list(r.omega)
        omega[i] = omega[i] * 2
        assert not torch.allclose(model.forward_features(x, router_out=RouterOutput(r.type_logits, r.p_clean, omega)), base)


def test_other_input_sizes():
    model = timm.create_model('awnet_r18').eval()
    assert model.forward_features(torch.rand(2, 3, 64, 64)).shape == (2, 512, 8, 8)
    assert model(torch.rand(1, 3, 48, 40)).shape == (1, 10)


def test_parameter_counts_decompose_as_designed():
    counts = {n: sum(p.numel() for p in timm.create_model(n).parameters())
              for n in ('awnet_r18', 'awnet_r34', 'cifar_resnet18', 'cifar_resnet34')}
    assert counts['cifar_resnet18'] == 11_173_962  # the standard CIFAR ResNet-18 (10 classes)
    router = counts['cifar_resnet18'] - (512 * 10 + 10)  # ResNet-18 trunk without its classifier
    for awnet, static, modulated in (('awnet_r18', 'cifar_resnet18', 3840), ('awnet_r34', 'cifar_resnet34', 7552)):
        bn_channels = sum(m.num_features for m in _mixbns(timm.create_model(awnet)))
        adv_bn = 2 * bn_channels  # affine of each Adv BN
        heads = (960 * 2 + 2) + (960 * modulated + modulated)
        assert counts[awnet] == counts[static] + adv_bn + router + heads


@pytest.mark.parametrize('bad, error, match', [
    (torch.rand(3, 32, 32), ValueError, r'expects a \(B, 3, H, W\) batch'),
    (torch.rand(2, 1, 32, 32), ValueError, r'expects a \(B, 3, H, W\) batch'),
    ((torch.rand(2, 3, 32, 32) * 255).to(torch.uint8), TypeError, 'floating-point pixels'),
])
def test_bad_input_is_rejected_with_what_was_expected(bad, error, match):
    model = _tiny().eval()
    with pytest.raises(error, match=match):
        model(bad)


def test_unknown_route_is_rejected():
    model = _tiny().eval()
    with pytest.raises(ValueError, match="unknown route 'robust'.*'auto', 'clean', 'adv', 'detach'"):
        model.set_route('robust')
    with pytest.raises(ValueError, match="unknown route"):
        model.forward_features(torch.rand(1, 3, 32, 32), route='Clean')


def test_router_out_of_the_wrong_model_is_rejected():
    model = _tiny().eval()
    r = model.forward_router(torch.rand(1, 3, 32, 32))
    with pytest.raises(ValueError, match='modulates 8 convs'):
        model.forward_features(torch.rand(1, 3, 32, 32), router_out=RouterOutput(r.type_logits, r.p_clean, r.omega[:3]))


def test_bad_constructor_options_are_rejected():
    with pytest.raises(ValueError, match="'stages' or 'last'"):
        _tiny(router_feature='middle')
    with pytest.raises(ValueError, match="'zeros' or 'default'"):
        _tiny(signal_init='ones')


def test_numpy_scalars_are_numbers_for_the_route_threshold_and_clean_share_max():
    import numpy as np
    model = _tiny(route_threshold=np.float32(0.9), route_temperature=np.float64(0.05), clean_share_max=np.float32(0.5))
    assert (model.route_threshold, model.clean_share_max) == (float(np.float32(0.9)), 0.5)
    assert type(model.route_threshold) is float and type(model.clean_share_max) is float  # as JSON writes them
    model.set_clean_share_max(np.int64(1))
    for bad in (np.float32(1.5), np.bool_(True), np.float64('nan')):
        with pytest.raises(ValueError, match=r'clean_share_max must be a number in \[0, 1\]'):
            _tiny(clean_share_max=bad)
        with pytest.raises(ValueError, match='route_threshold must be a number strictly between 0 and 1'):
            _tiny(route_threshold=bad)
