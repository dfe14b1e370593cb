import PageTables

/// An e820 range type, named as the kernel prints it: every name e820_print_type has, and
/// `type N` for the rest. Only `usable` is RAM. Linux arch/x86/kernel/e820.c e820_print_type.
public enum E820Type: Hashable, Sendable, CustomStringConvertible {
    case usable
    case reserved
    /// E820_TYPE_SOFT_RESERVED (EFI specific-purpose memory).
    case softReserved
    case acpiData
    case acpiNVS
    case unusable
    /// E820_TYPE_PMEM (7) and E820_TYPE_PRAM (12): `persistent (type N)`.
    case persistent(UInt32)
    /// Any other type number: `type N`.
    case other(UInt32)

    /// The names the kernel prints, for error messages.
    public static let names = ["usable", "reserved", "soft reserved", "ACPI data", "ACPI NVS", "unusable",
                               "persistent (type 7)", "persistent (type 12)", "type N"]

    public var description: String {
        switch self {
        case .usable: "usable"
        case .reserved: "reserved"
        case .softReserved: "soft reserved"
        case .acpiData: "ACPI data"
        case .acpiNVS: "ACPI NVS"
        case .unusable: "unusable"
        case .persistent(let n): "persistent (type \(n))"
        case .other(let n): "type \(n)"
        }
    }

    /// The type a printed name stands for (`usable`, `persistent (type 12)`, `type 13`).
    public init?(printed text: String) {
        switch text {
        case "usable": self = .usable
        case "reserved": self = .reserved
        case "soft reserved": self = .softReserved
        case "ACPI data": self = .acpiData
        case "ACPI NVS": self = .acpiNVS
        case "unusable": self = .unusable
        case "persistent (type 7)": self = .persistent(7)
        case "persistent (type 12)": self = .persistent(12)
        default:
            guard text.hasPrefix("type "), let n = UInt32(text.dropFirst(5)) else { return nil }
            self = .other(n)
        }
    }
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
