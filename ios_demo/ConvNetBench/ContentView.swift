import SwiftUI

/// A Run button, a status line and the results table
/// (one row per model and compute-unit setting; failures as red error rows).
struct ContentView: View {
    @StateObject private var model = BenchmarkViewModel()

    var body: some View {
        NavigationStack {
            VStack(alignment: .leading, spacing: 12) {
                Text(model.status)
                    .font(.footnote)
                    .foregroundStyle(.secondary)
                if let device = model.device {
                    Text(deviceLine(device))
                        .font(.footnote.bold())
                        .foregroundStyle(device.isSimulator ? Color.orange : Color.primary)
                }
                ScrollView([.horizontal, .vertical]) {
                    ResultsTable(rows: model.rows)
                        .padding(.bottom)
                }
            }
            .padding(.horizontal)
            .navigationTitle("ConvNet Bench")
            .toolbar {
                Button(model.isRunning ? "Running…" : "Run") {
                    model.run()
                }
                .disabled(model.isRunning)
            }
            .onAppear {
                if model.autorun {
                    model.run()
                }
            }
        }
    }

    private func deviceLine(_ device: DeviceRecord) -> String {
        let kind = device.isSimulator ? "SIMULATOR, not device numbers" : device.soc
        return "\(device.model) · \(device.osVersion) · \(kind)"
    }
}

struct ResultsTable: View {
    let rows: [ResultRow]

    private let headers = ["Model", "Runtime", "Units", "Cold ms", "Warm ms", "First ms",
                           "Mean ms", "p50", "p90", "p99", "Mem load MiB", "Peak MiB", "Acc"]

    var body: some View {
        Grid(alignment: .leading, horizontalSpacing: 12, verticalSpacing: 6) {
            GridRow {
                ForEach(headers, id: \.self) { title in
                    Text(title).bold()
                }
            }
            Divider()
            ForEach(rows) { row in
                GridRow {
                    Text(row.model)
                    Text(row.runtime.rawValue)
                    Text(row.computeUnits ?? "–")
                    if let metrics = row.metrics {
                        Text(format(metrics.coldLoadMs))
                        Text(format(metrics.warmLoadMs))
                        Text(format(metrics.firstInferenceMs))
                        Text(format(metrics.meanMs))
                        Text(format(metrics.p50Ms))
                        Text(format(metrics.p90Ms))
                        Text(format(metrics.p99Ms))
                        Text(format(metrics.memoryAfterLoadMB - metrics.memoryBeforeLoadMB))
                        Text(format(metrics.memoryPeakInferenceMB))
                        Text(String(format: "%.1f%%", metrics.accuracy * 100))
                    } else {
                        Text(row.error ?? "error")
                            .foregroundStyle(.red)
                            .gridCellColumns(headers.count - 3)
                    }
                }
                .font(.system(.caption, design: .monospaced))
            }
        }
    }

    private func format(_ value: Double) -> String {
        String(format: value < 10 ? "%.3f" : "%.1f", value)
    }
}
