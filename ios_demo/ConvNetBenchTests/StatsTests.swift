import XCTest
@testable import ConvNetBench

/// Pure-Swift checks of the statistics; the expected values are numpy's
/// (np.percentile linear, np.std ddof=1, scipy.stats.trim_mean 0.1).
final class StatsTests: XCTestCase {
    func testOneToTen() throws {
        let stats = try XCTUnwrap(LatencyStats((1...10).map(Double.init).shuffled()))
        XCTAssertEqual(stats.mean, 5.5, accuracy: 1e-12)
        XCTAssertEqual(stats.std, 3.0276503540974917, accuracy: 1e-12)
        XCTAssertEqual(stats.min, 1)
        XCTAssertEqual(stats.p50, 5.5, accuracy: 1e-12)
        XCTAssertEqual(stats.p90, 9.1, accuracy: 1e-12)
        XCTAssertEqual(stats.p99, 9.91, accuracy: 1e-12)
        XCTAssertEqual(stats.trimmedMean, 5.5, accuracy: 1e-12)
    }

    func testOutlierIsTrimmed() throws {
        let samples = Array(repeating: 1.0, count: 9) + [100.0]
        let stats = try XCTUnwrap(LatencyStats(samples))
        XCTAssertEqual(stats.trimmedMean, 1.0, accuracy: 1e-12)
        XCTAssertGreaterThan(stats.mean, 10)
    }

    func testSingleSampleAndBadInput() throws {
        let one = try XCTUnwrap(LatencyStats([2.5]))
        XCTAssertEqual(one.std, 0)
        XCTAssertEqual(one.p99, 2.5)
        XCTAssertNil(LatencyStats([]))
        XCTAssertNil(LatencyStats([1, .nan]))
    }

    func testEnvironmentOverridesConfig() {
        let config = BenchmarkConfig.fromEnvironment(["BENCH_WARMUP": "3", "BENCH_ITERATIONS": "42",
                                                      "BENCH_COMPUTE_UNITS": "cpu,all"])
        XCTAssertEqual(config.warmup, 3)
        XCTAssertEqual(config.iterations, 42)
        XCTAssertEqual(config.computeUnits, [.cpu, .all])
    }
}
