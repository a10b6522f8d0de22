package com.example.mobilebench;

import android.os.Debug;

/**
 * Process memory as Android accounts it. PSS (proportional set size) counts private
 * pages plus a share of shared ones, so it includes the runtimes' native allocations
 * and the mapped model file. Values in MiB.
 */
final class MemoryProbe {

    private static final double KIB_PER_MIB = 1024.0;

    private MemoryProbe() {
    }

    /** Total PSS from a full Debug.MemoryInfo snapshot (reads /proc/self/smaps; tens of ms). */
    static double totalPssMb() {
        Debug.MemoryInfo info = new Debug.MemoryInfo();
        Debug.getMemoryInfo(info);
        return info.getTotalPss() / KIB_PER_MIB;
    }

    /** Bytes currently allocated on the native (malloc) heap, in MiB. */
    static double nativeHeapMb() {
        return Debug.getNativeHeapAllocatedSize() / (KIB_PER_MIB * KIB_PER_MIB);
    }

    /**
     * Polls Debug.getPss() on its own thread and keeps the maximum. It runs during the
     * accuracy pass, never during the timed iterations, so it cannot slow them down.
     */
    static final class PeakSampler implements Runnable {
        private final long intervalMs;
        private volatile boolean stop;
        private volatile long peakKb;
        private Thread thread;

        PeakSampler(long intervalMs) {
            this.intervalMs = intervalMs;
        }

        void start() {
            peakKb = Debug.getPss();
            thread = new Thread(this, "pss-sampler");
            thread.start();
        }

        @Override
        public void run() {
            while (!stop) {
                long kb = Debug.getPss();
                if (kb > peakKb) {
                    peakKb = kb;
                }
                try {
                    Thread.sleep(intervalMs);
                } catch (InterruptedException e) {
                    return;
                }
            }
        }

        /** Stops the thread and returns the highest PSS seen, in MiB. */
        double stopAndGetPeakMb() throws InterruptedException {
            stop = true;
            thread.interrupt();
            thread.join();
            long kb = Debug.getPss();
            return Math.max(kb, peakKb) / KIB_PER_MIB;
        }
    }
}
