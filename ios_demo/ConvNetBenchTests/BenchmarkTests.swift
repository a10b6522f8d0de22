import XCTest
@testable import ConvNetBench

/// The full benchmark as a test, so `xcodebuild test` (ios_demo/benchmark.py) can run it
/// on a phone or a simulator. The report is saved in the app's Documents folder,
/// attached to the test result, and printed to the log between markers.
final class BenchmarkTests: XCTestCase {
    func testBenchmarkEveryBundledModel() throws {
        let suite = BenchmarkSuite(config: .fromEnvironment(), bundle: .main)
        let report = suite.run()
        let data = try ResultsWriter.encode(report)
        let url = try ResultsWriter.write(report)
        ResultsWriter.emitToLog(data)

        let attachment = XCTAttachment(data: data, uniformTypeIdentifier: "public.json")
        attachment.name = ResultsWriter.fileName
        attachment.lifetime = .keepAlways
        add(attachment)

        for row in report.results where row.status == "error" {
            print("error row: \(row.model) \(row.computeUnits ?? "") \(row.error ?? "")")
        }
        XCTAssertFalse(report.results.isEmpty, "no models bundled: run make export-ios, then xcodegen generate")
        XCTAssertTrue(report.results.contains { $0.status == "ok" }, "every model failed; see \(url.path)")
    }

    func testMissingModelBecomesErrorRow() {
        let entry = ModelEntry(name: "absent.pte", runtime: .executorch, spec: nil, url: nil,
                               problem: "absent.pte is not in the app bundle")
        XCTAssertNotNil(entry.problem)
        let row = ResultRow.failed(entry.name, entry.runtime, units: nil, error: entry.problem ?? "")
        XCTAssertEqual(row.status, "error")
        XCTAssertNil(row.metrics)
    }

    func testCorruptPteFailsToLoadWithoutCrashing() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("corrupt.pte")
        try Data("not a program".utf8).write(to: url)
        let spec = ModelSpec(file: "corrupt.pte", backend: "executorch", quant: "fp32",
                             input: ModelSpec.TensorSpec(shape: [1, 1, 28, 28], layout: "NCHW", dtype: "float32",
                                                         mean: [0.5], std: [0.5], scale: nil, zeroPoint: nil),
                             output: nil)
        let runner = try ExecuTorchRunner(url: url, spec: spec)
        XCTAssertThrowsError(try runner.load())
    }
}
