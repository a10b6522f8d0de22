"""Parity reads each .tflite tensor in its PyTorch layer's dim order, whatever either runtime permuted."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from converters import parity

pytestmark = pytest.mark.cpu_sensitive  # re-run under forced CPU capabilities (make test-cpus)


class _ChannelsLast(torch.nn.Module):
    """conv -> permute(0, 2, 3, 1) (channels-last, as window attention holds it) -> pad H and W -> slice a window ->
    permute back -> conv -> mean -> linear."""

    def __init__(self):
        super().__init__()
        self.stem, self.conv, self.fc = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.Conv2d(8, 8, 1), torch.nn.Linear(8, 4)

    def forward(self, x):
        x = F.pad(self.stem(x).permute(0, 2, 3, 1), (0, 0, 0, 3, 0, 2))  # [B, 16, 16, 8] -> [B, 18, 19, 8]
        x = x[:, 1:17, 2:19, :].permute(0, 3, 1, 2)  # a 16 x 17 window, back to NCHW
        return self.fc(self.conv(x).mean((2, 3)))


def test_a_tensor_pytorch_holds_channels_last_is_read_as_it_is(tmp_path, int8_parity):
    """litert-torch folds the permute into its NHWC layout: the padded tensor is the .tflite's NHWC tensor as it is.
    Read as an NCHW conv output (transposed), it differed from the .pte by up to hundreds of steps."""
    _, result = int8_parity(_ChannelsLast, tmp_path, "cl")
    layers = {r["name"]: r for r in result["layers"]}
    pad = next(name for name, r in layers.items() if r["op"] == "pad")
    assert layers[pad]["shape"] == [18, 19, 8] and layers[pad]["tflite"]["producer"] == "PAD"
    rows = {r["layer"]: r for r in result["pairs"]["pte_vs_tflite"]["rows"]}
    assert pad in rows and rows[pad]["max_steps"] == 0, rows[pad]
    assert result["pairs"]["pte_vs_tflite"]["first_divergence"] is None, result["pairs"]["pte_vs_tflite"]["verdict"]
    local = parity.check_local(result, max_steps=1)
    assert local["tflite"]["passed"], local["tflite"]["failures"]
    assert layers[pad]["tflite"]["layout"] == "as PyTorch"
    assert layers["stem"]["tflite"]["layout"] == "transposed (0, 3, 1, 2)"  # a conv's own output: NHWC, read as NCHW


def test_frames_follow_permutes_and_reshapes():
    from converters import dim_order

    def _frame(names, shape):
        return dim_order.named(names, shape)

    nchw, nhwc = _frame("NCHW", (1, 16, 7, 7)), _frame("NHWC", (1, 7, 7, 16))
    values = np.arange(16 * 49).reshape(1, 16, 7, 7)
    tflite = values.transpose(0, 2, 3, 1)  # what a .tflite conv holds
    # a conv's output: the .tflite's NHWC tensor read transposed
    assert (dim_order.read(tflite, dim_order.reading(nhwc, tflite.shape, nchw, values.shape)) == values.reshape(1, -1)).all()
    # PyTorch permuted it channels-last: the .tflite's tensor as it is
    torch_cl = dim_order.permute(nchw, (0, 2, 3, 1))
    assert dim_order.reading(nhwc, tflite.shape, torch_cl, (1, 7, 7, 16)) == ([7, 7, 16], [0, 1, 2])
    # a flatten of NCHW in PyTorch, a reshape of NHWC in the .tflite ([1, 49, 16], its transpose); batch dropped too
    flat, flat_t = dim_order.reshape(nchw, (1, 16, 49)), dim_order.reshape(nhwc, (49, 16))
    how = dim_order.reading(flat_t, (49, 16), flat, (1, 16, 49))
    assert (dim_order.read(tflite.reshape(49, 16), how) == values.reshape(1, -1)).all()
    # a split dim (2 windows of 7) and a padded 1 x 1 map keep their axes
    assert dim_order.reshape(_frame("NCHW", (1, 4, 14, 1)), (1, 4, 2, 7)) == (
        (), (("C", 4, 1),), (("H", 2, 7),), (("H", 7, 1),))
    padded = dim_order.keep(_frame("NHWC", (1, 1, 1, 8)), (1, 4, 4, 8))
    assert dim_order.reading(padded, (1, 4, 4, 8), dim_order.permute(dim_order.keep(_frame("NCHW", (1, 8, 1, 1)), (1, 8, 4, 4)), (0, 2, 3, 1)), (1, 4, 4, 8)) == ([4, 4, 8], [0, 1, 2])
    # not the same factors: no reading (the tensor is read flat, as it is)
    assert dim_order.reading(_frame("NCHW", (1, 16, 7, 7)), (1, 16, 7, 7), dim_order.fresh((1, 16, 7, 7)), (1, 16, 7, 7)) is None
