import PageTables

/// The Ultravisor calls the model makes, with their command codes.
/// Linux arch/s390/include/asm/uv.h (UVC_CMD_*).
public enum UVCCommand: UInt16, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    case createSecConf = 0x0100
    case destroySecConf = 0x0101
    case createSecCPU = 0x0120
    case destroySecCPU = 0x0121
    /// Import: make a page secure storage of a configuration.
    case convToSecStor = 0x0200
    /// Export: encrypt a secure page and give it to the host.
    case convFromSecStor = 0x0201
    /// Destroy: clear a secure page and give it to the host, without exporting.
    case destrSecStor = 0x0202
    case pinPageShared = 0x0341
    /// The guest's own calls (uv_set_shared / uv_remove_shared).
    case setSharedAccess = 0x1000
    case removeSharedAccess = 0x1001

    public var name: String {
        switch self {
        case .createSecConf: "UVC_CMD_CREATE_SEC_CONF"
        case .destroySecConf: "UVC_CMD_DESTROY_SEC_CONF"
        case .createSecCPU: "UVC_CMD_CREATE_SEC_CPU"
        case .destroySecCPU: "UVC_CMD_DESTROY_SEC_CPU"
        case .convToSecStor: "UVC_CMD_CONV_TO_SEC_STOR"
        case .convFromSecStor: "UVC_CMD_CONV_FROM_SEC_STOR"
        case .destrSecStor: "UVC_CMD_DESTR_SEC_STOR"
        case .pinPageShared: "UVC_CMD_PIN_PAGE_SHARED"
        case .setSharedAccess: "UVC_CMD_SET_SHARED_ACCESS"
        case .removeSharedAccess: "UVC_CMD_REMOVE_SHARED_ACCESS"
        }
    }
    /// The step-facing spelling: the name without UVC_CMD_, lowercase.
    public var shortName: String { String(name.dropFirst(8)).lowercased() }
    public var description: String { name }
}

/// What a UVC answered: the condition code and the control block's return code.
/// Linux arch/s390/include/asm/uv.h (UVC_CC_*, UVC_RC_*); uv_call loops while cc > 1.
public struct UVCResult: Outcome, Hashable {
    public let command: UVCCommand
    /// 0 OK, 1 ERROR, 2 BUSY, 3 PARTIAL (UVC_CC_*).
    public let cc: UInt8
    /// The return code in the control block header; nil where the UV's code for the
    /// condition is not public (the integrity check of an import).
    public let rc: UInt16?
    public let rrc: UInt16
    /// Why, in the model's words, for the non-zero conditions.
    public let reason: StaticString

    public init(_ command: UVCCommand, cc: UInt8, rc: UInt16?, rrc: UInt16 = 0, _ reason: StaticString = "") {
        self.command = command
        self.cc = cc
        self.rc = rc
        self.rrc = rrc
        self.reason = reason
    }

    public static func == (a: UVCResult, b: UVCResult) -> Bool { a.command == b.command && a.cc == b.cc && a.rc == b.rc && a.rrc == b.rrc }
    public func hash(into h: inout Hasher) { h.combine(command); h.combine(cc); h.combine(rc); h.combine(rrc) }

    static func executed(_ c: UVCCommand) -> UVCResult { UVCResult(c, cc: 0, rc: UVCResult.rcExecuted) }

    /// UVC_RC_EXECUTED, UVC_RC_INV_STATE. uv.h.
    public static let rcExecuted: UInt16 = 0x0001
    public static let rcInvalidState: UInt16 = 0x0003
    /// The import's "not mapped" code, which __make_folio_secure turns into -ENXIO. uv.c.
    public static let rcNotMapped: UInt16 = 0x010a

    public var ok: Bool { cc == 0 }
    public var kind: OutcomeKind { cc == 0 ? .success : .status }

    public var description: String {
        let ccName = ["UVC_CC_OK", "UVC_CC_ERROR", "UVC_CC_BUSY", "UVC_CC_PARTIAL"][Int(cc & 3)]
        var s = "cc \(cc) (\(ccName))"
        if let rc {
            s += " rc " + hex(UInt64(rc), digits: 4)
            switch rc {
            case Self.rcExecuted: s += " (UVC_RC_EXECUTED)"
            case Self.rcInvalidState: s += " (UVC_RC_INV_STATE)"
            default: break
            }
            if rrc != 0 { s += " rrc " + hex(UInt64(rrc), digits: 4) }
        }
        let why = "\(reason)"
        return why.isEmpty ? s : s + ": " + why
    }
}

/// A page that is secure storage: its configuration, its guest absolute page, and the
/// guest's sharing of it.
public struct SecurePage: Hashable, Sendable {
    public let guest: Int
    public let gfn: UInt64
    /// The guest made it shared (UVC_CMD_SET_SHARED_ACCESS): the host may access it.
    public var shared = false
    /// Pinned shared by the host (UVC_CMD_PIN_PAGE_SHARED): the guest cannot unshare it.
    public var pinned = false
}

/// What the UV keeps of an exported page to verify it on import: the content it gave the
/// host (encrypted) and the guest's content it stands for.
public struct ExportRecord: Hashable, Sendable {
    public let cipher: UInt64
    public let plain: UInt64
}

/// A secure configuration (a protected guest) as the UV holds it.
public struct SecureConfiguration: Hashable, Sendable {
    public let handle: UInt64
    public internal(set) var live = true
    /// Secure CPUs created in it and not destroyed.
    public internal(set) var cpus = 0
    /// Exported pages by guest frame, which an import must verify.
    public internal(set) var exported: [UInt64: ExportRecord] = [:]
}

/// What the UV counted.
public struct UVStats: Hashable, Sendable {
    public var imports: UInt64 = 0
    public var exports: UInt64 = 0
    public var destroys: UInt64 = 0
    public var pinsShared: UInt64 = 0
    /// Imports whose integrity check failed (the exported content changed).
    public var integrityFailures: UInt64 = 0
    /// Calls answered busy (cc 2), including uv_call's own retries.
    public var busy: UInt64 = 0
    public var refused: UInt64 = 0
}

/// The s390 Ultravisor's view of storage: which host frames are secure storage of which
/// protected configuration, what each frame holds (a token standing for its content, 0 for
/// zeros), and each configuration's exported pages. A CPU access by the host to a secure
/// page is a secure-storage access exception (PGM 0x3d); the UV's own calls change the
/// state. The command semantics follow Linux's callers (arch/s390/kernel/uv.c) and their
/// comments: an import "brought in the first time … will be cleared", an exported one "will
/// be decrypted and integrity checked"; an export or destroy of a page that is not secure
/// is a no-op (uv_destroy's "newer variant", arch_make_folio_accessible's comment).
/// The return codes IBM does not publish are the model's: UVC_RC_INV_STATE for a page in
/// the wrong state, and no rc for a failed integrity check (docs/s390-pv.md).
public struct Ultravisor: Hashable, Sendable {
    public internal(set) var secure: [UInt64: SecurePage] = [:]
    /// Frame contents (absent: zeros).
    public internal(set) var content: [UInt64: UInt64] = [:]
    public internal(set) var configurations: [SecureConfiguration] = []
    /// The swap device's slots: the content a swap-out wrote (kept beside storage so the
    /// export/import round trip can be followed through swap).
    public var swapDevice: [Int: UInt64] = [:]
    public internal(set) var stats = UVStats()
    /// Fault injection: the next `count` calls of a command answer condition code `cc`.
    public struct Injection: Hashable, Sendable {
        public let command: UVCCommand
        public let cc: UInt8
        public internal(set) var count: Int
    }
    public internal(set) var injected: [Injection] = []

    public init() {}

    /// Whether the host CPU may access frame `pfn`: not secure, or shared by its guest.
    public func hostAccessible(_ pfn: UInt64) -> Bool { secure[pfn].map(\.shared) ?? true }
    /// Whether frame `pfn` is secure storage and not shared (the host's access faults).
    public func isSecure(_ pfn: UInt64) -> Bool { secure[pfn] != nil }

    /// The next `count` calls of `command` answer `cc` (2 BUSY, 3 PARTIAL: retried by
    /// uv_call, -EAGAIN from __make_folio_secure; 1 ERROR: refused).
    public mutating func inject(_ command: UVCCommand, cc: UInt8, count: Int) {
        injected.removeAll { $0.command == command }
        if count > 0 { injected.append(Injection(command: command, cc: cc, count: count)) }
    }

    /// An injected answer for this call of `command`, if one is pending. Calls made through
    /// uv_call (every one but the import, which __make_folio_secure makes once with
    /// __uv_call) repeat while the answer is busy or partial, so those answers are used up
    /// and counted here. uv.h uv_call.
    mutating func takeInjected(_ command: UVCCommand) -> UVCResult? {
        while let i = injected.firstIndex(where: { $0.command == command }) {
            let cc = injected[i].cc
            injected[i].count -= 1
            if injected[i].count == 0 { injected.remove(at: i) }
            if cc >= 2 {
                stats.busy += 1
                if command != .convToSecStor { continue }  // uv_call: again
            } else {
                stats.refused += 1
            }
            return UVCResult(command, cc: cc, rc: nil, "injected")
        }
        return nil
    }

    /// UVC_CMD_CREATE_SEC_CONF: a new configuration; its index is the guest's handle slot.
    public mutating func createConfiguration() -> (UVCResult, Int?) {
        if let r = takeInjected(.createSecConf) { return (r, nil) }
        configurations.append(SecureConfiguration(handle: 0x1000 + UInt64(configurations.count)))
        return (.executed(.createSecConf), configurations.count - 1)
    }

    /// UVC_CMD_CREATE_SEC_CPU / UVC_CMD_DESTROY_SEC_CPU: a secure CPU of configuration `g`
    /// (kvm_s390_pv_create_cpu, kvm_s390_pv_destroy_cpu).
    public mutating func secureCPU(_ g: Int, create: Bool) -> UVCResult {
        let c: UVCCommand = create ? .createSecCPU : .destroySecCPU
        if let r = takeInjected(c) { return r }
        guard configurations.indices.contains(g), configurations[g].live, create || configurations[g].cpus > 0 else {
            stats.refused += 1
            return UVCResult(c, cc: 1, rc: Self.invalid, "no such live configuration or CPU")
        }
        configurations[g].cpus += create ? 1 : -1
        return .executed(c)
    }

    /// UVC_CMD_DESTROY_SEC_CONF: the configuration ends; its exported records go. Pages
    /// still secure stay so until destroyed (the kernel destroys them first).
    public mutating func destroyConfiguration(_ g: Int) -> UVCResult {
        if let r = takeInjected(.destroySecConf) { return r }
        guard configurations.indices.contains(g), configurations[g].live else {
            return UVCResult(.destroySecConf, cc: 1, rc: Self.invalid, "no such live configuration")
        }
        configurations[g].live = false
        configurations[g].exported = [:]
        return .executed(.destroySecConf)
    }
    static let invalid = UVCResult.rcInvalidState

    /// One __uv_call of UVC_CMD_CONV_TO_SEC_STOR (import) of guest `g`'s page `gfn`, which
    /// the UV finds at host frame `pfn` through the guest's mapping (nil: not mapped, rc
    /// 0x10a). A page brought in the first time is cleared; an exported one is verified
    /// against the content the export gave the host and decrypted. uv.c __make_folio_secure;
    /// the import's description in "KVM: s390: protvirt: Add the host side" (uv.h, 2020).
    public mutating func convertToSecure(guest g: Int, gfn: UInt64, pfn: UInt64?) -> UVCResult {
        let c = UVCCommand.convToSecStor
        if let r = takeInjected(c) { return r }
        guard configurations.indices.contains(g), configurations[g].live else {
            stats.refused += 1
            return UVCResult(c, cc: 1, rc: Self.invalid, "no such live configuration")
        }
        guard let pfn else {
            stats.refused += 1
            return UVCResult(c, cc: 1, rc: UVCResult.rcNotMapped, "the guest address is not mapped")
        }
        if let s = secure[pfn] {
            if s.guest == g && s.gfn == gfn { return .executed(c) }  // already imported
            // A page another configuration shared: with the misc feature the import moves
            // its ownership (should_export_before_import); taken here as a first import.
            guard s.shared && s.guest != g else {
                stats.refused += 1
                return UVCResult(c, cc: 1, rc: Self.invalid, "the page is secure storage of another guest page")
            }
            secure[pfn] = nil
        }
        if let record = configurations[g].exported[gfn] {
            guard content[pfn] == record.cipher else {
                stats.integrityFailures += 1
                return UVCResult(c, cc: 1, rc: nil, "integrity check failed: the page is not what the UV exported")
            }
            setContent(pfn, record.plain)
            configurations[g].exported[gfn] = nil
        } else {
            setContent(pfn, 0)
        }
        secure[pfn] = SecurePage(guest: g, gfn: gfn)
        stats.imports += 1
        return .executed(c)
    }

    /// UVC_CMD_CONV_FROM_SEC_STOR (export): the page encrypted for the host and its record
    /// kept for the next import; a page that is not secure is left as it is. uv.c
    /// uv_convert_from_secure.
    public mutating func convertFromSecure(_ pfn: UInt64) -> UVCResult {
        let c = UVCCommand.convFromSecStor
        if let r = takeInjected(c) { return r }
        guard let s = secure[pfn] else { return .executed(c) }
        let plain = content[pfn] ?? 0
        let cipher = Self.encrypt(plain, guest: s.guest, gfn: s.gfn)
        configurations[s.guest].exported[s.gfn] = ExportRecord(cipher: cipher, plain: plain)
        setContent(pfn, cipher)
        secure[pfn] = nil
        stats.exports += 1
        return .executed(c)
    }

    /// UVC_CMD_DESTR_SEC_STOR: the page cleared and given to the host, nothing kept; a page
    /// that is not secure is a no-op (the newer firmware's answer, which uv_destroy also
    /// makes of the older 0x107/0xd). uv.c uv_destroy.
    public mutating func destroyPage(_ pfn: UInt64) -> UVCResult {
        let c = UVCCommand.destrSecStor
        if let r = takeInjected(c) { return r }
        guard secure[pfn] != nil else { return .executed(c) }
        secure[pfn] = nil
        setContent(pfn, 0)
        stats.destroys += 1
        return .executed(c)
    }

    /// UVC_CMD_PIN_PAGE_SHARED: a secure page its guest shared stays shared (the guest's
    /// unshare is intercepted); anything else is refused. uv.c uv_pin_shared.
    public mutating func pinShared(_ pfn: UInt64) -> UVCResult {
        let c = UVCCommand.pinPageShared
        if let r = takeInjected(c) { return r }
        guard var s = secure[pfn], s.shared else {
            stats.refused += 1
            return UVCResult(c, cc: 1, rc: Self.invalid, secure[pfn] == nil ? "the page is not secure" : "the page is not shared")
        }
        s.pinned = true
        secure[pfn] = s
        stats.pinsShared += 1
        return .executed(c)
    }

    /// The guest's UVC_CMD_SET_SHARED_ACCESS / UVC_CMD_REMOVE_SHARED_ACCESS on its page at
    /// frame `pfn` (the guest's set_memory_decrypted / set_memory_encrypted, uv_set_shared /
    /// uv_remove_shared); unsharing a page the host pinned shared is intercepted.
    public mutating func setShared(guest g: Int, pfn: UInt64, shared: Bool) -> UVCResult {
        let c: UVCCommand = shared ? .setSharedAccess : .removeSharedAccess
        if let r = takeInjected(c) { return r }
        guard var s = secure[pfn], s.guest == g else {
            stats.refused += 1
            return UVCResult(c, cc: 1, rc: Self.invalid, "the page is not the guest's secure storage")
        }
        if !shared && s.pinned { return UVCResult(c, cc: 1, rc: Self.invalid, "intercepted: the host pinned the page shared") }
        s.shared = shared
        if !shared { s.pinned = false }
        secure[pfn] = s
        return .executed(c)
    }

    /// A write by the host, a device or the guest: the frame holds `token`.
    public mutating func setContent(_ pfn: UInt64, _ token: UInt64) {
        if token == 0 { content[pfn] = nil } else { content[pfn] = token }
    }
    public func contents(_ pfn: UInt64) -> UInt64 { content[pfn] ?? 0 }

    /// Moves a frame's content to another frame (a copy by the host: swap-in, migration).
    public mutating func copyContent(from a: UInt64, to b: UInt64) { setContent(b, contents(a)) }

    /// The export's encryption, as a token: a function of the content, the guest and the
    /// page (the UV's tweak), never equal to a plaintext token the model writes (bit 63).
    static func encrypt(_ plain: UInt64, guest: Int, gfn: UInt64) -> UInt64 {
        var x = plain &+ 0x9E37_79B9_7F4A_7C15 &* (UInt64(guest) &+ 1) ^ (gfn &* 0xBF58_476D_1CE4_E5B9)
        x = (x ^ (x >> 31)) &* 0x94D0_49BB_1331_11EB
        return x | 1 << 63
    }
}
