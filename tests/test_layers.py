"""Each layer against a slow, obvious reference of the paper's equation."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from awnet_timm.layers import AdversarialRouter, MixBatchNorm2d, ModulatedConv2d


def _randomize_bn(bn: nn.BatchNorm2d):
    with torch.no_grad():
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.normal_()
        bn.bias.normal_()


@pytest.mark.parametrize('bias', [False, True])
@pytest.mark.parametrize('stride', [1, 2])
def test_modulated_conv_equals_per_sample_filter_scaling(bias, stride):
    conv = ModulatedConv2d(5, 7, 3, stride=stride, padding=1, bias=bias).double()
    x = torch.randn(4, 5, 9, 9, dtype=torch.float64)
    omega = torch.rand(4, 7, dtype=torch.float64) * 8
    y = conv(x, omega)
    for b in range(4):  # Eq. 11-12: scale each filter of sample b, then convolve
        w_hat = conv.weight * omega[b].reshape(7, 1, 1, 1)
        ref = F.conv2d(x[b:b + 1], w_hat, conv.bias, stride=stride, padding=1)
        torch.testing.assert_close(y[b:b + 1], ref, rtol=1e-10, atol=1e-10)


def test_modulated_conv_without_omega_is_plain_conv():
    conv = ModulatedConv2d(3, 4, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1))
    torch.testing.assert_close(conv(x, torch.ones(2, 4)), conv(x))


def test_mixbn_eval_equals_explicit_blend():
    bn = MixBatchNorm2d(6).double().eval()
    _randomize_bn(bn.clean)
    _randomize_bn(bn.adv)
    x = torch.randn(5, 6, 4, 4, dtype=torch.float64)
    p = torch.tensor([0., 0.25, 0.5, 0.9, 1.], dtype=torch.float64)
    out = bn(x, p, 'mix')
    for b in range(5):  # Eq. 14
        ref = (1 - p[b]) * bn.adv(x[b:b + 1]) + p[b] * bn.clean(x[b:b + 1])
        torch.testing.assert_close(out[b:b + 1], ref, rtol=1e-10, atol=1e-10)


def test_mixbn_training_branch_moves_only_its_statistics():
    bn = MixBatchNorm2d(3).train()
    x = torch.randn(8, 3, 4, 4) * 3 + 1
    adv_before = bn.adv.running_mean.clone()
    out = bn(x, None, 'clean')  # Eq. 13: a clean batch goes through the Clean BN only
    torch.testing.assert_close(out, F.batch_norm(x, None, None, bn.clean.weight, bn.clean.bias, training=True))
    assert not torch.equal(bn.clean.running_mean, torch.zeros(3))
    torch.testing.assert_close(bn.adv.running_mean, adv_before)
    clean_before = bn.clean.running_mean.clone()
    bn(x * 2, None, 'adv')
    torch.testing.assert_close(bn.clean.running_mean, clean_before)
    assert bn.adv.num_batches_tracked.item() == 1 and bn.clean.num_batches_tracked.item() == 1


def test_mixbn_training_mix_blends_batch_statistics():
    bn = MixBatchNorm2d(3).train()
    _randomize_bn(bn.clean)
    _randomize_bn(bn.adv)
    x = torch.randn(4, 3, 5, 5)
    p = torch.rand(4)
    out = bn(x, p, 'mix')
    ref_c = F.batch_norm(x, None, None, bn.clean.weight, bn.clean.bias, training=True)
    ref_a = F.batch_norm(x, None, None, bn.adv.weight, bn.adv.bias, training=True)
    torch.testing.assert_close(out, p.view(-1, 1, 1, 1) * ref_c + (1 - p.view(-1, 1, 1, 1)) * ref_a)


def test_mixbn_rejects_bad_branch_and_missing_p():
    bn = MixBatchNorm2d(2).eval()
    with pytest.raises(ValueError, match="'clean', 'adv', 'mix'"):
        bn(torch.randn(1, 2, 2, 2), None, 'both')
    with pytest.raises(ValueError, match='needs p_clean'):
        bn(torch.randn(1, 2, 2, 2), None, 'mix')


def test_router_heads_follow_eq_18_19():
    router = AdversarialRouter([4, 6], layers=(1, 1, 1, 1), channels=(8, 8, 16, 16), beta=3.0, signal_init='default').eval()
    x = torch.randn(3, 3, 16, 16)
    out = router(x)
    psi = router.forward_psi(x)
    assert psi.shape == (3, 8 + 8 + 16 + 16)
    torch.testing.assert_close(out.type_logits, psi @ router.type_head.weight.T + router.type_head.bias)
    torch.testing.assert_close(out.p_clean, torch.softmax(out.type_logits, 1)[:, 1])
    w, b = router.signal_head.weight, router.signal_head.bias
    torch.testing.assert_close(out.omega[0], (torch.tanh(psi @ w[:4].T + b[:4]) + 1) ** 3)
    torch.testing.assert_close(out.omega[1], (torch.tanh(psi @ w[4:].T + b[4:]) + 1) ** 3)
    assert all(((o > 0) & (o < 2 ** 3)).all() for o in out.omega)


def test_router_psi_concatenates_pooled_stages():
    router = AdversarialRouter([], layers=(1, 1), channels=(4, 8)).eval()
    x = torch.randn(2, 3, 8, 8)
    h = router.stem(x)
    h1 = router.stages[0](h, [])
    h2 = router.stages[1](h1, [])
    torch.testing.assert_close(router.forward_psi(x), torch.cat([h1.mean((2, 3)), h2.mean((2, 3))], 1))
    assert router(x).omega == [] and router.signal_head is None


def test_router_zero_init_starts_at_unit_omega():
    router = AdversarialRouter([5], layers=(1,), channels=(4,))
    assert torch.equal(router(torch.randn(2, 3, 8, 8)).omega[0], torch.ones(2, 5))


@pytest.mark.parametrize('train', [True, False])
@pytest.mark.parametrize('branch', ['clean', 'adv', 'mix'])
def test_conv_norm_act_fused_omega_equals_modulated_conv_then_mixbn(branch, train):
    from awnet_timm.layers import ConvNormAct
    unit = ConvNormAct(4, 6, 3).double()
    _randomize_bn(unit.bn.clean)
    _randomize_bn(unit.bn.adv)
    unit.train(train)
    x = torch.randn(3, 4, 8, 8, dtype=torch.float64)
    omega = torch.rand(3, 6, dtype=torch.float64) * 8
    p = torch.rand(3, dtype=torch.float64)
    ref = torch.relu(unit.bn(unit.conv(x, omega), p, branch))  # Eq. 11-12, then Eq. 13/14
    torch.testing.assert_close(unit(x, omega, p, branch), ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('branch', ['clean', 'adv'])
def test_mixbn_eval_affine_equals_batchnorm(branch):
    bn = MixBatchNorm2d(4).double().eval()
    _randomize_bn(getattr(bn, branch))
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    scale = torch.ones(2, 4, dtype=torch.float64)
    torch.testing.assert_close(bn(x, None, branch, scale), getattr(bn, branch)(x), rtol=1e-10, atol=1e-10)
