"""A user network whose export rewrites change its structure (a BatchNorm after no conv becomes a depthwise conv,
core/standalone_norm.py) goes through qat and export: the QAT-trained float weights are keyed as the rewritten
network, and every later stage must read them that way (the zoo's RepViT failed here: 'Error(s) in loading
state_dict for RepVit')."""

import json

from pipeline import cli

NET = '''
import torch
import torch.nn as nn


class Net(nn.Module):
    def __init__(self, num_classes, in_channels):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv, self.bn = nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.BatchNorm2d(16)
        self.head_bn, self.fc = nn.BatchNorm1d(16), nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.bn(self.conv(x) + x))
        return self.fc(self.head_bn(x.mean((2, 3))))


def build(num_classes, in_channels):
    return Net(num_classes, in_channels)
'''


def test_a_network_with_a_lone_batchnorm_is_quantized_exported_and_verified(tmp_path, capsys):
    factory = tmp_path / "lone_bn.py"
    factory.write_text(NET)
    out = tmp_path / "out"
    args = ["--model", f"{factory}:build", "--dataset", "mnist-5k", "--limit-train", "2048", "--limit-test", "200", "--lr", "0.01",
            "--epochs", "2", "--qat-max-steps", "10", "--backends", "tflite,coreml", "--weight-threshold", "64",
            "--out", str(out)]
    assert cli.main(["train", *args]) == 0
    assert cli.main(["qat", *args]) == 0
    code = cli.main(["export", *args])
    captured = capsys.readouterr()
    assert "Error(s) in loading state_dict" not in captured.out + captured.err
    manifest = json.loads((out / "manifest.json").read_text())
    rewrites = {(r["from"], r["to"]) for r in manifest["model"]["rewrites"]}
    assert ("BatchNorm2d", "depthwise 1x1 Conv2d") in rewrites
    assert ("BatchNorm1d", "folded into the Linear after it") in rewrites
    made = {(a["backend"], a["quant"]) for a in manifest["artifacts"].values()}
    assert {("tflite", "int8"), ("coreml", "fp16"), ("coreml", "pal4")} <= made, made
    tflite = next(a for a in manifest["artifacts"].values() if a["backend"] == "tflite" and a["quant"] == "int8")
    assert tflite["checks"]["float_ops"] == {}, tflite["checks"]  # the lone BatchNorms run as int8 convs
    assert code in (0, 1) and all("verification" in a for a in manifest["artifacts"].values())
