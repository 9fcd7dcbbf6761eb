""" Filter weight analysis: the paper's Figures 1 and 3 for any set of checkpoints

The paper observes that the means of the filters' weights in a conv layer are spread out (a smooth
distribution) in standard models and concentrated (a sharp one) in robust models, which motivates
input-dependent weights. `filter_means` gives, for one conv layer, the mean of each output filter's
weights; `summarize` gives numbers that say how sharp the distribution is; `plot_filter_means` draws
the distributions of several models over each other.
"""
from typing import Dict, List, Union

import torch
import torch.nn as nn

from ..utils import atomic_write

__all__ = ['conv_layers', 'conv_layer_name', 'filter_means', 'summarize', 'plot_filter_means']


def conv_layers(model: nn.Module) -> List[str]:
    """Names of the model's conv layers in order (the router's excluded: it is not the classifier)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d) and not name.startswith('router.')]


def conv_layer_name(model: nn.Module, layer: Union[str, int] = 1) -> str:
    """The name of a conv layer given by name or by index into `conv_layers` (ValueError when there is none)."""
    names = conv_layers(model)
    if isinstance(layer, int) or (isinstance(layer, str) and layer.lstrip('-').isdigit()):
        index = int(layer)
        if not -len(names) <= index < len(names):
            raise ValueError(f'conv layer index {index} out of range: the model has {len(names)} conv layers '
                             f'(0 to {len(names) - 1})')
        return names[index]
    modules = dict(model.named_modules())
    if layer not in modules or not isinstance(modules[layer], nn.Conv2d):
        raise ValueError(f"'{layer}' is not a conv layer of {type(model).__name__}: expected one of {names[:6]} ...")
    return layer


def filter_means(model: nn.Module, layer: Union[str, int] = 1) -> torch.Tensor:
    """(C_out,) mean weight of each filter of a conv layer, given by name or by index into `conv_layers`
    (default 1: the second conv layer, as in the paper's Figure 1)."""
    weight = dict(model.named_modules())[conv_layer_name(model, layer)].weight.detach().float()
    return weight.flatten(1).mean(1).cpu()


def summarize(means: torch.Tensor) -> Dict[str, float]:
    """Spread and shape of the filter means: a robust model shows a smaller std and a larger kurtosis."""
    m = means.double()
    centred = m - m.mean()
    std = centred.pow(2).mean().sqrt()
    return {
        'filters': len(m),
        'mean': m.mean().item(),
        'std': std.item(),
        'excess_kurtosis': (centred.pow(4).mean() / std.pow(4) - 3).item() if std > 0 else float('nan'),
        'q05': m.quantile(0.05).item(),
        'median': m.median().item(),
        'q95': m.quantile(0.95).item(),
    }


def plot_filter_means(means: Dict[str, torch.Tensor], path: str, layer: str = '', bins: int = 40) -> None:
    """Overlaid histograms (as densities) of the filter means of several models."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5, 3.5))
    lo = min(v.min().item() for v in means.values())
    hi = max(v.max().item() for v in means.values())
    for label, v in means.items():
        ax.hist(v.numpy(), bins=bins, range=(lo, hi), density=True, histtype='step', lw=1.5, label=label)
    ax.set_xlabel('mean of a filter\'s weights')
    ax.set_ylabel('density')
    ax.set_title(f'filter weight means{": " + layer if layer else ""}', fontsize=9)
    ax.legend(fontsize=8)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=path.rsplit('.', 1)[-1], dpi=150, bbox_inches='tight'))
    plt.close(fig)
