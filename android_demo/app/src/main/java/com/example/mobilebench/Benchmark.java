package com.example.mobilebench;

import android.content.Context;
import android.util.Log;

import java.io.File;
import java.util.ArrayList;
import java.util.Collections;
import java.util.LinkedHashSet;
import java.util.List;
import java.util.Map;
import java.util.Set;

import org.json.JSONArray;
import org.json.JSONObject;

/**
 * Measures every model of a {@link ModelStore}, one after the other, in this process.
 * Per model: cold load, first inference, warm-up, timed iterations, then an untimed
 * accuracy pass over the test sample during which peak PSS is sampled, then a
 * second (warm) load. A failure in one model becomes an error row; the others run.
 */
final class Benchmark {

    interface Listener {
        void onStatus(String message);

        void onResult(ModelResult result);
    }

    private static final long PSS_SAMPLE_INTERVAL_MS = 20;

    private final Context context;
    private final BenchmarkConfig config;
    private final Listener listener;
    private GoldenOutputs golden;  // the host's outputs on the test sample; null when absent or unreadable

    Benchmark(Context context, BenchmarkConfig config, Listener listener) {
        this.context = context;
        this.config = config;
        this.listener = listener;
    }

    /** Runs everything and writes benchmark_results.json; returns the written file. */
    File run() throws Exception {
        String startedAt = ResultsWriter.now();
        File target = ResultsWriter.resultsFile(context);
        if (target.exists() && !target.delete()) {
            Log.w(BenchmarkActivity.TAG, "could not delete old " + target);
        }
        List<String> errors = new ArrayList<String>();
        List<ModelResult> results = new ArrayList<ModelResult>();
        try {
            measureAll(results, errors);
        } catch (Exception e) {
            errors.add(describe(e));
            Log.e(BenchmarkActivity.TAG, "benchmark aborted", e);
        }
        JSONObject doc = ResultsWriter.document(context, config, startedAt, results, errors);
        ResultsWriter.write(target, doc);
        Log.i(BenchmarkActivity.TAG, "wrote " + target + " run_id=" + config.runId);
        return target;
    }

    private void measureAll(List<ModelResult> results, List<String> errors) throws Exception {
        status("Preparing models");
        ModelStore store = ModelStore.open(context, config.modelDir);
        List<File> files = store.models(config.modelFiles);

        Map<String, ModelSpec> specs = Collections.emptyMap();
        File manifest = store.sideFile(ModelStore.MANIFEST);
        if (manifest == null) {
            errors.add("no " + ModelStore.MANIFEST + " in " + store.modelDir + " or the app assets");
        } else {
            try {
                specs = ModelSpec.parseManifest(IoUtil.readText(manifest));
            } catch (Exception e) {
                errors.add(manifest + ": " + describe(e));
            }
        }

        TestSample sample = null;
        File sampleFile = store.sideFile(ModelStore.SAMPLE);
        if (sampleFile == null) {
            errors.add("no " + ModelStore.SAMPLE + " in " + store.modelDir + " or the app assets");
        } else {
            try {
                sample = TestSample.load(sampleFile);
            } catch (Exception e) {
                errors.add(sampleFile + ": " + describe(e));
            }
        }
        golden = null;
        File goldenFile = store.sideFile(GoldenOutputs.FILE);
        if (goldenFile == null) {
            errors.add("no " + GoldenOutputs.FILE + " in " + store.modelDir
                    + " or the app assets, so no agreement with the host (rerun `make export-android`)");
        } else if (sample != null) {
            try {
                golden = GoldenOutputs.parse(IoUtil.readText(goldenFile), sample.count);
            } catch (Exception e) {
                errors.add(goldenFile + ": " + describe(e));
            }
        }
        if (files.isEmpty() && specs.isEmpty()) {
            errors.add("no .pte or .tflite files in " + store.modelDir);
        }

        Set<String> seen = new LinkedHashSet<String>();
        for (File file : files) {
            seen.add(file.getName());
            add(results, measure(file, specs.get(file.getName()), sample));
        }
        // Listed in models.json but absent on disk: an error row, not a silent skip.
        for (ModelSpec spec : specs.values()) {
            if (!seen.contains(spec.file) && ModelStore.isModel(spec.file)) {
                add(results, ModelResult.failed(spec.file, ModelSpec.runtimeFor(spec.file), spec.quant,
                        "listed in models.json but not found in " + store.modelDir));
            }
        }
    }

    private void add(List<ModelResult> results, ModelResult r) {
        results.add(r);
        Log.i(BenchmarkActivity.TAG, "result " + r.model + " " + (r.isOk() ? "ok" : "error: " + r.error));
        listener.onResult(r);
    }

    ModelResult measure(File file, ModelSpec spec, TestSample sample) {
        String name = file.getName();
        String runtime = ModelSpec.runtimeFor(name);
        String quant = spec == null ? null : spec.quant;
        if (spec == null) {
            return ModelResult.failed(name, runtime, null, "no entry for " + name + " in models.json");
        }
        if (sample == null) {
            return ModelResult.failed(name, runtime, quant, "no usable test sample, so no input and no accuracy");
        }
        if (!file.isFile() || !file.canRead()) {
            return ModelResult.failed(name, runtime, quant, "cannot read " + file + " (missing or not readable)");
        }
        if (file.length() == 0) {
            return ModelResult.failed(name, runtime, quant, "file is empty");
        }
        ModelRunner runner = newRunner(runtime);
        try {
            JSONObject row = measureWith(runner, file, spec, sample);
            return ModelResult.ok(name, runtime, quant, row.getJSONObject("metrics"), row);
        } catch (Throwable t) {
            Log.e(BenchmarkActivity.TAG, "model " + name + " failed", t);
            return ModelResult.failed(name, runtime, quant, describe(t));
        } finally {
            runner.close();
        }
    }

    /** The row's metrics, host_agreement and accelerator. */
    private JSONObject measureWith(ModelRunner runner, File file, ModelSpec spec, TestSample sample)
            throws Exception {
        String name = file.getName();
        System.gc();
        double pssBefore = MemoryProbe.totalPssMb();

        status(name + ": loading");
        long t0 = System.nanoTime();
        runner.load(file, spec, config.threads);
        double loadMs = msSince(t0);
        double pssAfterLoad = MemoryProbe.totalPssMb();

        runner.setInput(spec.input.normalize(sample, 0));
        t0 = System.nanoTime();
        runner.invoke();
        double firstMs = msSince(t0);
        checkOutput(runner.output(), spec);

        status(name + ": warm-up x" + config.warmup);
        for (int i = 0; i < config.warmup; i++) {
            runner.invoke();
        }

        status(name + ": timing x" + config.iterations);
        double[] ms = new double[config.iterations];
        for (int i = 0; i < ms.length; i++) {
            long t = System.nanoTime();
            runner.invoke();
            ms[i] = msSince(t);
        }
        Stats stats = Stats.of(ms);

        status(name + ": accuracy on " + sample.count + " images");
        MemoryProbe.PeakSampler sampler = new MemoryProbe.PeakSampler(PSS_SAMPLE_INTERVAL_MS);
        sampler.start();
        int correct;
        double pssPeak;
        GoldenOutputs.Entry host = golden == null ? null : golden.entries.get(name);
        String hostProblem = null;
        if (host != null && host.logits.length > 0 && host.logits[0].length != spec.output.numElements()) {
            hostProblem = GoldenOutputs.FILE + " has " + host.logits[0].length + " logits per image for " + name
                    + ", models.json " + spec.output.numElements() + " (bundled from another export?)";
            host = null;
        }
        Agreement agreement = new Agreement();
        try {
            correct = countCorrect(runner, spec, sample, host, agreement);
        } finally {
            pssPeak = Math.max(sampler.stopAndGetPeakMb(), pssAfterLoad);
        }
        double nativeHeap = MemoryProbe.nativeHeapMb();
        JSONObject accelerator = runner.accelerator();
        runner.close();

        status(name + ": warm load");
        ModelRunner again = newRunner(runner.runtime());
        double warmLoadMs;
        try {
            t0 = System.nanoTime();
            again.load(file, spec, config.threads);
            warmLoadMs = msSince(t0);
        } finally {
            again.close();
        }

        JSONObject m = new JSONObject();
        m.put("model_load_time(ms)", r3(loadMs));
        m.put("warm_load_time(ms)", r3(warmLoadMs));
        m.put("first_inference_latency(ms)", r3(firstMs));
        m.put("avg_inference_latency(ms)", r3(stats.mean));
        m.put("std_inference_latency(ms)", r3(stats.std));
        m.put("min_inference_latency(ms)", r3(stats.min));
        m.put("max_inference_latency(ms)", r3(stats.max));
        m.put("p50_inference_latency(ms)", r3(stats.p50));
        m.put("p90_inference_latency(ms)", r3(stats.p90));
        m.put("p99_inference_latency(ms)", r3(stats.p99));
        m.put("trimmean_inference_latency(ms)", r3(stats.trimmedMean));
        m.put("ram_pss_usage(mb)", r3(pssPeak));
        m.put("native_heap(mb)", r3(nativeHeap));
        m.put("memory_before_load(mb)", r3(pssBefore));
        m.put("memory_after_load(mb)", r3(pssAfterLoad));
        m.put("memory_peak_inference(mb)", r3(pssPeak));
        m.put("model_size(mb)", r3(file.length() / (1024.0 * 1024.0)));
        m.put("accuracy", (double) correct / sample.count);
        m.put("sample_size", sample.count);
        JSONObject row = new JSONObject();
        row.put("metrics", m);
        row.put("host_agreement", hostAgreement(name, host, agreement, hostProblem));
        row.put("accelerator", accelerator);
        return row;
    }

    /** Top-1 accuracy over the sample; each image's logits also go to {@code agreement} against the host's. */
    private static int countCorrect(ModelRunner runner, ModelSpec spec, TestSample sample, GoldenOutputs.Entry host,
                                    Agreement agreement) throws Exception {
        int correct = 0;
        for (int i = 0; i < sample.count; i++) {
            runner.setInput(spec.input.normalize(sample, i));
            runner.invoke();
            float[] out = runner.output();
            if (Agreement.argmax(out) == sample.labels[i]) {
                correct++;
            }
            if (host != null) {
                agreement.add(i, out, host.logits[i]);
            }
        }
        return correct;
    }

    private JSONObject hostAgreement(String name, GoldenOutputs.Entry host, Agreement a, String problem)
            throws Exception {
        JSONObject o = new JSONObject();
        if (host == null) {
            o.put("available", false);
            o.put("reason", problem != null ? problem : golden == null ? "no usable " + GoldenOutputs.FILE
                    : name + " has no entry in " + GoldenOutputs.FILE + " (bundled from another export?)");
            return o;
        }
        o.put("available", true);
        o.put("images", a.images());
        o.put("top1_agreement", a.top1Agreement());
        double diff = a.maxAbsLogitDiff();
        o.put("max_abs_logit_diff", Double.isInfinite(diff) ? JSONObject.NULL : diff);
        o.put("worst_image", a.worstImage());
        JSONArray disagreeing = new JSONArray();
        for (int i : a.disagreeingImages()) {
            disagreeing.put(i);
        }
        o.put("disagreeing_images", disagreeing);
        o.put("tolerance", host.tolerance);
        o.put("output_step", Double.isNaN(host.outputStep) ? JSONObject.NULL : host.outputStep);
        o.put("host_method", host.method);
        o.put("golden_run_id", golden.runId);
        return o;
    }

    private static void checkOutput(float[] out, ModelSpec spec) {
        int expected = spec.output.numElements();
        if (out.length != expected) {
            throw new IllegalStateException("output has " + out.length + " values, models.json says " + expected);
        }
        for (float v : out) {
            if (Float.isNaN(v) || Float.isInfinite(v)) {
                throw new IllegalStateException("output contains NaN or infinity");
            }
        }
    }


    private static ModelRunner newRunner(String runtime) {
        return "executorch".equals(runtime) ? new ExecuTorchRunner() : new LiteRtRunner();
    }

    private void status(String message) {
        listener.onStatus(message);
    }

    private static double msSince(long t0) {
        return (System.nanoTime() - t0) / 1e6;
    }

    private static double r3(double v) {
        return Math.round(v * 1000.0) / 1000.0;
    }

    static String describe(Throwable t) {
        String msg = t.getMessage();
        String text = t.getClass().getSimpleName() + (msg == null ? "" : ": " + msg);
        Throwable cause = t.getCause();
        if (cause != null && cause != t && cause.getMessage() != null) {
            text += " (caused by " + cause.getClass().getSimpleName() + ": " + cause.getMessage() + ")";
        }
        return text;
    }
}
