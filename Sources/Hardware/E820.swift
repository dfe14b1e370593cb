import PageTables

/// An e820 range type, named as the kernel prints it. Linux arch/x86/kernel/e820.c
/// e820_print_type.
public enum E820Type: String, CaseIterable, Sendable, CustomStringConvertible {
    case usable = "usable"
    case reserved = "reserved"
    case acpiData = "ACPI data"
    case acpiNVS = "ACPI NVS"
    case unusable = "unusable"

    public var description: String { rawValue }
}

/// One line of the firmware memory map: `[start, end]` inclusive, as dmesg prints it.
public struct E820Entry: Hashable, Sendable, CustomStringConvertible {
    public let start: UInt64
    /// Last byte of the range (inclusive), as in the dmesg line.
    public let last: UInt64
    public let type: E820Type

    public init(start: UInt64, last: UInt64, type: E820Type) {
        self.start = start
        self.last = last
        self.type = type
    }

    /// The line exactly as e820__print_table prints it.
    public var description: String {
        "BIOS-e820: [mem \(hex(start, digits: 16))-\(hex(last, digits: 16))] \(type)"
    }
}

/// A memory-map line that could not be read, or a map that makes no sense.
public struct MemoryMapError: Error, Hashable, Sendable, CustomStringConvertible {
    /// 1-based line number in the input, when the problem is on one line.
    public let line: Int?
    public let message: String

    public init(line: Int?, _ message: String) {
        self.line = line
        self.message = message
    }

    public var description: String {
        if let line { return "e820 line \(line): \(message)" }
        return "e820: \(message)"
    }
}
