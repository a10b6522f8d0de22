package com.example.mobilebench;

import java.util.Arrays;

/** Latency statistics over the timed iterations, in milliseconds. */
final class Stats {

    /** Fraction cut from each end for the trimmed mean. */
    static final double TRIM = 0.10;

    final int n;
    final double mean;
    final double std;
    final double min;
    final double max;
    final double p50;
    final double p90;
    final double p99;
    final double trimmedMean;

    private Stats(double[] sorted) {
        n = sorted.length;
        double sum = 0;
        for (double v : sorted) {
            sum += v;
        }
        mean = sum / n;
        double sq = 0;
        for (double v : sorted) {
            sq += (v - mean) * (v - mean);
        }
        std = n > 1 ? Math.sqrt(sq / (n - 1)) : 0.0;
        min = sorted[0];
        max = sorted[n - 1];
        p50 = percentile(sorted, 50);
        p90 = percentile(sorted, 90);
        p99 = percentile(sorted, 99);
        trimmedMean = trimmedMean(sorted, TRIM);
    }

    static Stats of(double[] samplesMs) {
        if (samplesMs.length == 0) {
            throw new IllegalArgumentException("no samples");
        }
        double[] sorted = samplesMs.clone();
        Arrays.sort(sorted);
        return new Stats(sorted);
    }

    /** Linear interpolation between closest ranks (numpy's default), p in [0, 100]. */
    static double percentile(double[] sorted, double p) {
        double rank = p / 100.0 * (sorted.length - 1);
        int lo = (int) Math.floor(rank);
        int hi = (int) Math.ceil(rank);
        return sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo);
    }

    /** Mean after dropping floor(n * fraction) samples from each end. */
    static double trimmedMean(double[] sorted, double fraction) {
        int k = (int) Math.floor(sorted.length * fraction);
        double sum = 0;
        for (int i = k; i < sorted.length - k; i++) {
            sum += sorted[i];
        }
        return sum / (sorted.length - 2 * k);
    }
}
