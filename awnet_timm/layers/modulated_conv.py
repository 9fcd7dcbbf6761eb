""" Filter-wise modulated conv: each output filter scaled per sample

From `Revisiting the Trade-off between Accuracy and Robustness via Weight Distribution of Filters`
(AW-Net, Wei, Zhao and Li, TPAMI 2024, arXiv:2306.03430), Eq. 11-12: the m-th filter of the conv
is scaled by a per-sample regulation signal, `W_hat_m = omega_m * W_m`, then `y = W_hat * x`.

A conv without bias is linear in each filter, so `(omega_m W_m) * x = omega_m (W_m * x)`: this layer
runs one ordinary batched conv and multiplies its (B, C_out, H, W) output by omega (B, C_out).
That equals per-sample weights (a test holds it to a slow per-sample reference) at the cost of one
elementwise multiply. With a bias the bias is added after the scale, i.e. it is not modulated.
"""
from typing import Optional

import torch
import torch.nn as nn

__all__ = ['ModulatedConv2d']


class ModulatedConv2d(nn.Conv2d):
    """ `nn.Conv2d` whose `forward(x, omega)` scales output filter m of sample b by `omega[b, m]`.

    With `omega=None` it is a plain conv, so one layer type serves modulated and static networks.
    """

    def forward(self, x: torch.Tensor, omega: Optional[torch.Tensor] = None) -> torch.Tensor:
        if omega is None:
            return self._conv_forward(x, self.weight, self.bias)
        y = self._conv_forward(x, self.weight, None)
        y = y * omega.to(y.dtype)[:, :, None, None]  # Eq. 11-12, omega (B, C_out)
        bias = self.bias
        if bias is not None:
            y = y + bias.to(y.dtype)[None, :, None, None]
        return y
