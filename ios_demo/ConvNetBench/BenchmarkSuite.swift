import Foundation

/// Measures every bundled model (and, for Core ML, every compute-unit setting)
/// and collects one result row each. A model that fails becomes an error row;
/// the suite itself never throws.
final class BenchmarkSuite {
    let config: BenchmarkConfig
    let bundle: Bundle
    var onProgress: ((String) -> Void)?

    init(config: BenchmarkConfig, bundle: Bundle) {
        self.config = config
        self.bundle = bundle
    }

    func run() -> BenchmarkReport {
        let startedAt = ISO8601DateFormatter().string(from: Date())
        let (entries, manifestWarning) = ModelCatalog.discover(in: bundle)
        let sample = Result { try TestSample.load(from: bundle) }
        let labels = Result { try LabelList.load(from: bundle) }

        var rows: [ResultRow] = []
        for entry in entries {
            let unitsList: [CoreMLUnits?] = entry.runtime == .coreml ? config.computeUnits.map { Optional($0) } : [nil]
            for units in unitsList {
                onProgress?("\(entry.name) \(units?.rawValue ?? "")")
                rows.append(runOne(entry, units: units, sample: sample, labels: labels))
            }
        }

        let version = bundle.object(forInfoDictionaryKey: "CFBundleShortVersionString") as? String ?? "0"
        return BenchmarkReport(
            app: AppRecord(name: "ConvNetBench", version: version),
            device: DeviceInfo.current(),
            settings: SettingsRecord(warmup: config.warmup, iterations: config.iterations,
                                     threads: ProcessInfo.processInfo.activeProcessorCount),
            startedAt: startedAt,
            results: rows,
            warnings: manifestWarning.map { [$0] } ?? []
        )
    }

    private func runOne(_ entry: ModelEntry, units: CoreMLUnits?,
                        sample: Result<TestSample, Error>, labels: Result<[String], Error>) -> ResultRow {
        do {
            if let problem = entry.problem {
                throw BenchError.unavailable(problem)
            }
            guard let url = entry.url else {
                throw BenchError.unavailable("\(entry.name) is not in the app bundle")
            }
            let runner: ModelRunner
            switch entry.runtime {
            case .coreml:
                runner = try CoreMLRunner(compiledModelURL: url, units: units ?? .all, labels: labels.get())
            case .executorch:
                guard let spec = entry.spec else {
                    throw BenchError.unavailable("\(entry.name) is not described in models.json")
                }
                runner = try ExecuTorchRunner(url: url, spec: spec)
            }
            let metrics = try measure(runner, sample: sample.get())
            return .ok(entry.name, entry.runtime, units: units, metrics: metrics)
        } catch {
            return .failed(entry.name, entry.runtime, units: units, error: error.localizedDescription)
        }
    }

    /// Cold load, warm load, first inference, warmup, timed runs, then one
    /// accuracy pass over the whole sample. Memory is sampled outside the timed calls.
    func measure(_ runner: ModelRunner, sample: TestSample) throws -> Metrics {
        let before = try MemoryProbe.footprintMB()
        let coldLoad = try Stopwatch.ms { try runner.load() }
        let afterLoad = try MemoryProbe.footprintMB()
        runner.unload()
        let warmLoad = try Stopwatch.ms { try runner.load() }
        defer { runner.unload() }

        try runner.prepareInputs(sample)
        var peak = try MemoryProbe.footprintMB()
        let first = try Stopwatch.ms { _ = try runner.predict(0) }
        peak = try max(peak, MemoryProbe.footprintMB())
        for step in 0..<config.warmup {
            _ = try runner.predict(step % sample.count)
        }

        var latencies: [Double] = []
        latencies.reserveCapacity(config.iterations)
        for step in 0..<config.iterations {
            try latencies.append(Stopwatch.ms { _ = try runner.predict(step % sample.count) })
            peak = try max(peak, MemoryProbe.footprintMB())
        }

        var correct = 0
        for index in 0..<sample.count {
            if try runner.predict(index) == sample.labels[index] {
                correct += 1
            }
        }

        guard let stats = LatencyStats(latencies) else {
            throw BenchError.output("no usable latency samples")
        }
        return Metrics(
            coldLoadMs: coldLoad, warmLoadMs: warmLoad, firstInferenceMs: first,
            meanMs: stats.mean, stdMs: stats.std, minMs: stats.min,
            p50Ms: stats.p50, p90Ms: stats.p90, p99Ms: stats.p99, trimmedMeanMs: stats.trimmedMean,
            memoryBeforeLoadMB: before, memoryAfterLoadMB: afterLoad, memoryPeakInferenceMB: peak,
            accuracy: Double(correct) / Double(sample.count), sampleSize: sample.count
        )
    }
}
