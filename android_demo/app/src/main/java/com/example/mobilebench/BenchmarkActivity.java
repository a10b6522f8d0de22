package com.example.mobilebench;

import android.app.Activity;
import android.content.Intent;
import android.graphics.Typeface;
import android.os.Bundle;
import android.text.TextUtils;
import android.util.Log;
import android.view.View;
import android.view.WindowManager;
import android.widget.Button;
import android.widget.EditText;
import android.widget.TableLayout;
import android.widget.TableRow;
import android.widget.TextView;

import java.io.File;
import java.util.Locale;

/**
 * The only screen: three number fields, a Run button, a status line and a results
 * table. Launched by benchmark.py with intent extras (see {@link BenchmarkConfig}),
 * it starts by itself and writes files/benchmark_results.json when done.
 */
public class BenchmarkActivity extends Activity {

    static final String TAG = "MobileBench";

    private static final String[] HEADER = {
        "model", "runtime", "load ms", "1st ms", "avg ms", "p50", "p90", "p99", "trim", "PSS MB", "heap MB", "acc",
        "host top-1", "max dlogit",
    };

    private EditText warmupField;
    private EditText iterationsField;
    private EditText threadsField;
    private Button runButton;
    private TextView status;
    private TableLayout table;
    private volatile boolean running;

    @Override
    protected void onCreate(Bundle savedInstanceState) {
        super.onCreate(savedInstanceState);
        setContentView(R.layout.activity_benchmark);
        warmupField = (EditText) findViewById(R.id.warmup);
        iterationsField = (EditText) findViewById(R.id.iterations);
        threadsField = (EditText) findViewById(R.id.threads);
        runButton = (Button) findViewById(R.id.run);
        status = (TextView) findViewById(R.id.status);
        table = (TableLayout) findViewById(R.id.table);

        showConfig(BenchmarkConfig.fromIntent(getIntent()));
        runButton.setOnClickListener(new View.OnClickListener() {
            @Override
            public void onClick(View v) {
                start(configFromFields());
            }
        });
        if (BenchmarkConfig.wantsAutorun(getIntent())) {
            start(BenchmarkConfig.fromIntent(getIntent()));
        }
    }

    @Override
    protected void onNewIntent(Intent intent) {
        super.onNewIntent(intent);
        setIntent(intent);
        if (BenchmarkConfig.wantsAutorun(intent)) {
            BenchmarkConfig config = BenchmarkConfig.fromIntent(intent);
            showConfig(config);
            start(config);
        }
    }

    private void showConfig(BenchmarkConfig c) {
        warmupField.setText(String.valueOf(c.warmup));
        iterationsField.setText(String.valueOf(c.iterations));
        threadsField.setText(String.valueOf(c.threads));
    }

    private BenchmarkConfig configFromFields() {
        BenchmarkConfig fromIntent = BenchmarkConfig.fromIntent(getIntent());
        String files = fromIntent.modelFiles == null ? null : TextUtils.join(",", fromIntent.modelFiles);
        return new BenchmarkConfig(fromIntent.modelDir, files,
                parse(warmupField, BenchmarkConfig.DEFAULT_WARMUP),
                parse(iterationsField, BenchmarkConfig.DEFAULT_ITERATIONS),
                parse(threadsField, BenchmarkConfig.defaultThreads()),
                null);
    }

    private static int parse(EditText field, int fallback) {
        try {
            return Integer.parseInt(field.getText().toString().trim());
        } catch (NumberFormatException e) {
            return fallback;
        }
    }

    private void start(final BenchmarkConfig config) {
        if (running) {
            Log.w(TAG, "a run is already in progress; ignoring run_id=" + config.runId);
            return;
        }
        running = true;
        runButton.setEnabled(false);
        getWindow().addFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON);
        table.removeAllViews();
        addRow(HEADER, true);
        Log.i(TAG, "start run_id=" + config.runId + " warmup=" + config.warmup + " iterations="
                + config.iterations + " threads=" + config.threads + " model_dir=" + config.modelDir);

        final Benchmark.Listener listener = new Benchmark.Listener() {
            @Override
            public void onStatus(final String message) {
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        status.setText(message);
                    }
                });
            }

            @Override
            public void onResult(final ModelResult result) {
                runOnUiThread(new Runnable() {
                    @Override
                    public void run() {
                        addRow(cells(result), false);
                    }
                });
            }
        };
        Thread worker = new Thread(new Runnable() {
            @Override
            public void run() {
                String done;
                try {
                    File out = new Benchmark(getApplicationContext(), config, listener).run();
                    done = "Done. Wrote " + out.getAbsolutePath();
                } catch (Throwable t) {
                    Log.e(TAG, "could not write results", t);
                    done = "Failed: " + Benchmark.describe(t);
                }
                onRunFinished(done);
            }
        }, "benchmark");
        worker.start();
    }

    private void onRunFinished(final String message) {
        runOnUiThread(new Runnable() {
            @Override
            public void run() {
                status.setText(message);
                runButton.setEnabled(true);
                getWindow().clearFlags(WindowManager.LayoutParams.FLAG_KEEP_SCREEN_ON);
                running = false;
            }
        });
    }

    private static String[] cells(ModelResult r) {
        if (!r.isOk()) {
            return new String[] {r.model, r.runtime, "error: " + r.error};
        }
        return new String[] {
            r.model, r.runtime,
            fmt(r.metric("model_load_time(ms)")),
            fmt(r.metric("first_inference_latency(ms)")),
            fmt(r.metric("avg_inference_latency(ms)")),
            fmt(r.metric("p50_inference_latency(ms)")),
            fmt(r.metric("p90_inference_latency(ms)")),
            fmt(r.metric("p99_inference_latency(ms)")),
            fmt(r.metric("trimmean_inference_latency(ms)")),
            fmt(r.metric("ram_pss_usage(mb)")),
            fmt(r.metric("native_heap(mb)")),
            String.format(Locale.US, "%.3f", r.metric("accuracy")),
            hostCell(r, "top1_agreement"),
            hostCell(r, "max_abs_logit_diff"),
        };
    }

    /** A host_agreement value for the table, "-" where nothing was compared. */
    private static String hostCell(ModelResult r, String key) {
        org.json.JSONObject a = r.row == null ? null : r.row.optJSONObject("host_agreement");
        if (a == null || !a.optBoolean("available", false) || a.isNull(key)) {
            return "-";
        }
        return String.format(Locale.US, "%.4g", a.optDouble(key));
    }

    private static String fmt(double v) {
        return String.format(Locale.US, v < 10 ? "%.3f" : "%.1f", v);
    }

    private void addRow(String[] values, boolean header) {
        TableRow row = new TableRow(this);
        for (String v : values) {
            TextView cell = new TextView(this);
            cell.setText(v);
            cell.setPadding(0, 2, 16, 2);
            cell.setTypeface(Typeface.MONOSPACE, header ? Typeface.BOLD : Typeface.NORMAL);
            cell.setTextSize(12f);
            row.addView(cell);
        }
        table.addView(row);
    }
}
