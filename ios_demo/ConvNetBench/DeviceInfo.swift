import Darwin
import Foundation

/// Describes the phone (or the simulator and its Mac) for the results JSON.
enum DeviceInfo {
    static func current() -> DeviceRecord {
        let process = ProcessInfo.processInfo
        let version = process.operatingSystemVersion
        let os = "iOS \(version.majorVersion).\(version.minorVersion).\(version.patchVersion)"
        #if targetEnvironment(simulator)
        let model = process.environment["SIMULATOR_MODEL_IDENTIFIER"] ?? "iOS Simulator"
        let soc = (sysctlString("machdep.cpu.brand_string") ?? "unknown host CPU") + " (simulator host)"
        let simulator = true
        #else
        let model = sysctlString("hw.machine") ?? "unknown iPhone"
        let soc = chipName(forModel: model) ?? "Apple SoC (board \(sysctlString("hw.model") ?? "unknown"))"
        let simulator = false
        #endif
        return DeviceRecord(
            model: model,
            manufacturer: "Apple",
            soc: soc,
            abi: abi,
            osVersion: os,
            cores: process.processorCount,
            totalRamMB: Double(process.physicalMemory) / 1_048_576,
            isSimulator: simulator
        )
    }

    static var abi: String {
        #if arch(arm64)
        return "arm64"
        #elseif arch(x86_64)
        return "x86_64"
        #else
        return "unknown"
        #endif
    }

    /// Best effort: Apple exposes no chip name, so map the model identifier's family.
    static func chipName(forModel model: String) -> String? {
        let families: [(prefix: String, chip: String)] = [
            ("iPhone17,1", "Apple A18 Pro"), ("iPhone17,2", "Apple A18 Pro"),
            ("iPhone17,", "Apple A18"),
            ("iPhone16,", "Apple A17 Pro"),
            ("iPhone15,", "Apple A16 Bionic"),
            ("iPhone14,", "Apple A15 Bionic"),
            ("iPhone13,", "Apple A14 Bionic"),
            ("iPhone12,", "Apple A13 Bionic"),
        ]
        return families.first { model.hasPrefix($0.prefix) }?.chip
    }

    static func sysctlString(_ name: String) -> String? {
        var size = 0
        guard sysctlbyname(name, nil, &size, nil, 0) == 0, size > 0 else { return nil }
        var buffer = [CChar](repeating: 0, count: size)
        guard sysctlbyname(name, &buffer, &size, nil, 0) == 0 else { return nil }
        return String(cString: buffer)
    }
}
