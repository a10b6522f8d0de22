import CoreML
import Foundation

/// golden_outputs.json, written by `bundle` beside models.json: per model, the logits
/// the host runtime produced on every bundled test image, through the preprocessing
/// this app's ExecuTorch runner uses (x = (pixel / 255 - mean[c]) / std[c]).
struct GoldenOutputs: Decodable {
    struct Entry: Decodable {
        let file: String
        let method: String
        let tolerance: Double
        let outputStep: Double?
        let logits: [[Double]]

        enum CodingKeys: String, CodingKey {
            case file, method, tolerance, logits
            case outputStep = "output_step"
        }
    }

    let schemaVersion: Int
    let count: Int
    let runId: String?
    let models: [Entry]

    enum CodingKeys: String, CodingKey {
        case count, models
        case schemaVersion = "schema_version"
        case runId = "run_id"
    }

    static func load(from bundle: Bundle, count: Int) throws -> GoldenOutputs {
        guard let url = bundle.url(forResource: "golden_outputs", withExtension: "json") else {
            throw BenchError.missingResource("golden_outputs.json is not in the app bundle (run make export-ios)")
        }
        let golden = try JSONDecoder().decode(GoldenOutputs.self, from: Data(contentsOf: url))
        guard golden.schemaVersion == 1 else {
            throw BenchError.badResource("golden_outputs.json schema_version \(golden.schemaVersion), this app reads 1")
        }
        guard golden.count == count else {
            throw BenchError.badResource("golden_outputs.json holds \(golden.count) images, the test sample \(count)")
        }
        return golden
    }

    func entry(for file: String) -> Entry? {
        models.first { $0.file == file }
    }
}

/// One model's answers on the device against the host's on the same images: top-1
/// agreement and the largest |Δlogit|. The Swift twin of Agreement.java, held to the
/// same vectors (tests/android/data/agreement_vectors.json) by a Python mirror.
struct HostAgreement {
    static let maxListed = 10

    private(set) var images = 0
    private(set) var agreeing = 0
    private(set) var maxAbsLogitDiff = 0.0
    private(set) var worstImage = -1
    private(set) var disagreeingImages: [Int] = []
    /// False once an image came without logits (a Core ML classifier gives a class only).
    private(set) var logitsCompared = true
    /// Set when the device's and the host's outputs cannot be compared; the comparison stops there.
    private(set) var problem: String?

    /// Adds image `image`: the class the device predicted, its logits when the runtime gave them, the host's logits.
    mutating func add(_ image: Int, predicted: Int, device: [Float]?, host: [Float]) {
        guard problem == nil else { return }
        images += 1
        if predicted == HostAgreement.argmax(host) {
            agreeing += 1
        } else if disagreeingImages.count < HostAgreement.maxListed {
            disagreeingImages.append(image)
        }
        guard let device = device else {
            logitsCompared = false
            return
        }
        guard device.count == host.count else {
            problem = "image \(image): the device gave \(device.count) logits, the host \(host.count)"
            return
        }
        for index in device.indices {
            var difference = abs(Double(device[index]) - Double(host[index]))
            if difference.isNaN {
                difference = .infinity
            }
            if difference > maxAbsLogitDiff || worstImage < 0 {
                maxAbsLogitDiff = difference
                worstImage = image
            }
        }
    }

    /// Share of images whose top-1 class is the host's; nil before any image.
    var top1Agreement: Double? {
        images == 0 ? nil : Double(agreeing) / Double(images)
    }

    /// Index of the largest value, the first one on a tie (as numpy's argmax and Agreement.java).
    static func argmax(_ values: [Float]) -> Int {
        var best = 0
        for index in values.indices where values[index] > values[best] {
            best = index
        }
        return best
    }

    func record(_ golden: GoldenOutputs, _ entry: GoldenOutputs.Entry) -> HostAgreementRecord {
        if let problem = problem {
            return .unavailable("\(entry.file): \(problem) (bundled from another export?)")
        }
        let compared = logitsCompared && maxAbsLogitDiff.isFinite
        return HostAgreementRecord(
            available: true, reason: nil, images: images, top1Agreement: top1Agreement,
            maxAbsLogitDiff: compared ? maxAbsLogitDiff : nil, logitsCompared: logitsCompared,
            worstImage: worstImage, disagreeingImages: disagreeingImages, tolerance: entry.tolerance,
            outputStep: entry.outputStep, hostMethod: entry.method, goldenRunId: golden.runId)
    }
}

/// The results file's host_agreement (device_results.schema.json).
struct HostAgreementRecord: Codable {
    let available: Bool
    let reason: String?
    let images: Int?
    let top1Agreement: Double?
    let maxAbsLogitDiff: Double?
    let logitsCompared: Bool?
    let worstImage: Int?
    let disagreeingImages: [Int]?
    let tolerance: Double?
    let outputStep: Double?
    let hostMethod: String?
    let goldenRunId: String?

    enum CodingKeys: String, CodingKey {
        case available, reason, images, tolerance
        case top1Agreement = "top1_agreement"
        case maxAbsLogitDiff = "max_abs_logit_diff"
        case logitsCompared = "logits_compared"
        case worstImage = "worst_image"
        case disagreeingImages = "disagreeing_images"
        case outputStep = "output_step"
        case hostMethod = "host_method"
        case goldenRunId = "golden_run_id"
    }

    static func unavailable(_ reason: String) -> HostAgreementRecord {
        HostAgreementRecord(available: false, reason: reason, images: nil, top1Agreement: nil, maxAbsLogitDiff: nil,
                            logitsCompared: nil, worstImage: nil, disagreeingImages: nil, tolerance: nil,
                            outputStep: nil, hostMethod: nil, goldenRunId: nil)
    }

    /// The schema needs max_abs_logit_diff present (null when not finite or not compared) once available.
    func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(available, forKey: .available)
        try container.encodeIfPresent(reason, forKey: .reason)
        guard available else { return }
        try container.encodeIfPresent(images, forKey: .images)
        try container.encode(top1Agreement, forKey: .top1Agreement)
        try container.encode(maxAbsLogitDiff, forKey: .maxAbsLogitDiff)
        try container.encodeIfPresent(logitsCompared, forKey: .logitsCompared)
        try container.encodeIfPresent(worstImage, forKey: .worstImage)
        try container.encodeIfPresent(disagreeingImages, forKey: .disagreeingImages)
        try container.encodeIfPresent(tolerance, forKey: .tolerance)
        try container.encode(outputStep, forKey: .outputStep)
        try container.encodeIfPresent(hostMethod, forKey: .hostMethod)
        try container.encode(goldenRunId, forKey: .goldenRunId)
    }
}

/// The results file's accelerator: what ran the model.
struct AcceleratorRecord: Codable {
    let requested: String
    let used: String?
    let backends: [String]?
    let source: String

    func encode(to encoder: Encoder) throws {
        var container = encoder.container(keyedBy: CodingKeys.self)
        try container.encode(requested, forKey: .requested)
        try container.encode(used, forKey: .used)
        try container.encodeIfPresent(backends, forKey: .backends)
        try container.encode(source, forKey: .source)
    }
}

/// Where Core ML placed a model's operations, as the OS reports it (MLComputePlan, iOS 17.4+):
/// "cpu ×3, neural_engine ×12" over the ops of the program's main function; nil where it tells nothing.
enum ComputePlanProbe {
    static func devicesUsed(modelURL: URL, configuration: MLModelConfiguration) -> String? {
        guard #available(iOS 17.4, macOS 14.4, *) else { return nil }
        let done = DispatchSemaphore(value: 0)
        var summary: String?
        MLComputePlan.load(contentsOf: modelURL, configuration: configuration) { result in
            defer { done.signal() }
            guard case .success(let plan) = result, case .program(let program) = plan.modelStructure,
                  let main = program.functions["main"] else { return }
            var counts: [String: Int] = [:]
            for operation in main.block.operations {
                if let usage = plan.deviceUsage(for: operation) {
                    counts[name(of: usage.preferred), default: 0] += 1
                }
            }
            summary = counts.isEmpty ? nil : counts.sorted { $0.key < $1.key }.map { "\($0.key) ×\($0.value)" }
                .joined(separator: ", ")
        }
        done.wait()
        return summary
    }

    @available(iOS 17.0, macOS 14.0, *)
    private static func name(of device: MLComputeDevice) -> String {
        switch device {
        case .cpu: return "cpu"
        case .gpu: return "gpu"
        case .neuralEngine: return "neural_engine"
        @unknown default: return "other"
        }
    }
}
