"""The explicit mixed-precision option (`float_layers`, the study's --keep-float) in each converter's checks."""

from types import SimpleNamespace

import pytest

from converters.base import ConversionError, ExportOptions, float_layers, mixed
from converters.executorch import quantized_check
from converters.tflite import float_compute, mixed_problems
from core.schemes import Scheme


def test_float_layers_only_for_static_schemes():
    options = SimpleNamespace(float_layers=("fc2",))
    assert float_layers(options, Scheme()) == ("fc2",)
    assert float_layers(options, None) == ()  # a float baseline has nothing to keep float
    normal = ExportOptions(allow_fallback=False, dynamic_batch=0, nhwc=False, nbits=4, granularity="per_grouped_channel",
                           group_size=16, weight_threshold=2048)
    assert float_layers(normal, Scheme()) == ()  # the typed options' default: a normal export keeps nothing float
    with pytest.raises(ConversionError, match="static int8 schemes"):
        float_layers(options, Scheme(activations="dynamic"))
    assert mixed("int8", ("fc2",)) == "int8_mixed" and mixed("pal4", ()) == "pal4"


def test_executorch_mixed_file_needs_some_but_not_all_ops_quantized():
    def checks(quantized: int) -> dict:
        return {"compute_ops": 4, "quantized_weight_ops": quantized, "quantized_activation_ops": quantized}

    c = checks(3)
    quantized_check("m.pte", Scheme(), c, ("fc2",))
    assert c["float_layers"] == ["fc2"]
    for wrong in (0, 4):  # nothing quantized, or the kept layer quantized after all
        with pytest.raises(ConversionError, match="some but not all"):
            quantized_check("m.pte", Scheme(), checks(wrong), ("fc2",))
    with pytest.raises(ConversionError, match="only 3 of 4"):  # without the option a float op is refused
        quantized_check("m.pte", Scheme(), checks(3))


def test_tflite_mixed_file_needs_float_and_int8_compute():
    def row(name: str, dtype: str, dequantized: bool = False) -> dict:
        return {"tensor": name, "dtype": dtype, "dequantized": dequantized}

    stored = [row("conv1", "int8"), row("fc1", "int8"), row("net.fc2.weight", "float32")]
    assert float_compute(stored) == ["net.fc2.weight"] and mixed_problems(stored, ("fc2",)) == []
    assert "no conv/linear op is float" in mixed_problems(stored[:2], ("fc2",))[0]
    assert "nothing was quantized" in mixed_problems([row("a", "float32"), row("b", "float32")], ("fc2",))[0]
    assert float_compute([row("w", "int8", dequantized=True)]) == []  # weight-only: integers, dequantized
