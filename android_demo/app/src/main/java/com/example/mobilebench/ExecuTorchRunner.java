package com.example.mobilebench;

import java.io.File;

import org.json.JSONArray;
import org.json.JSONException;
import org.json.JSONObject;
import org.pytorch.executorch.DType;
import org.pytorch.executorch.EValue;
import org.pytorch.executorch.Module;
import org.pytorch.executorch.Tensor;

/** Runs a .pte through ExecuTorch's Java Module API (org.pytorch:executorch-android). */
final class ExecuTorchRunner implements ModelRunner {

    private Module module;
    private ModelSpec spec;
    private EValue input;
    private EValue[] outputs;
    private String[] backends;

    @Override
    public String runtime() {
        return "executorch";
    }

    @Override
    public void load(File model, ModelSpec spec, int threads) {
        this.spec = spec;
        // Module.load reads and parses the program (it lists the methods), so a missing or
        // corrupt .pte throws here. loadMethod then plans the method's memory and initialises
        // the XNNPACK delegate (weight packing), the larger part of a cold load.
        module = Module.load(model.getAbsolutePath(), Module.LOAD_MODE_FILE, threads);
        module.loadMethod("forward");
        // The delegates the program holds for forward (its delegate info, e.g. XnnpackBackend). A method
        // whose ops all fall outside them runs on ExecuTorch's portable CPU kernels.
        backends = module.getMethodMetadata("forward").getBackends();
    }

    @Override
    public JSONObject accelerator() throws JSONException {
        JSONObject o = new JSONObject();
        JSONArray names = new JSONArray();
        if (backends != null) {
            for (String b : backends) {
                names.put(b);
            }
        }
        o.put("requested", "cpu");
        o.put("used", names.length() == 0 ? "cpu (portable kernels, no delegate)" : "cpu (" + join(backends) + ")");
        o.put("backends", names);
        o.put("source", "Module.getMethodMetadata(\"forward\").getBackends(): the delegates in the program");
        return o;
    }

    private static String join(String[] parts) {
        StringBuilder b = new StringBuilder();
        for (String s : parts) {
            b.append(b.length() == 0 ? "" : ", ").append(s);
        }
        return b.toString();
    }

    @Override
    public void setInput(float[] normalized) {
        long[] shape = spec.input.shape;
        Tensor tensor;
        if (spec.input.isInt8()) {
            tensor = Tensor.fromBlob(Quant.quantizeInt8(normalized, spec.input.scale, spec.input.zeroPoint), shape);
        } else {
            tensor = Tensor.fromBlob(normalized, shape);
        }
        input = EValue.from(tensor);
    }

    @Override
    public void invoke() {
        outputs = module.forward(input);
    }

    @Override
    public float[] output() {
        if (outputs == null || outputs.length == 0) {
            throw new IllegalStateException("forward() returned no outputs");
        }
        Tensor out = outputs[0].toTensor();
        if (out.dtype() == DType.FLOAT) {
            return out.getDataAsFloatArray();
        }
        if (out.dtype() == DType.INT8) {
            if (!spec.output.hasQuantization()) {
                throw new IllegalStateException("int8 output but models.json gives no output scale");
            }
            return Quant.dequantize(out.getDataAsByteArray(), spec.output.scale, spec.output.zeroPoint, false);
        }
        throw new IllegalStateException("unsupported output dtype " + out.dtype());
    }

    @Override
    public void close() {
        if (module != null) {
            module.destroy();
            module = null;
        }
        input = null;
        outputs = null;
    }
}
