"""Model sources: built-ins, torchvision:NAME, MODULE:FACTORY and file.py:FACTORY, and the errors of each."""

import sys
import textwrap

import pytest
import torch
import torch.nn as nn

from core import models
from core.export_check import check_exportable
from core.models import ModelError


@pytest.mark.parametrize("name, shape", [("convnet", (1, 28, 28)), ("cifarcnn", (3, 32, 32))])
def test_builtins_give_logits_for_their_input(name, shape):
    assert models.input_shape(name) == shape
    model = models.build(name, num_classes=7).eval()
    assert model(torch.zeros(2, *shape)).shape == (2, 7)


def test_convnet_mac_count():
    # conv1 26*26*32*9 + conv2 24*24*64*288 + fc1 9216*128 + fc2 128*10
    expected = 26 * 26 * 32 * 9 + 24 * 24 * 64 * 288 + 9216 * 128 + 128 * 10
    assert models.count_macs(models.build("convnet", 10), (1, 28, 28)) == expected


@pytest.mark.parametrize("arch", ["mobilenet_v3_small", "resnet18", "squeezenet1_1", "efficientnet_b0", "googlenet"])
def test_torchvision_models_get_a_head_for_the_dataset(arch):
    name = f"torchvision:{arch}"
    shape = models.input_shape(name, 32 if arch != "googlenet" else 64, "fashion-mnist")
    assert shape[0] == 3  # grayscale data is repeated to RGB for these
    model = models.build(name, 5)
    models.check_forward(model, name, shape, 5)
    model.train()
    assert model(torch.zeros(2, *shape)).shape == (2, 5)  # train mode too: no auxiliary outputs


def test_the_default_size_of_torchvision_models_and_their_minimum():
    assert models.input_shape("torchvision:resnet18") == (3, 224, 224)
    with pytest.raises(ModelError, match="at least 75x75"):
        models.input_shape("torchvision:inception_v3", 32)


def test_replace_head_keeps_the_body():
    model = models.build("torchvision:resnet18", 1000)
    body = model.layer1[0].conv1.weight.clone()
    assert models.replace_head(model, 3) == "fc"
    assert model.fc.out_features == 3 and torch.equal(model.layer1[0].conv1.weight, body)
    squeeze = models.build("torchvision:squeezenet1_1", 1000)
    assert models.replace_head(squeeze, 4) == "classifier.1" and squeeze.classifier[1].out_channels == 4


def test_pretrained_offline_says_which_file_to_put_where(monkeypatch, tmp_path):
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(tvm._api.WeightsEnum, "get_state_dict", offline)
    with pytest.raises(ModelError, match=r"mobilenet_v2-7ebf99e0\.pth.*put it at .*hub/checkpoints/mobilenet_v2-7ebf99e0\.pth"):
        models.build("torchvision:mobilenet_v2", 10, pretrained=True)
    with pytest.raises(ModelError, match="needs a torchvision:NAME or timm:NAME model"):
        models.build("convnet", 10, pretrained=True)


def test_pretrained_weights_load_and_only_the_head_is_new(monkeypatch, tmp_path):
    """With the checkpoint where torchvision looks for it, --pretrained works offline."""
    import torchvision.models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    reference = tvm.get_model("squeezenet1_1", weights=None)
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save(reference.state_dict(), ckpt / tvm.SqueezeNet1_1_Weights.DEFAULT.url.split("/")[-1])
    monkeypatch.setattr(tvm._api.WeightsEnum, "get_state_dict",
                        lambda self, *a, **k: torch.load(ckpt / self.url.split("/")[-1], weights_only=True))
    model = models.build("torchvision:squeezenet1_1", 6, pretrained=True)
    assert torch.equal(model.features[0].weight, reference.features[0].weight)
    assert model.classifier[1].out_channels == 6


FACTORY = """
import torch.nn as nn

def make(num_classes, in_channels):
    return nn.Sequential(nn.Conv2d(in_channels, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, num_classes))

def not_a_module(num_classes, in_channels):
    return "a string"

def raises(num_classes, in_channels):
    raise RuntimeError("out of ideas")

value = 3
"""


def test_a_factory_in_a_file(tmp_path):
    path = tmp_path / "my_net.py"
    path.write_text(FACTORY)
    name = f"{path}:make"
    assert models.input_shape(name, None, "mnist-5k") == (1, 28, 28)  # follows the data
    assert models.input_shape(name, 40, "cifar10") == (3, 40, 40)
    model = models.build(name, 4, in_channels=1)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 4)


def test_a_factory_in_an_importable_module(tmp_path, monkeypatch):
    (tmp_path / "user_models_pkg.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = models.build("user_models_pkg:make", 3, in_channels=3)
    assert isinstance(model, nn.Module)
    sys.modules.pop("user_models_pkg", None)


@pytest.mark.parametrize("suffix, message", [
    (":missing", "defines no 'missing'"),
    (":not_a_module", "returned a str, not a torch.nn.Module"),
    (":raises", "the model factory raised RuntimeError: out of ideas"),
    (":value", "is a int, not a callable"),
])
def test_factory_errors_name_the_model(tmp_path, suffix, message):
    path = tmp_path / "bad_net.py"
    path.write_text(FACTORY)
    with pytest.raises(ModelError, match=message):
        models.build(f"{path}{suffix}", 3, in_channels=1)


@pytest.mark.parametrize("name, message", [
    ("resnet9", "unknown model 'resnet9'; use a built-in"),
    ("torchvision:mobilenet_v9", "did you mean torchvision:mobilenet_v2"),
    ("torchvision:fcn_resnet50", "no classification model 'fcn_resnet50'"),
    ("/no/such/file.py:make", "file /no/such/file.py not found"),
    ("no_such_module_xyz:make", "cannot import module 'no_such_module_xyz'"),
])
def test_bad_model_names(name, message):
    with pytest.raises(ModelError, match=message):
        models.build(name, 3)


def test_builtin_sizes_are_fixed():
    with pytest.raises(ModelError, match="takes 28x28"):
        models.input_shape("convnet", 64)


def test_weights_path(tmp_path):
    source = models.build("convnet", 10)
    torch.save(source.state_dict(), tmp_path / "w.pt")
    loaded = models.build("convnet", 10, tmp_path / "w.pt")
    assert torch.equal(loaded.fc2.weight, source.fc2.weight)
    with pytest.raises(ModelError, match="not found"):
        models.build("convnet", 10, tmp_path / "missing.pt")


def test_wrong_output_shape_is_named():
    with pytest.raises(ModelError, match=r"must return logits of shape \(batch, 10\); it returned \(2, 3\)"):
        models.check_forward(nn.Sequential(nn.Flatten(), nn.Linear(784, 3)), "mine", (1, 28, 28), 10)


class DataDependent(nn.Module):
    def forward(self, x):
        if x.sum() > 0:  # Python control flow on a tensor value: not traceable
            return x * 2
        return x


def test_an_untraceable_network_names_the_layer():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Sequential(nn.ReLU(), DataDependent()), nn.Flatten(),
                          nn.LazyLinear(10))
    model(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ModelError, match=r"cannot be exported with torch.export in layer 1\.1 \(DataDependent\)"):
        check_exportable(model, "mine", (1, 8, 8))
    check_exportable(nn.Sequential(nn.Conv2d(1, 4, 3), nn.Flatten(), nn.Linear(144, 10)), "fine", (1, 8, 8))


def test_the_readme_example_factory_works(tmp_path):
    """The factory shown in docs/own-network.md builds and exports."""
    readme = (models.__file__.rsplit("/core/", 1)[0]) + "/docs/own-network.md"
    text = open(readme).read()
    code = text.split("<!-- factory-example -->")[1].split("```python")[1].split("```")[0]
    (tmp_path / "tiny_net.py").write_text(textwrap.dedent(code))
    name = f"{tmp_path / 'tiny_net.py'}:build"
    shape = models.input_shape(name, None, "fashion-mnist")
    model = models.build(name, 10, in_channels=shape[0])
    models.check_forward(model, name, shape, 10)
    check_exportable(model, name, shape)


def test_timm_models_take_the_datasets_classes_and_channels():
    """timm:NAME builds with timm.create_model: in_chans follows the data (1 for MNIST), the head its classes."""
    name = "timm:test_efficientnet"  # timm's own tiny test network: fast to build
    assert models.input_shape(name, 32, "mnist-5k") == (1, 32, 32)
    assert models.input_shape(name, None, "cifar10") == (3, 160, 160)  # timm's own default size for it
    model = models.build(name, 5, in_channels=1)
    models.check_forward(model, name, (1, 32, 32), 5)


def test_unknown_timm_name_lists_close_matches():
    with pytest.raises(ModelError, match=r"timm has no model 'efficientnet_lite9'; did you mean timm:efficientnet_lite"):
        models.build("timm:efficientnet_lite9", 3)


def _timm_offline(monkeypatch):
    import timm.models._builder as builder

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    monkeypatch.setattr(builder, "download_cached_file", offline)


def test_timm_pretrained_offline_says_which_file_to_put_where(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _timm_offline(monkeypatch)
    url = r"https://huggingface\.co/timm/test_efficientnet\.r160_in1k/resolve/main/model\.safetensors"
    with pytest.raises(ModelError, match=rf"could not load its pretrained weights.*fetch {url}.*put it at "
                                         rf"{tmp_path}/hub/checkpoints/timm/test_efficientnet\.safetensors"):
        models.build("timm:test_efficientnet", 10, in_channels=3, pretrained=True)


def test_timm_pretrained_loads_the_local_file_with_a_new_head(monkeypatch, tmp_path):
    """With the weights file where the message says, --pretrained works offline; only the head is new."""
    import timm
    from safetensors.torch import save_file

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    _timm_offline(monkeypatch)
    reference = timm.create_model("test_efficientnet", pretrained=False)
    _, local = models.timm_weights_source("test_efficientnet")
    local.parent.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in reference.state_dict().items()}, str(local))
    model = models.build("timm:test_efficientnet", 6, in_channels=3, pretrained=True)
    assert torch.equal(model.conv_stem.weight, reference.conv_stem.weight)
    assert model.get_classifier().out_features == 6
