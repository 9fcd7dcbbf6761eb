"""Golden outputs: fixed weights and inputs give stored logits, so a change to the forward pass shows.

The weights are a deterministic function of each tensor's name (not of init order or RNG state), so
refactors that keep the maths keep the goldens. Regenerate deliberately, after checking a change is
intended, with `python tests/test_golden.py`.
"""
import json
import os
import zlib

import pytest
import timm
import torch

import awnet_timm  # noqa: F401

GOLDEN = os.path.join(os.path.dirname(__file__), 'golden.json')
ARCHS = ['awnet_r18', 'awnet_r34', 'cifar_resnet18', 'cifar_resnet34']


def _fixed_model(name: str) -> torch.nn.Module:
    model = timm.create_model(name).eval()
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
                if key.startswith('router.signal_head'):  # omega near 1, as in a trained model
                    t.copy_(torch.randn(t.shape, generator=g) * 1e-4)
                elif key.endswith('running_var'):
                    t.copy_(torch.rand(t.shape, generator=g) + 0.5)
                elif key.endswith(('running_mean', 'bias')):
                    t.copy_(torch.randn(t.shape, generator=g) * 0.1)
                elif key.endswith('weight') and t.ndim == 1:  # BN scale
                    t.copy_(torch.rand(t.shape, generator=g) * 0.5 + 0.5)
                else:
                    fan_in = t[0].numel()
                    t.copy_(torch.randn(t.shape, generator=g) * (2. / fan_in) ** 0.5)
    return model


def _fixed_input() -> torch.Tensor:
    i = torch.arange(2 * 3 * 32 * 32, dtype=torch.float64).reshape(2, 3, 32, 32)
    return ((torch.sin(i * 0.37) + 1) / 2).float()


def _outputs(name: str):
    model = _fixed_model(name)
    x = _fixed_input()
    with torch.no_grad():
        logits, router_out = model.forward_with_router(x)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
    out = {'logits': logits.tolist(), 'pre_logits_sum': pre.sum(1).tolist()}
    if router_out is not None:
        out['p_clean'] = router_out.p_clean.tolist()
        out['omega_mean'] = [o.mean().item() for o in router_out.omega[:4]]
    return out


@pytest.mark.parametrize('name', ARCHS)
def test_golden_outputs(name):
    with open(GOLDEN) as f:
        golden = json.load(f)[name]
    for key, value in _outputs(name).items():
        torch.testing.assert_close(torch.tensor(value), torch.tensor(golden[key]), rtol=1e-4, atol=1e-4, msg=key)


if __name__ == '__main__':
    with open(GOLDEN, 'w') as f:
        json.dump({name: _outputs(name) for name in ARCHS}, f, indent=1)
    print(f'wrote {GOLDEN}')
