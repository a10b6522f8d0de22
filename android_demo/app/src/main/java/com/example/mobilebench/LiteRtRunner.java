package com.example.mobilebench;

import java.io.File;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;
import org.tensorflow.lite.DataType;
import org.tensorflow.lite.Interpreter;
import org.tensorflow.lite.Tensor;

/**
 * Runs a .tflite through LiteRT's Interpreter API (com.google.ai.edge.litert:litert).
 * XNNPACK is LiteRT's default CPU path. Input and output go through direct
 * ByteBuffers; int8 tensors use the quantization stored in the model itself.
 */
final class LiteRtRunner implements ModelRunner {

    private Interpreter interpreter;
    private ByteBuffer in;
    private ByteBuffer out;
    private DataType inType;
    private DataType outType;
    private float inScale;
    private int inZeroPoint;
    private float outScale;
    private int outZeroPoint;

    @Override
    public String runtime() {
        return "litert";
    }

    @Override
    public void load(File model, ModelSpec spec, int threads) {
        Interpreter.Options options = new Interpreter.Options();
        options.setNumThreads(threads);
        options.setUseXNNPACK(true);  // LiteRT's default CPU delegate, asked for explicitly
        interpreter = new Interpreter(model, options);

        Tensor input = interpreter.getInputTensor(0);
        Tensor output = interpreter.getOutputTensor(0);
        int expected = spec.input.numElements();
        if (input.numElements() != expected) {
            throw new IllegalArgumentException("input tensor has " + input.numElements()
                    + " elements, models.json shape has " + expected);
        }
        inType = input.dataType();
        outType = output.dataType();
        in = ByteBuffer.allocateDirect(input.numBytes()).order(ByteOrder.nativeOrder());
        out = ByteBuffer.allocateDirect(output.numBytes()).order(ByteOrder.nativeOrder());

        Tensor.QuantizationParams inQ = input.quantizationParams();
        Tensor.QuantizationParams outQ = output.quantizationParams();
        inScale = inQ.getScale();
        inZeroPoint = inQ.getZeroPoint();
        outScale = outQ.getScale();
        outZeroPoint = outQ.getZeroPoint();
        if (inType != DataType.FLOAT32 && inScale == 0f) {
            if (!spec.input.hasQuantization()) {
                throw new IllegalArgumentException("quantized input without a scale in the model or models.json");
            }
            inScale = spec.input.scale;
            inZeroPoint = spec.input.zeroPoint;
        }
        if (outType != DataType.FLOAT32 && outScale == 0f) {
            if (!spec.output.hasQuantization()) {
                throw new IllegalArgumentException("quantized output without a scale in the model or models.json");
            }
            outScale = spec.output.scale;
            outZeroPoint = spec.output.zeroPoint;
        }
    }

    @Override
    public JSONObject accelerator() throws JSONException {
        JSONObject o = new JSONObject();
        o.put("requested", "cpu (XNNPACK delegate)");
        // No GPU, NNAPI or NPU delegate is added, so nothing but the CPU can run the model. Which ops
        // XNNPACK took and which stayed on LiteRT's builtin CPU kernels, the Interpreter API does not say.
        o.put("used", "cpu");
        o.put("backends", new JSONArray().put("XNNPACK"));
        o.put("source", "Interpreter.Options.setUseXNNPACK(true), no other delegate added; the Interpreter API "
                + "does not report per-op placement");
        return o;
    }

    @Override
    public void setInput(float[] normalized) {
        in.clear();
        if (inType == DataType.FLOAT32) {
            in.asFloatBuffer().put(normalized);
        } else if (inType == DataType.INT8) {
            in.put(Quant.quantizeInt8(normalized, inScale, inZeroPoint));
        } else if (inType == DataType.UINT8) {
            in.put(Quant.quantizeUint8(normalized, inScale, inZeroPoint));
        } else {
            throw new IllegalArgumentException("unsupported input type " + inType);
        }
        in.rewind();
    }

    @Override
    public void invoke() {
        in.rewind();
        out.rewind();
        interpreter.run(in, out);
    }

    @Override
    public float[] output() {
        out.rewind();
        if (outType == DataType.FLOAT32) {
            float[] values = new float[out.capacity() / 4];
            out.asFloatBuffer().get(values);
            return values;
        }
        byte[] raw = new byte[out.capacity()];
        out.get(raw);
        if (outType == DataType.INT8) {
            return Quant.dequantize(raw, outScale, outZeroPoint, false);
        }
        if (outType == DataType.UINT8) {
            return Quant.dequantize(raw, outScale, outZeroPoint, true);
        }
        throw new IllegalArgumentException("unsupported output type " + outType);
    }

    @Override
    public void close() {
        if (interpreter != null) {
            interpreter.close();
            interpreter = null;
        }
        in = null;
        out = null;
    }
}
