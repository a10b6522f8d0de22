"""Reading a W8A8 Core ML program's activation scales through coremltools' rescaling of quantized adds
(converters/coreml_scales.py): the rescaled form reads back as the graph's scales, anything else does not."""

import numpy as np
import pytest

A, B, SUM = 0.1, 0.05, 0.2  # the int8 graph's scales: two inputs and their sum


def _package(tmp_path, dx: float, dy: float, qz: float):
    """quantize a, b -> dequantize (dx, dy) -> add -> quantize (qz) -> dequantize -> relu, saved as it is built."""
    import coremltools as ct
    from coremltools.converters.mil import Builder as mb
    from coremltools.converters.mil.mil import types

    @mb.program(input_specs=[mb.TensorSpec(shape=(1, 4), dtype=types.fp32) for _ in range(2)],
                opset_version=ct.target.iOS17)
    def prog(a, b):
        qa = mb.quantize(input=a, scale=np.float32(A), zero_point=np.int8(0), output_dtype="int8")
        qb = mb.quantize(input=b, scale=np.float32(B), zero_point=np.int8(0), output_dtype="int8")
        total = mb.add(x=mb.dequantize(input=qa, scale=np.float32(dx), zero_point=np.int8(0)),
                       y=mb.dequantize(input=qb, scale=np.float32(dy), zero_point=np.int8(0)))
        q = mb.quantize(input=total, scale=np.float32(qz), zero_point=np.int8(0), output_dtype="int8")
        return mb.relu(x=mb.dequantize(input=q, scale=np.float32(SUM), zero_point=np.int8(0)))

    path = tmp_path / f"add_{dx}_{dy}_{qz}.mlpackage"
    ct.convert(prog, convert_to="mlprogram", minimum_deployment_target=ct.target.iOS17,
               pass_pipeline=ct.PassPipeline.EMPTY).save(str(path))  # no pass: the file holds exactly these scales
    return path


@pytest.mark.parametrize("dx, dy, qz, rescaled", [(A, B, SUM, 0), (A / B, 1.0, SUM / B, 1), (1.0, B / A, SUM / A, 1)])
def test_an_add_rescaled_by_one_factor_reads_back_as_the_graphs_scales(tmp_path, dx, dy, qz, rescaled):
    """As written, and as coremltools' distributive_quantized_binary_op_scale_normalization rewrites it (divided by
    either input's scale): the sum's scale is the graph's in both."""
    from converters.coreml_scales import file_scales

    read = file_scales(_package(tmp_path, dx, dy, qz), [A, B, SUM])
    assert read.scales == pytest.approx([A, B, SUM], rel=1e-3)
    assert read.rescaled_adds == rescaled and read.inconsistent == []


def test_an_add_whose_inputs_are_rescaled_differently_is_reported(tmp_path):
    """dequantize scales 2.0 and 0.5 put a in units of 0.05 and b in units of 0.1: the file adds other numbers."""
    from converters.coreml_scales import file_scales

    read = file_scales(_package(tmp_path, A / B, B / A, SUM / B), [A, B, SUM])
    assert read.inconsistent and "add" in read.inconsistent[0]
    assert not any(abs(s - SUM) < 1e-3 * SUM for s in read.scales)
