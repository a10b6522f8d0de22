import CoreML
import XCTest
@testable import ConvNetBench

/// XCTest's own metrics (XCTClockMetric, XCTMemoryMetric) around one pass over
/// the test sample, for the first bundled model of each runtime. Xcode shows them in
/// the test report; benchmark.py reads the "measured [...]" lines from the log.
final class MeasureTests: XCTestCase {
    private func firstEntry(_ runtime: Runtime) throws -> ModelEntry {
        let entries = ModelCatalog.discover(in: .main).entries
        guard let entry = entries.first(where: { $0.runtime == runtime && $0.problem == nil }) else {
            throw XCTSkip("no runnable \(runtime.rawValue) model is bundled")
        }
        return entry
    }

    private func makeRunner(_ entry: ModelEntry, units: CoreMLUnits = .all) throws -> ModelRunner {
        guard let url = entry.url else { throw XCTSkip("\(entry.name) has no file") }
        switch entry.runtime {
        case .coreml:
            return try CoreMLRunner(compiledModelURL: url, units: units, labels: LabelList.load(from: .main))
        case .executorch:
            guard let spec = entry.spec else { throw XCTSkip("\(entry.name) has no spec") }
            return try ExecuTorchRunner(url: url, spec: spec)
        }
    }

    private func measureInference(_ runtime: Runtime) throws {
        let runner = try makeRunner(firstEntry(runtime))
        let sample = try TestSample.load(from: .main)
        try runner.load()
        try runner.prepareInputs(sample)
        _ = try runner.predict(0)
        let options = XCTMeasureOptions()
        options.iterationCount = 5
        measure(metrics: [XCTClockMetric(), XCTMemoryMetric()], options: options) {
            for index in 0..<sample.count {
                XCTAssertNoThrow(try runner.predict(index))
            }
        }
        runner.unload()
    }

    func testMeasureCoreMLInference() throws {
        try measureInference(.coreml)
    }

    func testMeasureExecuTorchInference() throws {
        try measureInference(.executorch)
    }

    func testMeasureCoreMLLoad() throws {
        let entry = try firstEntry(.coreml)
        let options = XCTMeasureOptions()
        options.iterationCount = 5
        measure(metrics: [XCTClockMetric(), XCTMemoryMetric()], options: options) {
            do {
                let runner = try self.makeRunner(entry)
                try runner.load()
                runner.unload()
            } catch {
                XCTFail("load failed: \(error.localizedDescription)")
            }
        }
    }
}
