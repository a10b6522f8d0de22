// COMPILE-ONLY SIGNATURE STUB for `make android-check`; never packaged into the APK.
// The real class comes from com.google.ai.edge.litert:litert.
package org.tensorflow.lite;

public interface Tensor {

    DataType dataType();

    int numDimensions();

    int numBytes();

    int numElements();

    int[] shape();

    int[] shapeSignature();

    int index();

    String name();

    QuantizationParams quantizationParams();

    class QuantizationParams {
        public QuantizationParams(float scale, int zeroPoint) {
            throw new UnsupportedOperationException("compile-only stub");
        }

        public float getScale() {
            throw new UnsupportedOperationException("compile-only stub");
        }

        public int getZeroPoint() {
            throw new UnsupportedOperationException("compile-only stub");
        }
    }
}
