import Foundation

/// What the suite needs from a runtime. Inputs are built once, outside the timed
/// region, so latency covers the runtime's own work only.
protocol ModelRunner: AnyObject {
    /// Loads the model from disk; throws on a missing or corrupt file.
    func load() throws
    /// Drops the loaded model so the next `load` starts again.
    func unload()
    /// Converts every test image to the runtime's input type.
    func prepareInputs(_ sample: TestSample) throws
    /// Runs one inference on test image `index` and returns the predicted class.
    func predict(_ index: Int) throws -> Int
    /// The float logits of the last `predict` (int8 dequantized); nil when the runtime gives a class only.
    var lastLogits: [Float]? { get }
    /// What ran the model after `load`, as far as the runtime or the OS tells; nil when nothing is known.
    func accelerator() -> AcceleratorRecord?
}

/// Index of the largest element (the first one on ties).
func argmax<T: Comparable>(_ values: UnsafeBufferPointer<T>) -> Int {
    var best = 0
    for index in values.indices where values[index] > values[best] {
        best = index
    }
    return best
}
