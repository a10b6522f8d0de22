import pytest
import torch

from core import models


@pytest.mark.parametrize("name, shape", [
    ("convnet", (1, 28, 28)), ("cifarcnn", (3, 32, 32)), ("mobilenet_v2", (3, 32, 32)), ("mobilenet_v3_small", (3, 32, 32)),
])
def test_models_give_logits_for_their_input(name, shape):
    assert models.input_shape(name) == shape
    model = models.build(name, num_classes=7).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_convnet_mac_count():
    # conv1 26*26*32*9 + conv2 24*24*64*288 + fc1 9216*128 + fc2 128*10
    expected = 26 * 26 * 32 * 9 + 24 * 24 * 64 * 288 + 9216 * 128 + 128 * 10
    assert models.count_macs(models.build("convnet", 10), (1, 28, 28)) == expected


def test_weights_path(tmp_path):
    source = models.build("convnet", 10)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = models.build("convnet", 10, tmp_path / "w.pt")
    assert torch.equal(loaded.fc2.weight, source.fc2.weight)
    with pytest.raises(models.ModelError, match="not found"):
        models.build("convnet", 10, tmp_path / "missing.pt")


def test_bad_model_input():
    with pytest.raises(models.ModelError, match="unknown model 'resnet9'"):
        models.spec("resnet9")
    with pytest.raises(models.ModelError, match="takes 28x28"):
        models.input_shape("convnet", 64)
