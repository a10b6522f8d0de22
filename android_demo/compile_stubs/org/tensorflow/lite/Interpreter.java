// COMPILE-ONLY SIGNATURE STUB for `make android-check`; never packaged into the APK.
// The real class comes from com.google.ai.edge.litert:litert.
package org.tensorflow.lite;

import java.io.File;
import java.nio.ByteBuffer;
import java.util.Map;

public final class Interpreter implements AutoCloseable {

    public static class Options {
        public Options() {
        }

        public Options setNumThreads(int numThreads) {
            throw new UnsupportedOperationException("compile-only stub");
        }

        public Options setUseXNNPACK(boolean useXNNPACK) {
            throw new UnsupportedOperationException("compile-only stub");
        }
    }

    public Interpreter(File modelFile) {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public Interpreter(File modelFile, Options options) {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public Interpreter(ByteBuffer byteBuffer) {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public Interpreter(ByteBuffer byteBuffer, Options options) {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public void run(Object input, Object output) {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public void runForMultipleInputsOutputs(Object[] inputs, Map<Integer, Object> outputs) {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public void allocateTensors() {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public void resizeInput(int idx, int[] dims) {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public int getInputTensorCount() {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public int getOutputTensorCount() {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public Tensor getInputTensor(int inputIndex) {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public Tensor getOutputTensor(int outputIndex) {
        throw new UnsupportedOperationException("compile-only stub");
    }

    public Long getLastNativeInferenceDurationNanoseconds() {
        throw new UnsupportedOperationException("compile-only stub");
    }

    @Override
    public void close() {
        throw new UnsupportedOperationException("compile-only stub");
    }
}
