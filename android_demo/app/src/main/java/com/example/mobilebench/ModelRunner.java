package com.example.mobilebench;

import java.io.File;

/**
 * One inference runtime behind the benchmark. The benchmark calls, in order:
 * load, then any number of (setInput, invoke, output), then close.
 * Only {@link #load} and {@link #invoke} are timed.
 */
interface ModelRunner {

    /** "executorch" or "litert", as written to benchmark_results.json. */
    String runtime();

    /** Everything the runtime does before it can run the first inference. Timed as load time. */
    void load(File model, ModelSpec spec, int threads) throws Exception;

    /**
     * Copies one preprocessed image into the model input. {@code normalized} is already
     * in the model's layout (see {@link ModelSpec.TensorSpec#normalize}); int8 models
     * quantize it here. Not timed.
     */
    void setInput(float[] normalized) throws Exception;

    /** Runs one inference on the current input. This is the call that is timed. */
    void invoke() throws Exception;

    /** The first output of the last {@link #invoke}, as float logits (int8 dequantized). */
    float[] output() throws Exception;

    /**
     * What ran the model after {@link #load}: the accelerator or delegate requested, the one used
     * where the runtime tells, the backends in the program, and how each was found out.
     */
    org.json.JSONObject accelerator() throws org.json.JSONException;

    /** Frees the runtime's native memory. Safe to call twice or after a failed load. */
    void close();
}
