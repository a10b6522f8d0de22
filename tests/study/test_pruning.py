"""Section 5: unstructured and structured pruning, each alone and with QAT, in every runtime."""

import torch
import torch.nn as nn

from core.config import RunConfig
from core.models import ConvNet
from study import pruning


def test_schedule_rises_to_the_target():
    s = pruning.cubic_schedule(0.8, 4)
    assert s[0] == 0 and abs(s[-1] - 0.8) < 1e-12 and s == sorted(s)
    assert s[1] - s[0] > s[-1] - s[-2]  # prune fast while there is much to remove, slowly at the end
    total, events = pruning.plan(RunConfig(prune_epochs=1.0, batch_size=10), 400)
    assert total == 40 and len(events) == 10 and events[0] == 0 and events[-1] < 0.75 * total
    assert pruning.plan(RunConfig(prune_epochs=0.0), 400) == (0, [0])  # one-shot, no fine-tuning


def test_hold_masks_rezeroes_pruned_weights():
    net = nn.Linear(4, 2)
    mask = torch.tensor([[1, 0, 1, 0], [0, 1, 1, 1]], dtype=torch.bool)
    with torch.no_grad():
        net.weight.fill_(1.0)
    pruning.hold_masks({"weight": mask})(net)
    assert torch.equal(net.weight != 0, mask)


def test_structured_pruning_removes_channels():
    import torch_pruning as tp

    model = ConvNet().eval()
    pruner = tp.pruner.MagnitudePruner(model, torch.zeros(1, 1, 28, 28), importance=tp.importance.MagnitudeImportance(p=2),
                                       pruning_ratio=0.5, ignored_layers=[pruning.final_layer(model)])
    pruner.step()
    assert (model.conv1.out_channels, model.conv2.out_channels, model.fc1.in_features, model.fc2.out_features) == \
        (16, 32, 4608, 10)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_pruning_against_quantization(section):
    r = section("pruning")
    v = r["variants"]
    assert set(v) == {"baseline", "unstructured", "structured"}
    un, st = v["unstructured"], v["structured"]
    assert abs(un["stats"]["weight_sparsity"] - 0.75) < 0.01
    assert abs(un["sparsity_after_qat"]["weight_sparsity"] - 0.75) < 0.01  # QAT held the pruned weights at zero
    assert st["stats"]["parameters_after"] < 0.3 * st["stats"]["parameters_before"]  # half the channels, twice
    assert st["stats"]["channels"] == {"conv1": 16, "conv2": 32, "fc1": 64, "fc2": 10}
    rows = {(x["variant"], x["backend"], x["quant"]): x for x in r["table"]}
    base, sparse, small = (rows[(n, "executorch", "int8")] for n in ("baseline", "unstructured", "structured"))
    assert abs(sparse["bytes"] / base["bytes"] - 1) < 0.01  # zeros take the same room in a .pte
    assert sparse["zip_bytes"] < 0.6 * base["zip_bytes"]  # ... until the file is compressed
    assert small["bytes"] < 0.35 * base["bytes"]  # whole channels gone: really smaller
    assert all(x["passed"] for k, x in rows.items() if not k[2].startswith("ptprune"))
    assert {x["what"] for x in r["table"]} >= {"neither", "quantization alone", "pruning alone", "both",
                                                "both (sparse + palettized)"}
    assert all(rows[(n, b, q)]["latency_ratio"] > 0 for n in ("unstructured", "structured")
               for b in ("executorch", "tflite") for q in ("int8", "fp32"))
    assert all(x["latency_ratio"] is None for x in r["table"] if x["backend"] == "coreml")  # macOS only
    files = {f["quant"]: f for f in un["files"] if f["backend"] == "coreml"}
    assert "constexpr_sparse_to_dense" in files["sparse_fp16"]["checks"]["weight_ops"]
    assert "constexpr_lut_to_sparse" in files["sparse_pal4"]["checks"]["weight_ops"]  # joint sparse + LUT
    assert files["sparse_pal4"]["bytes"] < 0.6 * files["pal4"]["bytes"]


def test_distill_teaches_pruning_fine_tuning_from_the_unpruned_model():
    """--distill: the pruned model's fine-tuning loss is the distillation loss against the model before pruning."""
    import copy

    from core.data import DataBundle

    g = torch.Generator().manual_seed(0)
    data = DataBundle("random", "torch.randint", torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (64,), generator=g), torch.zeros(1, 1, 28, 28, dtype=torch.uint8),
                      torch.zeros(1, dtype=torch.int64), [str(i) for i in range(10)], mean=[0.5], std=[0.29])
    torch.manual_seed(0)
    start = ConvNet()
    results = {}
    for distill in (False, True):
        cfg = RunConfig(batch_size=16, prune_steps=4, sparsity=0.5, distill=distill).validate()
        torch.manual_seed(1)
        results[distill] = pruning.unstructured(copy.deepcopy(start), data, (1, 28, 28), cfg)
    plain, taught = (results[d].stats["history"] for d in (False, True))
    assert plain[0]["loss"] != taught[0]["loss"]
    assert not torch.equal(results[False].model.fc1.weight, results[True].model.fc1.weight)
