import Foundation

// The results file, shaped by pipeline/schemas/device_results.schema.json (version 1),
// the same schema the Android app writes.

struct AppRecord: Codable {
    let name: String
    let version: String
}

struct DeviceRecord: Codable {
    let model: String
    let manufacturer: String
    let soc: String
    let abi: String
    let osVersion: String
    let cores: Int
    let totalRamMB: Double
    let isSimulator: Bool

    enum CodingKeys: String, CodingKey {
        case model, manufacturer, soc, abi, cores
        case osVersion = "os_version"
        case totalRamMB = "total_ram_mb"
        case isSimulator = "is_simulator"
    }
}

struct SettingsRecord: Codable {
    let warmup: Int
    let iterations: Int
    let threads: Int
}

struct Metrics: Codable {
    var coldLoadMs: Double
    var warmLoadMs: Double
    var firstInferenceMs: Double
    var meanMs: Double
    var stdMs: Double
    var minMs: Double
    var p50Ms: Double
    var p90Ms: Double
    var p99Ms: Double
    var trimmedMeanMs: Double
    var memoryBeforeLoadMB: Double
    var memoryAfterLoadMB: Double
    var memoryPeakInferenceMB: Double
    var accuracy: Double
    var sampleSize: Int

    enum CodingKeys: String, CodingKey {
        case coldLoadMs = "model_load_time(ms)"
        case warmLoadMs = "warm_load_time(ms)"
        case firstInferenceMs = "first_inference_latency(ms)"
        case meanMs = "avg_inference_latency(ms)"
        case stdMs = "std_inference_latency(ms)"
        case minMs = "min_inference_latency(ms)"
        case p50Ms = "p50_inference_latency(ms)"
        case p90Ms = "p90_inference_latency(ms)"
        case p99Ms = "p99_inference_latency(ms)"
        case trimmedMeanMs = "trimmean_inference_latency(ms)"
        case memoryBeforeLoadMB = "memory_before_load(mb)"
        case memoryAfterLoadMB = "memory_after_load(mb)"
        case memoryPeakInferenceMB = "memory_peak_inference(mb)"
        case accuracy
        case sampleSize = "sample_size"
    }
}

struct ResultRow: Codable, Identifiable {
    let model: String
    let runtime: Runtime
    let computeUnits: String?
    let status: String
    let error: String?
    let metrics: Metrics?
    var hostAgreement: HostAgreementRecord?
    var accelerator: AcceleratorRecord?

    var id: String { "\(model)|\(runtime.rawValue)|\(computeUnits ?? "-")" }

    enum CodingKeys: String, CodingKey {
        case model, runtime, status, error, metrics, accelerator
        case computeUnits = "compute_units"
        case hostAgreement = "host_agreement"
    }

    static func ok(_ model: String, _ runtime: Runtime, units: CoreMLUnits?, metrics: Metrics,
                   hostAgreement: HostAgreementRecord? = nil, accelerator: AcceleratorRecord? = nil) -> ResultRow {
        ResultRow(model: model, runtime: runtime, computeUnits: units?.rawValue, status: "ok", error: nil, metrics: metrics,
                  hostAgreement: hostAgreement, accelerator: accelerator)
    }

    static func failed(_ model: String, _ runtime: Runtime, units: CoreMLUnits?, error: String) -> ResultRow {
        let message = error.isEmpty ? "unknown error" : error
        return ResultRow(model: model, runtime: runtime, computeUnits: units?.rawValue, status: "error", error: message, metrics: nil)
    }
}

struct BenchmarkReport: Codable {
    var schemaVersion = 1
    var platform = "ios"
    let app: AppRecord
    let device: DeviceRecord
    let settings: SettingsRecord
    let startedAt: String
    var memoryKind = "phys_footprint"
    let results: [ResultRow]
    let warnings: [String]

    enum CodingKeys: String, CodingKey {
        case platform, app, device, settings, results, warnings
        case schemaVersion = "schema_version"
        case startedAt = "started_at"
        case memoryKind = "memory_kind"
    }
}

/// Saves the report in the app's Documents folder and, for `xcodebuild test`,
/// prints it to the log between markers that ios_demo/benchmark.py looks for.
enum ResultsWriter {
    static let fileName = "benchmark_results.json"
    // Keep these three in step with MARK_* in ios_demo/benchmark.py.
    static let beginMarker = "CONVNETBENCH_JSON_BEGIN"
    static let chunkMarker = "CONVNETBENCH_JSON_CHUNK"
    static let endMarker = "CONVNETBENCH_JSON_END"
    static let chunkLength = 512

    static func encode(_ report: BenchmarkReport) throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(report)
    }

    /// Writes Documents/benchmark_results.json atomically (temporary file, then rename).
    @discardableResult
    static func write(_ report: BenchmarkReport) throws -> URL {
        let folder = try FileManager.default.url(for: .documentDirectory, in: .userDomainMask,
                                                 appropriateFor: nil, create: true)
        let url = folder.appendingPathComponent(fileName)
        try encode(report).write(to: url, options: .atomic)
        return url
    }

    /// Base64 in numbered chunks, so a long line cut or a lost line is detected, not misread.
    static func emitToLog(_ data: Data) {
        let text = data.base64EncodedString()
        var chunks: [Substring] = []
        var start = text.startIndex
        while start < text.endIndex {
            let end = text.index(start, offsetBy: chunkLength, limitedBy: text.endIndex) ?? text.endIndex
            chunks.append(text[start..<end])
            start = end
        }
        print("\(beginMarker) chunks=\(chunks.count) bytes=\(data.count)")
        for (index, chunk) in chunks.enumerated() {
            print("\(chunkMarker) \(index + 1)/\(chunks.count) \(chunk)")
        }
        print(endMarker)
        fflush(stdout)
    }
}
