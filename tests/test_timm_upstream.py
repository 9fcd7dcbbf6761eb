""" timm's own tests/test_models.py, run over every model awnet_timm registers

The file comes from the sdist of the installed timm (Apache-2.0, its LICENSE beside it), which
`bash tests/setup_tools.sh` unpacks into .timm-tests/timm-<version>/, or from a pytorch-image-models
checkout named by AWNET_TIMM_TESTS. It is imported with timm's `list_models` / `list_pretrained`
narrowed to our models, so its registry-parametrized tests collect here with our models only (and the
tests over hard-coded timm models are left out). Two deliberate changes to what it selects:
- `module=` filters (timm's list of modules with `forward_intermediates`) count our modules in: ours
  implement it, so the intermediates, getter-features and pruning tests run on them too;
- a pretrained tag whose weights are not served here (not in the Hugging Face cache, and offline or not
  on the endpoint) is skipped with the reason; with HF_HUB_OFFLINE=0 HF_ENDPOINT=<mirror> they run.
"""
import importlib.util
import os
import warnings
from typing import Callable, List, Optional

import pytest
import timm
import torch
from huggingface_hub import constants as hf_constants, file_exists, try_to_load_from_cache
from timm.models import get_pretrained_cfg, model_entrypoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMM_TESTS = os.environ.get('AWNET_TIMM_TESTS') or os.path.join(REPO, '.timm-tests', f'timm-{timm.__version__}')
TEST_MODELS = os.path.join(TIMM_TESTS, 'tests', 'test_models.py')
OURS = {n for n in timm.list_models() if model_entrypoint(n).__module__.startswith('awnet_timm.')}
# timm's tests feed torch.randn on purpose; the default input check warns once per model (tests/test_model_inputs.py)
pytestmark = pytest.mark.filterwarnings('ignore::awnet_timm.layers.PixelRangeWarning')


def _not_served(name: str) -> Optional[str]:
    """Why the weights of the tag `name` cannot be loaded here, or None when they may be."""
    cfg = get_pretrained_cfg(name)
    if not cfg.hf_hub_id or cfg.file or cfg.url or cfg.state_dict:
        return None
    repo, _, revision = cfg.hf_hub_id.partition('@')
    if isinstance(try_to_load_from_cache(repo, 'model.safetensors', revision=revision or None), str):
        return None
    if hf_constants.HF_HUB_OFFLINE:
        return 'not in the Hugging Face cache and HF_HUB_OFFLINE=1'
    try:
        if not file_exists(repo, 'model.safetensors', revision=revision or None):
            return f'{hf_constants.ENDPOINT} serves no {repo}/model.safetensors'
    except Exception:  # an unreachable endpoint: let the test run and fail with the loader's message
        return None
    return None


def _ours_only(list_models: Callable[..., List[str]]) -> Callable[..., list]:
    def ours(filter='', module='', pretrained=False, exclude_filters='', name_matches_cfg=False, include_tags=None):
        names = list_models(filter=filter, pretrained=pretrained, exclude_filters=exclude_filters,
                            name_matches_cfg=name_matches_cfg, include_tags=include_tags)
        names = [n for n in names if n.split('.')[0] in OURS]
        if not pretrained:
            return names
        reasons = {n: _not_served(n) for n in names}
        how = ('serve them (`awnet mirror hub/releases`, or the Hub) and run with HF_HUB_OFFLINE=0 HF_ENDPOINT=<url>, '
               'or warm the Hugging Face cache')
        return [pytest.param(n, marks=pytest.mark.skip(reason=f'no weights served for {n}: {why}; {how}')) if why else n
                for n, why in reasons.items()]
    return ours


def _import_timm_tests():
    """timm's test_models module, imported with the model lists narrowed to ours (and its JIT settings undone)."""
    list_models, list_pretrained = timm.list_models, timm.list_pretrained
    executor = torch._C._jit_set_profiling_executor(True)  # test_models.py sets these at import: keep them local
    mode = torch._C._jit_set_profiling_mode(True)
    timm.list_models = ours = _ours_only(list_models)
    timm.list_pretrained = lambda filter='', exclude_filters='': ours(
        filter, pretrained=True, exclude_filters=exclude_filters, include_tags=True)  # what timm's does
    try:
        spec = importlib.util.spec_from_file_location('timm_tests_test_models', TEST_MODELS)
        module = importlib.util.module_from_spec(spec)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', pytest.PytestUnknownMarkWarning)  # timm registers its markers itself
            spec.loader.exec_module(module)
    finally:
        timm.list_models, timm.list_pretrained = list_models, list_pretrained
        torch._C._jit_set_profiling_executor(executor)
        torch._C._jit_set_profiling_mode(mode)
    return module


def _model_names(test) -> Optional[list]:
    for mark in getattr(test, 'pytestmark', []):
        if mark.name == 'parametrize' and 'model_name' in mark.args[0]:
            values = [v.values if hasattr(v, 'values') else v for v in mark.args[1]]
            return [v[0] if isinstance(v, (tuple, list)) else v for v in values]
    return None


def _registry_tests(module) -> dict:
    """timm's tests parametrized over the (narrowed) registry, and the fixtures they use."""
    tests = {}
    for name, obj in vars(module).items():
        names = _model_names(obj) if name.startswith('test_') and callable(obj) else None
        if names and all(n.split('.')[0] in OURS for n in names):
            tests[name] = obj
        elif type(obj).__name__ == 'FixtureFunctionDefinition' or hasattr(obj, '_pytestfixturefunction'):
            tests[name] = obj
    return tests


TIMM_TEST_MODULE, IMPORT_ERROR = None, None
if os.path.isfile(TEST_MODELS):
    try:
        TIMM_TEST_MODULE = _import_timm_tests()
    except Exception as e:  # reported by the test below, without stopping the rest of the suite's collection
        IMPORT_ERROR = e
    else:
        globals().update(_registry_tests(TIMM_TEST_MODULE))


def test_timm_tests_are_here_and_cover_every_model():
    if IMPORT_ERROR is not None:
        raise IMPORT_ERROR
    assert TIMM_TEST_MODULE is not None, (
        f"timm's tests/test_models.py is not at {TEST_MODELS}: run `bash tests/setup_tools.sh` (it unpacks the sdist "
        f"of timm {timm.__version__} there), or point AWNET_TIMM_TESTS at a pytorch-image-models checkout")
    tests = _registry_tests(TIMM_TEST_MODULE)
    for core in ('test_model_forward', 'test_model_backward', 'test_model_default_cfgs', 'test_model_forward_torchscript',
                 'test_model_forward_features', 'test_model_forward_intermediates', 'test_model_forward_fx',
                 'test_model_backward_fx'):
        assert core in tests, f"timm's test_models.py has no {core} over the registry any more"
        assert {n.split('.')[0] for n in _model_names(tests[core])} == OURS, core
