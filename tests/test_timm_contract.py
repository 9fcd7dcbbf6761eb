"""The checks timm's own tests/test_models.py applies to its models, over every registered tag."""
import math

import pytest
import timm
import torch
from safetensors.torch import save_file
from timm.data.random_erasing import RandomErasing
from timm.layers import set_layer_config
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from awnet_timm import AWNet
from awnet_timm.layers import PixelRangeWarning
from conftest import ALL_MODELS

BATCH = 2


def _input(model, size=None):
    size = size or model.pretrained_cfg['input_size']
    return torch.rand(BATCH, *size)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_registry_lists_every_model(name):
    assert timm.is_model(name.split('.')[0])
    assert name.split('.')[0] in timm.list_models(module=['awnet', 'wide_resnet'])


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_forward(name):
    model = timm.create_model(name).eval()
    x = _input(model)
    out = model(x)
    assert out.shape == (BATCH, model.num_classes) and not torch.isnan(out).any()
    model.set_grad_checkpointing()
    torch.testing.assert_close(model(x), out, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_takes_timm_tool_inputs_with_one_warning(name):
    """timm's tests and benchmark.py feed torch.randn; its random erasing (mode 'pixel') writes normal noise into [0, 1]
    images. The default input check must let both through (with one warning per model), not refuse them."""
    model = timm.create_model(name).eval()
    x = torch.randn(BATCH, *model.pretrained_cfg['input_size'])
    with pytest.warns(PixelRangeWarning, match='do not apply mean/std normalization') as record:
        out = model(x)
        model(x)
    assert out.shape == (BATCH, model.num_classes) and len(record) == 1
    erase = RandomErasing(probability=1., mode='pixel', device='cpu')
    erased = erase(torch.rand(BATCH, *model.pretrained_cfg['input_size']))
    assert erased.min() < 0 or erased.max() > 1
    model = timm.create_model(name).train()
    with pytest.warns(PixelRangeWarning):
        model(erased).mean().backward()


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_backward_reaches_every_parameter(name):
    model = timm.create_model(name, num_classes=42).train()
    out = model(_input(model))
    assert out.shape[-1] == 42
    out.mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f'no gradient for {missing}'


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_default_cfgs(name):
    model = timm.create_model(name).eval()
    cfg = model.pretrained_cfg
    assert model.num_classes >= 0 and model.num_features > 0 and model.head_hidden_size > 0
    x = _input(model)
    feat = model.forward_features(x)
    assert feat.shape[1] == model.num_features and tuple(feat.shape[-2:]) == tuple(cfg['pool_size'])
    assert model.forward_head(feat, pre_logits=True).shape[-1] == model.head_hidden_size
    state_dict = model.state_dict()
    first_convs = cfg['first_conv'] if isinstance(cfg['first_conv'], (tuple, list)) else (cfg['first_conv'],)
    for conv in first_convs:
        assert conv + '.weight' in state_dict
    assert cfg['classifier'] + '.weight' in state_dict
    assert model.get_classifier() is model.head
    model.reset_classifier(0)
    assert model(x).shape == (BATCH, model.num_features)
    model.reset_classifier(0, '')
    assert model(x).ndim == 4
    model = timm.create_model(name, num_classes=0, global_pool='').eval()
    assert model(x).ndim == 4
    model.reset_classifier(7, 'avg')
    assert model(x).shape == (BATCH, 7) and model.num_classes == 7


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_features_only(name):
    model = timm.create_model(name, features_only=True).eval()
    x = _input(model)
    outs = model(x)
    assert len(outs) >= 3 and len(outs) == len(model.feature_info.channels())
    for o, c, r in zip(outs, model.feature_info.channels(), model.feature_info.reduction()):
        assert o.shape[1] == c and o.shape[-1] <= math.ceil(x.shape[-1] / r) + 1
    channels = model.feature_info.channels()
    sub = timm.create_model(name, features_only=True, out_indices=(2, len(channels) - 1)).eval()
    assert [o.shape[1] for o in sub(x)] == [channels[2], channels[-1]]


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_forward_intermediates(name):
    model = timm.create_model(name).eval()
    info = FeatureInfo(model.feature_info, list(range(len(model.feature_info))))
    x = torch.rand(BATCH, *model.pretrained_cfg['input_size'])
    final, inter = model.forward_intermediates(x)
    assert len(inter) == len(info.channels())
    for f, c, r in zip(inter, info.channels(), info.reduction()):
        assert f.shape[1] == c and f.shape[-1] <= math.ceil(x.shape[-1] / r) + 1
    torch.testing.assert_close(final, model.forward_features(x))
    assert len(model.forward_intermediates(x, indices=2, intermediates_only=True)) == 2
    early = model.forward_intermediates(x, indices=[1], stop_early=True, intermediates_only=True)
    torch.testing.assert_close(early[0], inter[1])
    model.set_grad_checkpointing()
    final3, _ = model.forward_intermediates(x)
    torch.testing.assert_close(final3, final, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_prune_intermediate_layers(name):
    model = timm.create_model(name).eval()
    x = torch.rand(BATCH, 3, 32, 32)
    _, full = model.forward_intermediates(x)
    level = model.feature_info[2]
    kept = model.prune_intermediate_layers(indices=[1, 2])
    assert kept == [1, 2] and len(model.stages) == 2 and model.num_features == level['num_chs']
    inter = model.forward_intermediates(x, indices=[1, 2], intermediates_only=True)
    for a, b in zip(inter, full[1:3]):
        torch.testing.assert_close(a, b)
    size = 32 // level['reduction']
    assert model(x).shape == (BATCH, level['num_chs'], size, size)
    if getattr(model, 'router', None) is not None and model.router.signal_head is not None:
        kept_channels = [c for stage in model.stages for c in stage.modulated_channels]
        assert model.router.signal_channels == kept_channels
        assert model.router.signal_head.out_features == sum(kept_channels)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_torchscript(name):
    with set_layer_config(scriptable=True):
        model = timm.create_model(name).eval()
    scripted = torch.jit.script(model)
    x = _input(model)
    torch.testing.assert_close(scripted(x), model(x))
    if isinstance(model, AWNet):
        logits, router_out = scripted.forward_with_router(x, 'adv', None)
        torch.testing.assert_close(logits, model.forward_with_router(x, 'adv')[0])


def _fx(model, train: bool):
    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions())
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    return create_feature_extractor(
        model.train(train), train_return_nodes=[train_nodes[-1]], eval_return_nodes=[eval_nodes[-1]],
        tracer_kwargs=tracer_kwargs)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_fx(name):
    model = timm.create_model(name).eval()
    x = _input(model)
    fx_model = _fx(model, train=False).eval()
    assert torch.equal(next(iter(fx_model(x).values())), model(x))
    torch.jit.script(fx_model)  # the FX graph scripts
    model = timm.create_model(name, num_classes=42)
    fx_model = _fx(model, train=True).train()
    next(iter(fx_model(x).values())).mean().backward()
    assert all(p.grad is not None for p in fx_model.parameters())


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_compile_fullgraph_and_channels_last(name):
    model = timm.create_model(name).eval()
    x = _input(model)
    ref = model(x)
    compiled = torch.compile(model, fullgraph=True, backend='aot_eager')
    torch.testing.assert_close(compiled(x), ref, rtol=1e-4, atol=1e-5)
    model = model.to(memory_format=torch.channels_last)
    torch.testing.assert_close(model(x.to(memory_format=torch.channels_last)), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_device_dtype_init(name):
    meta = timm.create_model(name, device='meta')
    assert all(p.device.type == 'meta' for p in meta.parameters())
    model = timm.create_model(name, dtype=torch.float64).eval()
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert model(torch.rand(BATCH, 3, 32, 32, dtype=torch.float64)).dtype == torch.float64


@pytest.mark.parametrize('name', ALL_MODELS)
def test_model_load_pretrained_from_file(name, tmp_path):
    """timm's pretrained-load checks (new in_chans, new head, features), offline from a local file."""
    source = timm.create_model(name).eval()
    path = tmp_path / 'model.safetensors'
    save_file(source.state_dict(), str(path))
    overlay = dict(file=str(path))
    same = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay).eval()
    x = _input(same)
    torch.testing.assert_close(same(x), source(x), rtol=0, atol=0)
    adapted = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, in_chans=1, num_classes=5).eval()
    assert adapted(torch.rand(BATCH, 1, 32, 32)).shape == (BATCH, 5)
    first_convs = source.pretrained_cfg['first_conv']
    for conv in (first_convs,) if isinstance(first_convs, str) else first_convs:
        torch.testing.assert_close(
            adapted.get_submodule(conv).weight, source.get_submodule(conv).weight.sum(1, keepdim=True))
    headless = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, num_classes=0).eval()
    torch.testing.assert_close(headless(x), source.forward_head(source.forward_features(x), pre_logits=True))
    feats = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, features_only=True).eval()
    for f, s in zip(feats(x), source.forward_intermediates(x, intermediates_only=True), strict=True):
        torch.testing.assert_close(f, s)


@pytest.mark.parametrize('name', [n for n in ALL_MODELS if not n.endswith('.untrained')])
def test_unpublished_weights_fail_clearly(name):
    with pytest.raises(RuntimeError, match='No weights for .* have been published yet'):
        timm.create_model(name, pretrained=True)


def test_untrained_tag_and_unknown_tag_fail_clearly():
    with pytest.raises(RuntimeError, match='No pretrained weights exist'):
        timm.create_model('cifar_resnet34.untrained', pretrained=True)
    with pytest.raises(RuntimeError, match='Invalid pretrained tag'):
        timm.create_model('awnet_r18.no_such_tag')
    with pytest.raises(RuntimeError, match='Unknown model'):
        timm.create_model('awnet_r99')


def test_inductor_compile_awnet_r18():
    """A real inductor build (C++ codegen on CPU), not just graph capture."""
    model = timm.create_model('awnet_r18').eval()
    x = torch.rand(BATCH, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(torch.compile(model, fullgraph=True)(x), model(x), rtol=1e-4, atol=1e-4)
