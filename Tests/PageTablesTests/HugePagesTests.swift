import Foundation
import Testing
@testable import PageTables
import Expectations

/// `HugePages.reserve`: the array keeps its contents and gets the capacity asked for; a large
/// buffer's mapping is advised MADV_HUGEPAGE (its VmFlags carry `hg`).
struct HugePagesTests {
    /// The VmFlags of the mapping holding `address`, from /proc/self/smaps (nil elsewhere).
    static func vmFlags(holding address: UInt) -> [Substring]? {
        // Read to the end: a /proc file says its size is 0.
        guard let data = FileHandle(forReadingAtPath: "/proc/self/smaps")?.readDataToEndOfFile() else { return nil }
        let smaps = String(decoding: data, as: UTF8.self)
        var inside = false
        for line in smaps.split(separator: "\n") {
            let fields = line.split(separator: " ")
            if let range = fields.first, range.contains("-"), fields.count >= 5 {
                let bounds = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inside = bounds.count == 2 && bounds[0] <= address && address < bounds[1]
            } else if inside, line.hasPrefix("VmFlags:") {
                return fields.dropFirst().map { $0 }
            }
        }
        return nil
    }

    static func base(_ a: inout [UInt64]) -> UInt { a.withUnsafeMutableBufferPointer { UInt(bitPattern: $0.baseAddress) } }

    @Test func aLargeBufferIsAdvisedAndKeepsItsContents() {
        var a: [UInt64] = Array(0..<1000)
        let capacity = 2 * HugePages.threshold / 8
        HugePages.reserve(&a, capacity: capacity)
        expectEqual(a, Array(0..<1000))
        expectTrue(a.capacity >= capacity)
        #if os(Linux)
        // A kernel without transparent huge pages refuses the advice; the array is the same.
        if FileManager.default.fileExists(atPath: "/sys/kernel/mm/transparent_hugepage/enabled") {
            // The middle of the buffer: its unaligned ends keep 4K pages.
            let middle = Self.base(&a) + UInt(capacity * 8 / 2)
            expectEqual(Self.vmFlags(holding: middle)?.contains("hg"), true)
        }
        #endif
    }

    @Test func aSmallBufferIsOnlyReserved() {
        var a: [UInt64] = [1, 2, 3]
        HugePages.reserve(&a, capacity: 4096)
        expectEqual(a, [1, 2, 3])
        expectTrue(a.capacity >= 4096)
        let before = a.capacity
        HugePages.reserve(&a, capacity: 16)  // never shrinks
        expectEqual(a.capacity, before)
        // Whether its mapping is advised is not this array's to say: a small buffer shares
        // malloc's arena with others, which a large one in the same arena may have advised.
    }
}
