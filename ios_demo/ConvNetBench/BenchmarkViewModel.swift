import Combine
import Foundation

/// Runs the suite off the main thread and publishes the rows for the table.
@MainActor
final class BenchmarkViewModel: ObservableObject {
    @Published private(set) var rows: [ResultRow] = []
    @Published private(set) var status = "Tap Run to measure the bundled models."
    @Published private(set) var device: DeviceRecord?
    @Published private(set) var isRunning = false

    /// Launch with the argument --autorun to start at once (handy with devicectl).
    var autorun: Bool { ProcessInfo.processInfo.arguments.contains("--autorun") }

    func run() {
        guard !isRunning else { return }
        isRunning = true
        status = "Running…"
        let config = BenchmarkConfig.fromEnvironment()
        Task {
            let outcome = await Task.detached(priority: .userInitiated) { () -> (BenchmarkReport, String) in
                let suite = BenchmarkSuite(config: config, bundle: .main)
                suite.onProgress = { [weak self] text in
                    Task { @MainActor in self?.status = "Running \(text)…" }
                }
                let report = suite.run()
                do {
                    let url = try ResultsWriter.write(report)
                    return (report, "Saved \(url.lastPathComponent) in Documents.")
                } catch {
                    return (report, "Could not save results: \(error.localizedDescription)")
                }
            }.value
            rows = outcome.0.results
            device = outcome.0.device
            let warnings = outcome.0.warnings.joined(separator: " ")
            status = warnings.isEmpty ? outcome.1 : outcome.1 + " " + warnings
            isRunning = false
        }
    }
}
