// COMPILE-ONLY SIGNATURE STUB for `make android-check`; never packaged into the APK.
// The real class comes from com.google.ai.edge.litert:litert.
package org.tensorflow.lite;

public enum DataType {
    FLOAT32, INT32, UINT8, INT64, STRING, BOOL, INT16, INT8;

    public int byteSize() {
        throw new UnsupportedOperationException("compile-only stub");
    }
}
