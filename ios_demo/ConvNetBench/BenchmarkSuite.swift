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
        let golden = Result { try GoldenOutputs.load(from: bundle, count: sample.get().count) }

        var rows: [ResultRow] = []
        for entry in entries {
            let unitsList: [CoreMLUnits?] = entry.runtime == .coreml ? config.computeUnits.map { Optional($0) } : [nil]
            for units in unitsList {
                onProgress?("\(entry.name) \(units?.rawValue ?? "")")
                rows.append(runOne(entry, units: units, sample: sample, labels: labels, golden: golden))
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

    private func runOne(_ entry: ModelEntry, units: CoreMLUnits?, sample: Result<TestSample, Error>,
                        labels: Result<[String], Error>, golden: Result<GoldenOutputs, Error>) -> ResultRow {
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
            var agreement = HostAgreement()
            let hostEntry = (try? golden.get())?.entry(for: entry.name)
            let metrics = try measure(runner, sample: sample.get(), host: hostEntry, agreement: &agreement)
            let record: HostAgreementRecord
            switch golden {
            case .failure(let error):
                record = .unavailable("no usable golden_outputs.json: \(error.localizedDescription)")
            case .success(let outputs):
                if let hostEntry = hostEntry {
                    record = agreement.record(outputs, hostEntry)
                } else {
                    record = .unavailable("\(entry.name) has no entry in golden_outputs.json (bundled from another export?)")
                }
            }
            return .ok(entry.name, entry.runtime, units: units, metrics: metrics, hostAgreement: record,
                       accelerator: runner.accelerator())
        } catch {
            return .failed(entry.name, entry.runtime, units: units, error: error.localizedDescription)
        }
    }

    /// Cold load, warm load, first inference, warmup, timed runs, then one
    /// accuracy pass over the whole sample. Memory is sampled outside the timed calls.
    func measure(_ runner: ModelRunner, sample: TestSample, host: GoldenOutputs.Entry? = nil,
                 agreement: inout HostAgreement) throws -> Metrics {
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
            let predicted = try runner.predict(index)
            if predicted == sample.labels[index] {
                correct += 1
            }
            if let host = host {
                agreement.add(index, predicted: predicted, device: runner.lastLogits, host: host.logits[index].map { Float($0) })
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
