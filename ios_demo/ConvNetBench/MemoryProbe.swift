import Darwin
import Foundation

/// The process's `phys_footprint` from task_info(TASK_VM_INFO): the number Xcode's
/// memory gauge and the jetsam limit use. Reported in MiB.
enum MemoryProbe {
    static func footprintMB() throws -> Double {
        var info = task_vm_info_data_t()
        var count = mach_msg_type_number_t(MemoryLayout<task_vm_info_data_t>.size / MemoryLayout<integer_t>.size)
        let result = withUnsafeMutablePointer(to: &info) { infoPointer in
            infoPointer.withMemoryRebound(to: integer_t.self, capacity: Int(count)) { raw in
                task_info(mach_task_self_, task_flavor_t(TASK_VM_INFO), raw, &count)
            }
        }
        guard result == KERN_SUCCESS else {
            throw BenchError.memoryProbe(result)
        }
        return Double(info.phys_footprint) / 1_048_576
    }
}
