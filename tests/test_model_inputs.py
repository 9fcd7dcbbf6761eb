"""The models' input contract (pixels in [0, 1], checked without a sync per call) and BN statistics under checkpointing."""
import warnings

import numpy as np
import pytest
import torch

from awnet_timm import AWNet
from awnet_timm.layers import PixelRangeWarning
from awnet_timm.models.wide_resnet import WideResNet


def _tiny_awnet(**kwargs) -> AWNet:
    return AWNet(layers=(1, 1), channels=(8, 16), router_layers=(1, 1), router_channels=(8, 8), **kwargs)


def _tiny_wrn(**kwargs) -> WideResNet:
    return WideResNet(depth=10, widen_factor=1, **kwargs)


MODELS = [_tiny_awnet, _tiny_wrn]


BAD_BATCHES = [
    (torch.rand(2, 3, 8, 8) * 255, 'not 0-255'),
    ((torch.rand(2, 3, 8, 8) - 0.45) / 0.25, 'do not apply mean/std normalization'),
    (torch.full((2, 3, 8, 8), float('nan')), 'NaN or inf'),
    (torch.tensor(float('inf')).expand(2, 3, 8, 8), 'NaN or inf'),
]


@pytest.mark.parametrize('make', MODELS)
@pytest.mark.parametrize('bad, message', BAD_BATCHES)
def test_out_of_range_pixels_warn_once_by_default(make, bad, message):
    model = make().eval()
    assert model.input_check == 'warn'
    with pytest.warns(PixelRangeWarning, match=message + ".*set_input_check\\('error'\\)"):
        model(bad)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model(bad)  # once per model: the first batch is the only one checked
        model(torch.rand(2, 3, 8, 8))
    model.set_input_check('warn')  # setting the mode again re-arms it
    with pytest.warns(PixelRangeWarning, match=message):
        model(bad)


@pytest.mark.parametrize('make', MODELS)
@pytest.mark.parametrize('bad, message', BAD_BATCHES)
def test_out_of_range_pixels_are_refused_on_request(make, bad, message):
    model = make(input_check='error').eval()
    with pytest.raises(ValueError, match=message + ".*set_input_check\\('warn'\\)"):
        model(bad)
    with pytest.raises(ValueError, match=message):
        model(bad)  # a refused batch does not count as checked
    assert model(torch.rand(2, 3, 8, 8)).shape == (2, 10)
    model(bad)  # 'error' checks until a batch passes: later batches cost no host sync


@pytest.mark.parametrize('make', MODELS)
def test_good_pixels_never_warn(make):
    model = make(input_check='always').eval()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for x in (torch.rand(2, 3, 8, 8), torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8) + 0.5 / 255):
            make().eval()(x)
            model(x)


@pytest.mark.parametrize('make', MODELS)
def test_always_checks_every_call_off_never(make):
    bad = torch.rand(2, 3, 8, 8) * 255
    model = make().eval()
    model.set_input_check('always')
    model(torch.rand(2, 3, 8, 8))
    with pytest.raises(ValueError, match='0-255'):
        model(bad)
    model.set_input_check('off')
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        model(bad)
        assert make(input_check='off').eval()(bad).shape == (2, 10)
    with pytest.raises(ValueError, match="expected one of warn, error, always, off"):
        model.set_input_check('once')
    model.set_input_check('first')  # the old default's name: refuse a bad first batch, as 'error' does
    assert model.input_check == 'error'
    with pytest.raises(ValueError, match='0-255'):
        make(input_check='first').eval()(bad)


@pytest.mark.parametrize('make', MODELS)
def test_numpy_list_and_float64_inputs_get_a_clear_message(make):
    model = make().eval()
    with pytest.raises(TypeError, match=r'torch.Tensor.*numpy.ndarray.*torch.from_numpy'):
        model(np.zeros((2, 8, 8, 3), dtype=np.uint8))
    with pytest.raises(TypeError, match=r'torch.Tensor.*builtins.list'):
        model([[0.5]])
    with pytest.raises(TypeError, match=r'weights are torch.float32 but the input is torch.float64'):
        model(torch.rand(2, 3, 8, 8, dtype=torch.float64))
    assert model.double()(torch.rand(2, 3, 8, 8, dtype=torch.float64)).dtype == torch.float64
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert make().eval()(torch.rand(2, 3, 8, 8)).shape == (2, 10)


@pytest.mark.parametrize('make', MODELS)
def test_input_check_keeps_compile_fullgraph_and_script(make):
    # FX with the check in place: test_timm_contract.py::test_model_fx
    model = make().eval()
    x = torch.rand(2, 3, 8, 8)
    ref = model(x)
    torch.testing.assert_close(torch.compile(model, fullgraph=True, backend='eager')(x), ref)
    torch.testing.assert_close(torch.jit.script(model)(x), ref)


@pytest.mark.parametrize('make', MODELS)
def test_grad_checkpointing_moves_bn_statistics_once_per_step(make):
    torch.manual_seed(0)
    plain = make().train()
    checkpointed = make().train()
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing()
    x = torch.rand(4, 3, 8, 8)
    plain(x).square().mean().backward()
    checkpointed(x).square().mean().backward()
    for (name, a), b in zip(plain.state_dict().items(), checkpointed.state_dict().values()):
        torch.testing.assert_close(b, a, msg=lambda m: f'{name}: {m}')
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=lambda m: f'{name}: {m}')
