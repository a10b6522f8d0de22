import re

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from core.distill import Distillation, WithTeacher, distillation_loss, teacher_from


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _by_hand(student, teacher, labels, t, w):
    """weight * T² * mean over the batch of sum p_t log(p_t / p_s), + (1 - weight) * CE, in float64 numpy."""
    s, te = student.double().numpy(), teacher.double().numpy()
    ps, pt = _softmax(s / t), _softmax(te / t)
    kl = (pt * (np.log(pt) - np.log(ps))).sum(axis=1).mean()
    ce = -np.log(_softmax(s)[np.arange(len(labels)), labels.numpy()]).mean()
    return w * t * t * kl + (1 - w) * ce


@pytest.mark.parametrize("t", [1.0, 2.0, 4.0, 10.0])
@pytest.mark.parametrize("w", [0.0, 0.3, 0.5, 1.0])
def test_loss_is_the_hinton_mix(t, w):
    torch.manual_seed(0)
    student, teacher, labels = torch.randn(16, 10) * 3, torch.randn(16, 10) * 3, torch.randint(0, 10, (16,))
    got = distillation_loss(student, teacher, labels, t, w)
    assert float(got) == pytest.approx(_by_hand(student, teacher, labels, t, w), rel=1e-5)


def test_weight_zero_is_plain_cross_entropy_and_equal_logits_cost_nothing_extra():
    torch.manual_seed(1)
    student, teacher, labels = torch.randn(8, 5), torch.randn(8, 5), torch.randint(0, 5, (8,))
    assert torch.equal(distillation_loss(student, teacher, labels, 4.0, 0.0), F.cross_entropy(student, labels))
    same = distillation_loss(student, student.clone(), labels, 4.0, 0.5)
    assert float(same) == pytest.approx(0.5 * float(F.cross_entropy(student, labels)), rel=1e-6)


def test_t_squared_keeps_the_soft_gradient_scale_as_t_grows():
    """Hinton: for large T the gradient of T² KL is (s - t) / N less each row's mean, whatever T; without T² it would
    shrink as 1/T²."""
    torch.manual_seed(2)
    student, teacher = torch.randn(4, 6, requires_grad=True), torch.randn(4, 6)
    labels = torch.zeros(4, dtype=torch.long)
    grads = []
    for t in (20.0, 200.0):
        student.grad = None
        distillation_loss(student, teacher, labels, t, 1.0).backward()
        grads.append(student.grad.clone())
    d = student.detach() - teacher
    expected = (d - d.mean(1, keepdim=True)) / (6 * 4)
    assert torch.allclose(grads[1], expected, atol=5e-4)  # float32 softmax at T = 200
    assert torch.allclose(grads[0], grads[1], atol=3e-3)  # the same scale at T = 20 (without T²: 100x larger)


def test_teacher_stays_frozen_in_eval_mode_and_outside_the_trained_parameters():
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    teacher = teacher_from(model, "cpu")
    student = nn.Linear(4, 3)
    net = WithTeacher(student, teacher)
    net.train()
    assert not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    assert list(net.parameters()) == list(student.parameters())
    x = torch.randn(5, 4)
    before = teacher[1].running_mean.clone()
    out = net(x)
    assert torch.equal(out, student(x))
    assert torch.equal(net.teacher_logits, model.eval()(x))  # deterministic: eval mode, no dropout
    assert torch.equal(teacher[1].running_mean, before)
    loss = net.loss_fn(Distillation(4.0, 0.5))(out, torch.tensor([0, 1, 2, 0, 1]))
    loss.backward()
    assert student.weight.grad is not None and all(p.grad is None for p in teacher.parameters())


def test_distilled_qat_differs_from_plain_and_is_recorded(tmp_path, make_config):
    """A tiny run: the same fp32 model, QAT with and without --distill. Distillation changes the QAT weights, the
    manifest's quantize entry records it, and its key differs, so neither result is taken for the other."""
    from core import qat as qat_mod, quantize
    from pipeline.report import export_report
    from pipeline.stages import Pipeline

    settings = dict(quant_mode="qat", qat_max_steps=8, backends="none", limit_train=512, limit_test=100)
    plain = Pipeline(make_config(tmp_path / "out", **settings))
    plain.train()
    plain.qat()
    tag = plain.scheme().tag
    plain_entry = plain.manifest["stages"]["quantize"][tag]
    plain_weights = qat_mod.load_float_weights(plain.quantized_folder(tag) / quantize.FLOAT)
    assert plain_entry["distill"] is None

    taught = Pipeline(make_config(tmp_path / "out", distill=True, distill_temperature=3.0, distill_weight=0.7, **settings))
    assert taught.quant_key() != plain.quant_key()
    taught.qat()  # not a reuse: the key differs
    entry = taught.manifest["stages"]["quantize"][tag]
    assert entry["key"] == taught.quant_key() and entry["steps"] == 8
    assert entry["distill"]["temperature"] == 3.0 and entry["distill"]["weight"] == 0.7
    weights = qat_mod.load_float_weights(taught.quantized_folder(tag) / quantize.FLOAT)
    assert any(not torch.equal(weights[k], plain_weights[k]) for k in weights)
    assert entry["history"][0]["loss"] != plain_entry["history"][0]["loss"]
    assert "(distilled: T 3, weight 0.7)" in export_report(taught.manifest)


@pytest.mark.parametrize("setting, message", [(dict(distill_weight=1.5), "--distill-weight is a fraction in [0, 1], got 1.5"),
                                              (dict(distill_temperature=0.0), "--distill-temperature must be > 0, got 0.0")])
def test_bad_distillation_settings_are_refused_by_name(setting, message):
    from core.config import ConfigError, RunConfig

    with pytest.raises(ConfigError, match=re.escape(message)):
        RunConfig(**setting).validate()
