import Foundation

/// Latency summary in milliseconds.
/// Percentiles interpolate linearly between order statistics (numpy's default);
/// std is the sample standard deviation (n - 1); the trimmed mean drops
/// `trimFraction` of the samples at each end (as scipy.stats.trim_mean does).
struct LatencyStats: Equatable {
    let mean: Double
    let std: Double
    let min: Double
    let p50: Double
    let p90: Double
    let p99: Double
    let trimmedMean: Double

    static let trimFraction = 0.1

    init?(_ samples: [Double]) {
        guard !samples.isEmpty, samples.allSatisfy({ $0.isFinite }) else { return nil }
        let sorted = samples.sorted()
        let n = Double(sorted.count)
        let mean = sorted.reduce(0, +) / n
        let squares = sorted.reduce(0) { $0 + ($1 - mean) * ($1 - mean) }
        self.mean = mean
        self.std = sorted.count > 1 ? (squares / (n - 1)).squareRoot() : 0
        self.min = sorted[0]
        self.p50 = LatencyStats.percentile(sorted, 50)
        self.p90 = LatencyStats.percentile(sorted, 90)
        self.p99 = LatencyStats.percentile(sorted, 99)
        let cut = Int(LatencyStats.trimFraction * n)
        let kept = sorted[cut..<(sorted.count - cut)]
        self.trimmedMean = kept.reduce(0, +) / Double(kept.count)
    }

    /// `q`-th percentile (0...100) of ascending `sorted`.
    static func percentile(_ sorted: [Double], _ q: Double) -> Double {
        let position = q / 100 * Double(sorted.count - 1)
        let lower = Int(position.rounded(.down))
        let upper = Swift.min(lower + 1, sorted.count - 1)
        let weight = position - Double(lower)
        return sorted[lower] + (sorted[upper] - sorted[lower]) * weight
    }
}

/// Monotonic wall-clock timing.
enum Stopwatch {
    static func nowMs() -> Double {
        Double(DispatchTime.now().uptimeNanoseconds) / 1_000_000
    }

    /// Milliseconds taken by `body`.
    static func ms(_ body: () throws -> Void) rethrows -> Double {
        let start = nowMs()
        try body()
        return nowMs() - start
    }
}

/// How many runs to do. Environment variables override the defaults;
/// `xcodebuild test` forwards TEST_RUNNER_BENCH_* to the test process as BENCH_*.
struct BenchmarkConfig {
    var warmup = 10
    var iterations = 100
    var computeUnits = CoreMLUnits.allCases

    static func fromEnvironment(_ env: [String: String] = ProcessInfo.processInfo.environment) -> BenchmarkConfig {
        var config = BenchmarkConfig()
        if let text = env["BENCH_WARMUP"], let value = Int(text), value >= 0 {
            config.warmup = value
        }
        if let text = env["BENCH_ITERATIONS"], let value = Int(text), value >= 1 {
            config.iterations = value
        }
        if let text = env["BENCH_COMPUTE_UNITS"] {
            let wanted = text.split(separator: ",").compactMap { CoreMLUnits(rawValue: String($0)) }
            if !wanted.isEmpty {
                config.computeUnits = wanted
            }
        }
        return config
    }
}
