package com.example.mobilebench;

/** Affine int8/uint8 (de)quantization, rounding half to even like PyTorch and LiteRT. */
final class Quant {

    private Quant() {
    }

    static byte[] quantizeInt8(float[] x, float scale, int zeroPoint) {
        byte[] q = new byte[x.length];
        for (int i = 0; i < x.length; i++) {
            q[i] = (byte) clamp(Math.rint(x[i] / scale) + zeroPoint, -128, 127);
        }
        return q;
    }

    static byte[] quantizeUint8(float[] x, float scale, int zeroPoint) {
        byte[] q = new byte[x.length];
        for (int i = 0; i < x.length; i++) {
            q[i] = (byte) clamp(Math.rint(x[i] / scale) + zeroPoint, 0, 255);
        }
        return q;
    }

    static float[] dequantize(byte[] q, float scale, int zeroPoint, boolean unsigned) {
        float[] x = new float[q.length];
        for (int i = 0; i < q.length; i++) {
            int v = unsigned ? (q[i] & 0xff) : q[i];
            x[i] = (v - zeroPoint) * scale;
        }
        return x;
    }

    private static int clamp(double v, int lo, int hi) {
        if (v < lo) {
            return lo;
        }
        if (v > hi) {
            return hi;
        }
        return (int) v;
    }
}
