import ExecuTorch
import Foundation

/// Runs an ExecuTorch `.pte` through the Swift API of the `executorch` package product.
/// The XNNPACK backend and the kernels register themselves when linked
/// (with -all_load); see project.yml.
/// Input: NCHW, normalised x = (pixel / 255 - mean[c]) / std[c], float32
/// (or int8 with the scale and zero point from models.json). Output: logits.
final class ExecuTorchRunner: ModelRunner {
    private let path: String
    private let input: ModelSpec.TensorSpec
    private var module: Module?
    private var inputs: [Value] = []
    private let output: ModelSpec.TensorSpec?
    private(set) var lastLogits: [Float]?

    init(url: URL, spec: ModelSpec) throws {
        guard let input = spec.input else {
            throw BenchError.badResource("models.json gives no input for \(spec.file)")
        }
        guard input.dtype == "float32" || (input.dtype == "int8" && input.scale != nil) else {
            throw BenchError.badResource("\(spec.file): input dtype \(input.dtype) is not supported here")
        }
        self.path = url.path
        self.input = input
        self.output = spec.output
    }

    func load() throws {
        let loaded = Module(filePath: path)
        try loaded.load()
        try loaded.load("forward")
        module = loaded
    }

    func unload() {
        module = nil
    }

    func prepareInputs(_ sample: TestSample) throws {
        let shape = input.shape
        guard shape == [1, sample.channels, sample.height, sample.width] else {
            throw BenchError.input("models.json says \(shape), sample is [1, \(sample.channels), \(sample.height), \(sample.width)]")
        }
        let mean = input.mean ?? Array(repeating: 0, count: sample.channels)
        let std = input.std ?? Array(repeating: 1, count: sample.channels)
        guard mean.count == sample.channels, std.count == sample.channels else {
            throw BenchError.input("mean/std need \(sample.channels) values")
        }
        var built: [Value] = []
        built.reserveCapacity(sample.count)
        for index in 0..<sample.count {
            if input.dtype == "int8", let scale = input.scale {
                let values = sample.quantized(index, mean: mean, std: std, scale: scale, zeroPoint: input.zeroPoint ?? 0)
                built.append(Value(Tensor<Int8>(values, shape: shape)))
            } else {
                let values = sample.normalized(index, mean: mean, std: std)
                built.append(Value(Tensor<Float>(values, shape: shape)))
            }
        }
        inputs = built
    }

    /// The app asks ExecuTorch for nothing but its linked CPU backends; the Swift API does not list a program's delegates.
    func accelerator() -> AcceleratorRecord? {
        nil
    }

    func predict(_ index: Int) throws -> Int {
        guard let module = module else { throw BenchError.notLoaded }
        let arguments: [ValueConvertible] = [inputs[index]]
        let outputs: [Value] = try module.forward(arguments)
        guard let first = outputs.first else {
            throw BenchError.output("forward returned nothing")
        }
        if let logits: Tensor<Float> = first.tensor() {
            lastLogits = logits.withUnsafeBytes { Array($0) }
            return logits.withUnsafeBytes { argmax($0) }
        }
        if let quantized: Tensor<Int8> = first.tensor() {
            if let scale = output?.scale {
                let zeroPoint = output?.zeroPoint ?? 0
                lastLogits = quantized.withUnsafeBytes { values in values.map { Float(Int($0) - zeroPoint) * Float(scale) } }
            } else {
                lastLogits = nil
            }
            return quantized.withUnsafeBytes { argmax($0) }
        }
        throw BenchError.output("forward did not return a float32 or int8 tensor")
    }
}
