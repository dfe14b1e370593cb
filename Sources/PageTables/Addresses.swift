/// Typed addresses and frame numbers, so a physical address can never be passed where a
/// virtual or guest-physical one is meant.

/// A 4 KiB page shift, the base granule of every table cocomem models (x86-64 and arm64 4K).
public let pageShift: UInt64 = 12
/// Bytes in a base page.
public let pageBytes: UInt64 = 1 << pageShift

/// A host physical address (system physical address in AMD's terms).
public struct PhysAddr: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt64) { self.rawValue = value }
    /// The frame that holds this address.
    @inlinable public var pfn: PFN { PFN(rawValue >> pageShift) }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { hex(rawValue) }
}

/// A virtual address in some address space (the host kernel's, a user process's, a guest's).
public struct VirtAddr: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt64) { self.rawValue = value }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { hex(rawValue) }
}

/// A guest physical address: what a guest believes is physical, translated by stage 2.
public struct GuestPhysAddr: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt64) { self.rawValue = value }
    /// The guest frame number (gfn in KVM's terms).
    @inlinable public var gfn: PFN { PFN(rawValue >> pageShift) }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { hex(rawValue) }
}

/// A 4 KiB frame number (pfn or gfn).
public struct PFN: RawRepresentable, Hashable, Comparable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ value: UInt64) { self.rawValue = value }
    /// The physical address of the first byte of this frame.
    @inlinable public var physAddr: PhysAddr { PhysAddr(rawValue << pageShift) }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
    public var description: String { "pfn " + hex(rawValue) }
}

/// `0x` followed by lowercase hex digits, the way the kernel prints addresses with %#lx.
@inlinable public func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

/// `0x` and exactly `digits` zero-padded lowercase hex digits (%0Nlx).
public func hex(_ value: UInt64, digits: Int) -> String {
    let s = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, digits - s.count)) + s
}
