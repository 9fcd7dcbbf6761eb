"""MTARD's teachers: WRN-34-10 / WRN-28-10 (wide_resnet.py) and the CIFAR ResNet-56 (an AWNet config)."""
import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from timm.task import DistillationTeacher

from awnet_timm.models import CIFAR10_MEAN, CIFAR10_STD
from awnet_timm.models.wide_resnet import WideBasicBlock, WideResNet


def _wrn_param_count(depth: int, k: int, num_classes: int = 10) -> int:
    """Closed-form count: stem conv, per block BN + conv3x3 + BN + conv3x3 (+ 1x1 shortcut), final BN, fc."""
    n = (depth - 4) // 6
    total, prev = 3 * 16 * 9, 16
    for chs in (16 * k, 32 * k, 64 * k):
        for j in range(n):
            cin = prev if j == 0 else chs
            total += 2 * cin + cin * chs * 9 + 2 * chs + chs * chs * 9 + (cin * chs if cin != chs else 0)
        prev = chs
    return total + 2 * prev + prev * num_classes + num_classes


def _resnet_param_count(n: int, projection: bool = True, num_classes: int = 10) -> int:
    """CIFAR ResNet-(6n+2): stem conv-BN, per block conv-BN-conv-BN (+ 1x1 conv-BN shortcut), fc."""
    total, prev = 3 * 16 * 9 + 2 * 16, 16
    for chs in (16, 32, 64):
        for j in range(n):
            cin = prev if j == 0 else chs
            total += cin * chs * 9 + 2 * chs + chs * chs * 9 + 2 * chs
            total += cin * chs + 2 * chs if projection and cin != chs else 0
        prev = chs
    return total + prev * num_classes + num_classes


def _num_params(name: str) -> int:
    with torch.device('meta'):
        return sum(p.numel() for p in timm.create_model(name).parameters())


@pytest.mark.parametrize('name, exact, formula, paper_m', [
    ('cifar_wrn34_10', 46_160_474, _wrn_param_count(34, 10), 46.16),  # as reported for TRADES' WRN-34-10
    ('cifar_wrn28_10', 36_479_194, _wrn_param_count(28, 10), 36.5),  # Zagoruyko and Komodakis (BMVC 2016)
    ('cifar_resnet56', 855_770, _resnet_param_count(9), 0.85),  # He et al. (CVPR 2016), Table 6
])
def test_param_counts(name, exact, formula, paper_m):
    n = _num_params(name)
    assert n == exact == formula
    assert n / 1e6 == pytest.approx(paper_m, rel=0.01)


def test_resnet56_paper_count_is_without_projection_shortcuts():
    # He et al.'s CIFAR ResNets pad the identity instead of projecting (option A); ours project (option B)
    assert round(_resnet_param_count(9, projection=False) / 1e6, 2) == 0.85
    assert _resnet_param_count(9) - _resnet_param_count(9, projection=False) == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_teacher_architectures():
    wrn = timm.create_model('cifar_wrn34_10', device='meta')
    assert [len(s) for s in wrn.stages] == [5, 5, 5]
    assert [i['num_chs'] for i in wrn.feature_info] == [16, 160, 320, 640]
    assert [i['reduction'] for i in wrn.feature_info] == [1, 1, 2, 4]
    assert [b.shortcut is not None for s in wrn.stages for b in s] == [True, False, False, False, False] * 3
    assert [len(s) for s in timm.create_model('cifar_wrn28_10', device='meta').stages] == [4, 4, 4]
    r56 = timm.create_model('cifar_resnet56', device='meta')
    assert [len(s.blocks) for s in r56.stages] == [9, 9, 9] and r56.router is None
    assert [i['num_chs'] for i in r56.feature_info] == [16, 16, 32, 64]
    with pytest.raises(ValueError, match='6n \\+ 4'):
        WideResNet(depth=30)


def _bn(x, bn, training):
    return F.batch_norm(x, bn.running_mean.clone(), bn.running_var.clone(), bn.weight, bn.bias, training, 0.1, bn.eps)


def _reference_block(block: WideBasicBlock, x: torch.Tensor, training: bool) -> torch.Tensor:
    """The WRN block written out: BN-ReLU-conv3x3(stride)-BN-ReLU-conv3x3, 1x1 shortcut on the pre-activated x."""
    stride = block.conv1.stride
    a = F.relu(_bn(x, block.bn1, training))
    out = F.conv2d(a, block.conv1.weight, stride=stride, padding=1)
    out = F.relu(_bn(out, block.bn2, training))
    out = F.conv2d(out, block.conv2.weight, stride=1, padding=1)
    shortcut = x if block.shortcut is None else F.conv2d(a, block.shortcut.weight, stride=stride)
    return out + shortcut


def _randomize_bn(model: torch.nn.Module):
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.2)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)


@pytest.mark.parametrize('in_chs, out_chs, stride', [(32, 32, 1), (16, 32, 1), (32, 64, 2)])
@pytest.mark.parametrize('training', [False, True])
def test_wide_block_matches_functional_reference(in_chs, out_chs, stride, training):
    block = WideBasicBlock(in_chs, out_chs, stride, dtype=torch.float64)
    _randomize_bn(block)
    assert (block.shortcut is None) == (in_chs == out_chs and stride == 1)
    x = torch.randn(2, in_chs, 8, 8, dtype=torch.float64)
    expected = _reference_block(block, x, training)
    out = block.train(training)(x)
    assert out.shape == (2, out_chs, 8 // stride, 8 // stride)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)


def test_wide_resnet_matches_functional_reference():
    """Whole trunk on a small WRN-10-2: normalize, stem, reference blocks, final BN-ReLU, pool, fc."""
    model = WideResNet(depth=10, widen_factor=2, dtype=torch.float64).eval()
    _randomize_bn(model)
    x = torch.rand(2, 3, 32, 32, dtype=torch.float64)
    mean = torch.tensor(CIFAR10_MEAN).double().view(1, 3, 1, 1)  # the model keeps its stats in float32
    std = torch.tensor(CIFAR10_STD).double().view(1, 3, 1, 1)
    h = F.conv2d((x - mean) / std, model.stem.weight, padding=1)
    for stage in model.stages:
        for block in stage:
            h = _reference_block(block, h, training=False)
    h = F.relu(_bn(h, model.norm, training=False))
    assert h.shape == (2, 128, 8, 8)
    expected = F.linear(h.mean((2, 3)), model.head.weight, model.head.bias)
    torch.testing.assert_close(model(x), expected, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize('name', ['cifar_wrn34_10', 'cifar_resnet56'])
def test_safetensors_checkpoint_round_trip(name, tmp_path):
    """A teacher trained by the project loads back through timm's pretrained path, BN statistics included."""
    teacher = timm.create_model(name)
    _randomize_bn(teacher)
    state_dict = teacher.state_dict()
    assert 'norm_mean' not in state_dict and 'norm_std' not in state_dict  # the normalization is not a weight
    path = tmp_path / f'{name}.safetensors'
    save_file(state_dict, str(path))
    loaded = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=str(path))).eval()
    assert loaded.pretrained_cfg['file'] == str(path)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        expected = teacher.eval()(x)
        torch.testing.assert_close(loaded(x), expected, rtol=0, atol=0)
        # timm's distillation wrapper: teacher and students both take [0, 1] pixels, so no re-normalization
        kd_teacher = DistillationTeacher(name, num_classes=10, pretrained_path=str(path))
        student_cfg = timm.get_pretrained_cfg('awnet_r18')
        mean = torch.tensor(student_cfg.mean).view(1, 3, 1, 1)
        std = torch.tensor(student_cfg.std).view(1, 3, 1, 1)
        assert kd_teacher.normalize_input(x, mean, std) is x
        torch.testing.assert_close(kd_teacher(x), expected, rtol=0, atol=0)
