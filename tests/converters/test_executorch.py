import numpy as np
import pytest
import torch
import torch.nn as nn

from converters import ConversionError, ExportOptions
from converters.executorch import ExecuTorchConverter, delegation_checks, lower
from converters.verify import run_artifact

pytestmark = pytest.mark.cpu_sensitive  # re-run under forced CPU capabilities (make test-cpus)


def test_int8_pte_is_fully_delegated_and_int8(exported):
    checks = exported.manifest["artifacts"]["convnet_xnnpack_int8.pte"]["checks"]
    assert checks["fully_delegated"] and checks["delegates"] == ["XnnpackBackend"]
    assert checks["non_delegated_ops"] == {}
    assert checks["compute_ops"] == 4 and checks["int8_compute_ops"] == 4
    fp32 = exported.manifest["artifacts"]["convnet_xnnpack_fp32.pte"]
    assert fp32["checks"]["int8_compute_ops"] == 0
    assert fp32["bytes"] > 3.5 * exported.manifest["artifacts"]["convnet_xnnpack_int8.pte"]["bytes"]


def test_pte_runs_and_agrees_with_the_qat_reference(exported):
    v = exported.manifest["artifacts"]["convnet_xnnpack_int8.pte"]["verification"]
    assert v["passed"] and v["method"] == "executorch.runtime"
    agreement = next(x for x in v["verdicts"] if x["method"] == "Clopper-Pearson")
    assert v["images"] == 300 and agreement["outcome"] != "fail"  # the verdict, not a one-image margin
    source = exported.export_source()
    artifact = exported.manifest["artifacts"]["convnet_xnnpack_int8.pte"]
    logits, _ = run_artifact(exported.out / "convnet_xnnpack_int8.pte", artifact, source, exported.data)
    reference = source.program(exported.data.normalize(exported.data.test_images)).detach().numpy()
    assert np.abs(logits - reference).max() < 0.5


class CumsumHead(nn.Module):
    """XNNPACK has no cumsum: it must stay outside the delegate."""

    def forward(self, x):
        return torch.cumsum(x, dim=1)


def test_fallback_is_detected():
    program, table = lower(nn.Sequential(nn.Flatten(), nn.Linear(16, 4), CumsumHead()).eval(), (1, 4, 4))
    checks = delegation_checks(program, table, "fp32")
    assert not checks["fully_delegated"]
    assert any("cumsum" in op for op in checks["non_delegated_ops"])
    op = next(op for op in checks["non_delegated_ops"] if "cumsum" in op)
    assert checks["outside_layers"][op] == ["`2` (CumsumHead)"]  # the module path and class of the layer
    from converters.executorch import fallback_message

    message = fallback_message("m.pte", checks)
    assert f"{op} ×1 in `2` (CumsumHead)" in message and "XNNPACK" in message and "--allow-fallback" in message


def test_fallback_fails_export_unless_allowed(exported, tmp_path, monkeypatch):
    source = exported.export_source()
    source.fp32_model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), CumsumHead())
    with pytest.raises(ConversionError, match="XNNPACK delegate does not take.*--allow-fallback"):
        ExecuTorchConverter().export_baseline(source, tmp_path, ExportOptions.from_config(exported.cfg))
    assert not (tmp_path / "convnet_xnnpack_fp32.pte").exists()
    monkeypatch.setattr(exported.cfg, "allow_fallback", True)
    artifacts = ExecuTorchConverter().export_baseline(source, tmp_path, ExportOptions.from_config(exported.cfg))
    assert artifacts[0].checks["non_delegated_ops"] and (tmp_path / "convnet_xnnpack_fp32.pte").exists()


class _BatchNormAct(nn.BatchNorm2d):
    """A BatchNorm2d subclass as timm's BatchNormAct2d is written: it bumps its own step counter and calls
    F.batch_norm, then an activation. torchao drops the counter's add_ only for the exact nn.BatchNorm2d."""

    def forward(self, x):
        if self.training:
            self.num_batches_tracked.add_(1)
        return torch.relu(nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias,
                                                   self.training, self.momentum, self.eps))


def test_batchnorm_counters_of_a_subclass_never_reach_the_int8_pte(calibrated):
    """The train-mode QAT export records `num_batches_tracked.add_(1)`; it must not survive into the program."""
    from core import qat

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), _BatchNormAct(8), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 4))
    prepared = calibrated(net, (1, 32, 32), batch=4)
    assert set(qat.float_weights(prepared, net)) == set(net.state_dict())  # the counter too, from the model
    program, table = lower(qat.convert(prepared, fold=True), (1, 32, 32))
    checks = delegation_checks(program, table, "int8")
    assert checks["non_delegated_ops"] == {} and checks["fully_delegated"], checks["non_delegated_ops"]
    assert checks["int8_compute_ops"] == checks["compute_ops"] == 2


def _fp32_and_int8(network, calibrated, shape):
    """Delegation checks of `network`'s fp32 program and of its int8 program (calibrated, converted, folded),
    and the calibrated model."""
    from core import qat

    torch.manual_seed(0)
    fp32 = delegation_checks(*lower(network().eval(), shape), "fp32")
    prepared = calibrated(network(), shape, batch=8)
    return fp32, delegation_checks(*lower(qat.convert(prepared, fold=True), shape), "int8"), prepared


def test_noop_slice_nearest_upsampling_and_int_scalars_are_delegated(calibrated, ghost_gate, tmp_path):
    """GhostNetV2's no-op slice (alias_copy), its nearest upsampling and RepViT's `/ 2` (an int64 constant cast by
    a dim-order copy) stayed outside XNNPACK; prepared, both the fp32 and the int8 program are one delegate, and
    the int8 .tflite of the same graph takes the same form."""
    import litert_torch

    from converters.tflite import _int8_config, inspect
    from core import qat

    shape = (1, 32, 32)
    fp32, checks, prepared = _fp32_and_int8(ghost_gate, calibrated, shape)
    assert fp32["non_delegated_ops"] == {}
    assert checks["non_delegated_ops"] == {} and checks["int8_compute_ops"] == checks["compute_ops"] == 6
    unfolded = qat.convert(prepared, fold=False)
    unfolded.training = False
    litert_torch.convert(unfolded, (torch.zeros(1, *shape),), quant_config=_int8_config()).export(str(tmp_path / "g.tflite"))
    tflite_checks, _ = inspect(tmp_path / "g.tflite")
    assert "RESIZE_NEAREST_NEIGHBOR" not in tflite_checks["ops"] and tflite_checks["ops"]["CONCATENATION"] == 3
    # the head's `/ 2` is an int8 `* 0.5` (XNNPACKQuantizer has no pattern for a divide: it was a float MUL)
    assert tflite_checks["float_ops"] == {} and tflite_checks["fully_int8"], tflite_checks["ops"]


def test_batched_matrix_products_are_delegated_without_their_noop_expands(calibrated, tiny_attention):
    """EfficientViT's attention: `a @ b` of 3-d tensors is traced as expand + bmm, the expand to the shape the
    tensor already has; in the int8 program each became an `expand_copy` outside XNNPACK (96 on the zoo's
    efficientvit_m0). Its bias table read by constant indices (`index`, `select`) and a pool to the map's own
    size (`as_strided_copy`) stayed outside in the fp32 program. Prepared, both programs are one delegate."""
    fp32, checks, _ = _fp32_and_int8(tiny_attention, calibrated, (1, 32, 32))
    assert fp32["non_delegated_ops"] == {}
    assert checks["non_delegated_ops"] == {} and checks["fully_delegated"], checks["non_delegated_ops"]


def test_the_bench_report_line_on_the_threadpool_comes_from_the_backend():
    reported = [{"threads": 2, "torch": 2, "executorch_threadpool": 2}, {"threads": 1, "torch": 1, "executorch_threadpool": 1},
                {"threads": 1, "torch": 1, "executorch_threadpool": 1}, {"threads": 1, "torch": 1}]
    assert ExecuTorchConverter().threads_note(reported) == \
        "ExecuTorch threadpool read back: asked 1, threadpool reports 1; asked 2, threadpool reports 2."
    assert ExecuTorchConverter().threads_note([{"threads": None, "torch": 2}]) is None


def test_softmax_over_the_last_dim_after_a_conv_runs_right_in_the_pte():
    """MobileViTv2's separable attention: softmax over the last dim of a 4-d conv output. ExecuTorch's XNNPACK
    program computed it over another dim (the fp32 .pte agreed with PyTorch on 18.5% of the zoo's images);
    prepared as a softmax of the [-1, W] reshape, the program's output is PyTorch's."""
    from executorch.runtime import Runtime

    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(1, 9, 3, padding=1)

        def forward(self, x):
            q, k, v = self.conv(x).split([1, 4, 4], dim=1)
            context = (k * torch.softmax(q, dim=-1)).sum(-1, keepdim=True)
            return torch.relu(v) * context.expand_as(v)

    torch.manual_seed(0)
    net, x = Scores().eval(), torch.randn(1, 1, 8, 6)
    program, table = lower(net, (1, 8, 6))
    assert delegation_checks(program, table, "fp32")["non_delegated_ops"] == {}
    buffer = program.to_executorch().buffer  # kept: the runtime reads it in place
    loaded = Runtime.get().load_program(buffer)
    with torch.no_grad():
        assert torch.allclose(loaded.load_method("forward").execute([x])[0], net(x), atol=1e-5)
