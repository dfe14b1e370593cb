import PageTables

/// One RMP entry (16 bytes for each 4K page of RAM), in the raw layout Linux reads.
///
/// Low word: bit 0 assigned, bit 1 page size (1 = 2M), bit 2 immutable, bits 12-50 GPA,
/// bits 51-60 ASID, bit 61 VMSA, bit 62 validated. High word: one permission byte per
/// VMPL 0-3. Linux arch/x86/virt/svm/sev.c struct rmpentry_raw; AMD APM Vol 2 §15.36.3.
/// (The per-2M count of assigned 4K entries that AMD-ASPFW keeps in bits 3-11 of the
/// 2M-aligned entry is kept beside the entries, in `RMP`.)
public struct RMPEntry: Hashable, Sendable, CustomStringConvertible {
    public var lo: UInt64
    public var hi: UInt64

    @inlinable public init(lo: UInt64 = 0, hi: UInt64 = 0) {
        self.lo = lo
        self.hi = hi
    }

    /// The entry of a page the hypervisor owns (all zero).
    public static let hypervisor = RMPEntry()

    @inlinable func bit(_ n: UInt64) -> Bool { lo >> n & 1 != 0 }
    @inlinable mutating func setBit(_ n: UInt64, _ v: Bool) { lo = v ? lo | 1 << n : lo & ~(1 << n) }

    @inlinable public var assigned: Bool { get { bit(0) } set { setBit(0, newValue) } }
    /// The entry covers a 2M page (only meaningful in a 2M-aligned entry).
    public var isLarge: Bool { get { bit(1) } set { setBit(1, newValue) } }
    public var immutable: Bool { get { bit(2) } set { setBit(2, newValue) } }
    public var vmsa: Bool { get { bit(61) } set { setBit(61, newValue) } }
    public var validated: Bool { get { bit(62) } set { setBit(62, newValue) } }

    /// The low word's GPA field (bits 12-50) and ASID field (bits 51-60).
    @inlinable public static var gpaMask: UInt64 { 0x0007_ffff_ffff_f000 }
    @inlinable public static var asidMask: UInt64 { 0x3ff << 51 }
    /// The high word RMPUPDATE gives a guest's page: VMPL0 every permission, VMPL1-3 none.
    @inlinable public static var defaultHi: UInt64 { 0x1f }  // VMPLPermissions.all

    /// The guest physical address the page is assigned at (4K-aligned, 51 bits).
    @inlinable public var gpa: UInt64 {
        get { lo & Self.gpaMask }
        set { lo = (lo & ~Self.gpaMask) | (newValue & Self.gpaMask) }
    }

    /// The owning guest's ASID (10 bits; 0 for the hypervisor and the AMD-SP).
    @inlinable public var asid: UInt32 {
        get { UInt32(lo >> 51 & 0x3ff) }
        set { lo = (lo & ~(0x3ff << 51)) | (UInt64(newValue & 0x3ff) << 51) }
    }

    /// The permission mask VMPL `vmpl` (0-3) has on the page.
    public func permissions(vmpl: Int) -> VMPLPermissions { VMPLPermissions(rawValue: UInt8(truncatingIfNeeded: hi >> (8 * UInt64(vmpl)))) }
    public mutating func setPermissions(_ p: VMPLPermissions, vmpl: Int) {
        let shift = 8 * UInt64(vmpl)
        hi = (hi & ~(0xff << shift)) | (UInt64(p.rawValue) << shift)
    }

    /// The firmware's name for the page's state. AMD-ASPFW sev_rmp.h; SEV-SNP firmware ABI §5.2.
    public var state: RMPPageState {
        if !assigned { return .hypervisor }
        if asid == 0 {
            if vmsa { return .context }
            return immutable ? .firmware : .reclaim
        }
        if immutable { return .preGuest }
        return validated ? .guestValid : .guestInvalid
    }

    public var description: String {
        var s = "\(state)"
        if assigned {
            s += " asid=\(asid) gpa=\(hex(gpa)) \(isLarge ? "2M" : "4K")"
            if validated { s += " validated" }
            if immutable { s += " immutable" }
            if vmsa { s += " vmsa" }
            s += " perms=" + (0..<4).map { permissions(vmpl: $0).description }.joined(separator: "/")
        }
        return s
    }
}

/// The page states the SEV-SNP firmware names. SEV-SNP Firmware ABI §5.2; AMD-ASPFW sev_rmp.h.
public enum RMPPageState: String, CaseIterable, Sendable, CustomStringConvertible {
    case hypervisor = "Hypervisor"
    case firmware = "Firmware"
    case reclaim = "Reclaim"
    case context = "Context"
    case preGuest = "Pre-Guest"
    case guestInvalid = "Guest-Invalid"
    case guestValid = "Guest-Valid"

    public var description: String { rawValue }
}

/// The access a VMPL has to a page: read, write, execute (user, supervisor), supervisor
/// shadow stack. AMD APM Vol 2 §15.36.7 (RMPADJUST), table "VMPL permission mask".
public struct VMPLPermissions: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let read = VMPLPermissions(rawValue: 1 << 0)
    public static let write = VMPLPermissions(rawValue: 1 << 1)
    public static let executeUser = VMPLPermissions(rawValue: 1 << 2)
    public static let executeSupervisor = VMPLPermissions(rawValue: 1 << 3)
    public static let supervisorShadowStack = VMPLPermissions(rawValue: 1 << 4)
    /// What RMPUPDATE grants VMPL0 on assignment: every permission, shadow stack included, as
    /// verismo's rmp_perm_init models it (the APM text was not available to check).
    public static let all: VMPLPermissions = [.read, .write, .executeUser, .executeSupervisor, .supervisorShadowStack]

    public var description: String { "0x" + String(rawValue, radix: 16) }
}
