import CoreML
import CoreVideo
import Foundation

/// The MLComputeUnits settings, named as in the results schema.
enum CoreMLUnits: String, CaseIterable {
    case cpu
    case cpuGPU = "cpu_gpu"
    case cpuNE = "cpu_ne"
    case all

    var mlComputeUnits: MLComputeUnits {
        switch self {
        case .cpu: return .cpuOnly
        case .cpuGPU: return .cpuAndGPU
        case .cpuNE: return .cpuAndNeuralEngine
        case .all: return .all
        }
    }
}

/// Runs a compiled Core ML classifier (`.mlmodelc`; Xcode compiles the `.mlpackage`
/// at build time). The model takes raw pixels in an image input named `image`
/// (normalisation is folded in) and predicts a class label.
final class CoreMLRunner: ModelRunner {
    private let url: URL
    private let units: CoreMLUnits
    private let labelIndex: [String: Int]
    private var model: MLModel?
    private var inputs: [MLFeatureProvider] = []
    private var inputName = "image"
    private var outputName = "classLabel"
    /// A classifier answers with a class (and class probabilities), not logits: only top-1 is compared.
    let lastLogits: [Float]? = nil

    init(compiledModelURL: URL, units: CoreMLUnits, labels: [String]) {
        self.url = compiledModelURL
        self.units = units
        var index: [String: Int] = [:]
        for (position, label) in labels.enumerated() where index[label] == nil {
            index[label] = position
        }
        self.labelIndex = index
    }

    func load() throws {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = units.mlComputeUnits
        let loaded = try MLModel(contentsOf: url, configuration: configuration)
        let description = loaded.modelDescription
        if description.inputDescriptionsByName["image"] == nil,
           let firstImage = description.inputDescriptionsByName.first(where: { $0.value.imageConstraint != nil }) {
            inputName = firstImage.key
        }
        outputName = description.predictedFeatureName ?? "classLabel"
        model = loaded
    }

    func unload() {
        model = nil
    }

    /// The compute units asked for, and where the OS says the ops go (MLComputePlan, iOS 17.4+).
    func accelerator() -> AcceleratorRecord? {
        let configuration = MLModelConfiguration()
        configuration.computeUnits = units.mlComputeUnits
        let used = ComputePlanProbe.devicesUsed(modelURL: url, configuration: configuration)
        return AcceleratorRecord(
            requested: units.rawValue, used: used, backends: nil,
            source: used == nil ? "MLModelConfiguration.computeUnits; the OS reported no placement (MLComputePlan needs iOS 17.4)"
                                : "MLModelConfiguration.computeUnits; used: MLComputePlan preferred device per op of main")
    }

    func prepareInputs(_ sample: TestSample) throws {
        guard let model = model else { throw BenchError.notLoaded }
        guard let constraint = model.modelDescription.inputDescriptionsByName[inputName]?.imageConstraint else {
            throw BenchError.input("the model has no image input named \(inputName)")
        }
        guard constraint.pixelsWide == sample.width, constraint.pixelsHigh == sample.height else {
            throw BenchError.input("model wants \(constraint.pixelsWide)x\(constraint.pixelsHigh), sample is \(sample.width)x\(sample.height)")
        }
        var built: [MLFeatureProvider] = []
        built.reserveCapacity(sample.count)
        for index in 0..<sample.count {
            let buffer = try PixelBufferFactory.make(sample, index: index, format: constraint.pixelFormatType)
            let features = [inputName: MLFeatureValue(pixelBuffer: buffer)]
            built.append(try MLDictionaryFeatureProvider(dictionary: features))
        }
        inputs = built
    }

    func predict(_ index: Int) throws -> Int {
        guard let model = model else { throw BenchError.notLoaded }
        return try autoreleasepool {
            let output = try model.prediction(from: inputs[index])
            guard let value = output.featureValue(for: outputName) else {
                throw BenchError.output("no feature named \(outputName)")
            }
            return try classIndex(of: value)
        }
    }

    private func classIndex(of value: MLFeatureValue) throws -> Int {
        switch value.type {
        case .int64:
            return Int(value.int64Value)
        case .string:
            if let index = labelIndex[value.stringValue] {
                return index
            }
            if let index = Int(value.stringValue) {
                return index
            }
            throw BenchError.output("label \"\(value.stringValue)\" is not in labels.txt")
        default:
            throw BenchError.output("\(outputName) is neither a string nor an int64 class label")
        }
    }
}

/// Builds the CVPixelBuffer for one test image: OneComponent8 for grayscale,
/// 32BGRA for RGB. IOSurface-backed so the GPU and Neural Engine can read it directly.
enum PixelBufferFactory {
    static func make(_ sample: TestSample, index: Int, format: OSType) throws -> CVPixelBuffer {
        let gray = format == kCVPixelFormatType_OneComponent8
        let bgra = format == kCVPixelFormatType_32BGRA
        guard (gray && sample.channels == 1) || (bgra && sample.channels == 3) else {
            throw BenchError.input("pixel format \(format) does not fit a \(sample.channels)-channel sample")
        }
        let attributes = [kCVPixelBufferIOSurfacePropertiesKey as String: [String: Any]()] as CFDictionary
        var created: CVPixelBuffer?
        let status = CVPixelBufferCreate(kCFAllocatorDefault, sample.width, sample.height, format, attributes, &created)
        guard status == kCVReturnSuccess, let buffer = created else {
            throw BenchError.input("CVPixelBufferCreate failed (\(status))")
        }
        CVPixelBufferLockBaseAddress(buffer, [])
        defer { CVPixelBufferUnlockBaseAddress(buffer, []) }
        guard let base = CVPixelBufferGetBaseAddress(buffer) else {
            throw BenchError.input("pixel buffer has no base address")
        }
        let rowBytes = CVPixelBufferGetBytesPerRow(buffer)
        let destination = base.assumingMemoryBound(to: UInt8.self)
        let plane = sample.width * sample.height
        let start = index * sample.imageSize
        for y in 0..<sample.height {
            let row = destination + y * rowBytes
            for x in 0..<sample.width {
                let source = start + y * sample.width + x
                if gray {
                    row[x] = sample.pixels[source]
                } else {
                    row[4 * x] = sample.pixels[source + 2 * plane]
                    row[4 * x + 1] = sample.pixels[source + plane]
                    row[4 * x + 2] = sample.pixels[source]
                    row[4 * x + 3] = 255
                }
            }
        }
        return buffer
    }
}
