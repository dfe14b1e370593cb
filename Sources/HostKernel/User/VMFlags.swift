import PageTables

/// A VMA's vm_flags with Linux's values. Linux include/linux/mm.h (VM_READ … VM_MIXEDMAP);
/// VM_MTE is arm64's VM_HIGH_ARCH_0 (arch/arm64/include/asm/mman.h).
public struct VMFlags: OptionSet, Hashable, Sendable, CustomStringConvertible {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let read = VMFlags(rawValue: 0x1)
    public static let write = VMFlags(rawValue: 0x2)
    public static let exec = VMFlags(rawValue: 0x4)
    public static let shared = VMFlags(rawValue: 0x8)
    public static let mayRead = VMFlags(rawValue: 0x10)
    public static let mayWrite = VMFlags(rawValue: 0x20)
    public static let mayExec = VMFlags(rawValue: 0x40)
    public static let mayShare = VMFlags(rawValue: 0x80)
    /// VM_PFNMAP: page frames without struct page semantics (remap_pfn_range, vmf_insert_pfn*).
    public static let pfnmap = VMFlags(rawValue: 0x400)
    /// VM_IO: memory-mapped I/O; GUP refuses it.
    public static let io = VMFlags(rawValue: 0x4000)
    public static let dontExpand = VMFlags(rawValue: 0x40000)
    public static let dontDump = VMFlags(rawValue: 0x400_0000)
    /// VM_MIXEDMAP: struct pages and raw PFNs mixed (vmf_insert_mixed*).
    public static let mixedmap = VMFlags(rawValue: 0x1000_0000)
    /// VM_HUGEPAGE: madvise(MADV_HUGEPAGE).
    public static let hugepage = VMFlags(rawValue: 0x2000_0000)
    /// VM_MTE (arm64 VM_HIGH_ARCH_0).
    public static let mte = VMFlags(rawValue: 1 << 32)

    /// The /proc/PID/smaps VmFlags mnemonics, in its order (fs/proc/task_mmu.c show_smap_vma_flags).
    static let mnemonics: [(VMFlags, String)] = [
        (.read, "rd"), (.write, "wr"), (.exec, "ex"), (.shared, "sh"), (.mayRead, "mr"), (.mayWrite, "mw"), (.mayExec, "me"),
        (.mayShare, "ms"), (.pfnmap, "pf"), (.io, "io"), (.dontExpand, "de"), (.dontDump, "dd"), (.mixedmap, "mm"),
        (.hugepage, "hg"), (.mte, "mt"),
    ]

    public var description: String { Self.mnemonics.filter { contains($0.0) }.map(\.1).joined(separator: " ") }
}

/// mmap/mprotect's PROT_* bits, and the prot a driver's insert names (pgprot_decrypted /
/// pgprot_encrypted of vm_page_prot). Written `PROT_READ|PROT_WRITE`, `PROT_NONE`, with
/// `decrypted` or `encrypted` where an insert takes a prot. Linux include/uapi/asm-generic/mman-common.h.
public struct UserProt: Hashable, Sendable, CustomStringConvertible {
    public var read = false, write = false, exec = false
    /// pgprot_decrypted (true) or pgprot_encrypted (false) of the base prot; nil keeps it.
    public var decrypted: Bool?

    public init(read: Bool = false, write: Bool = false, exec: Bool = false, decrypted: Bool? = nil) {
        self.read = read
        self.write = write
        self.exec = exec
        self.decrypted = decrypted
    }

    public static let tokens = ["PROT_READ", "PROT_WRITE", "PROT_EXEC", "PROT_NONE", "decrypted", "encrypted"]

    /// Parses `PROT_READ|PROT_WRITE|decrypted`; nil with the token that is not one.
    public static func parse(_ text: String) -> Result<UserProt, ProtParseError> {
        var p = UserProt()
        for t in flagTokens(text) {
            switch t {
            case "PROT_READ": p.read = true
            case "PROT_WRITE": p.write = true
            case "PROT_EXEC": p.exec = true
            case "PROT_NONE": break
            case "decrypted": p.decrypted = true
            case "encrypted": p.decrypted = false
            default: return .failure(ProtParseError(token: t))
            }
        }
        return .success(p)
    }

    /// The VM_READ/WRITE/EXEC flags these bits give (calc_vm_prot_bits).
    public var vmFlags: VMFlags {
        var f: VMFlags = []
        if read { f.insert(.read) }
        if write { f.insert(.write) }
        if exec { f.insert(.exec) }
        return f
    }

    public var description: String {
        var parts: [String] = []
        if read { parts.append("PROT_READ") }
        if write { parts.append("PROT_WRITE") }
        if exec { parts.append("PROT_EXEC") }
        if parts.isEmpty { parts.append("PROT_NONE") }
        if let d = decrypted { parts.append(d ? "decrypted" : "encrypted") }
        return parts.joined(separator: "|")
    }
}

/// A prot token that does not exist.
public struct ProtParseError: Error, Hashable, Sendable {
    public let token: String
}

/// The tokens of C-style flags joined with `|` (`PROT_READ | PROT_WRITE`), spaces trimmed;
/// an empty token is kept (`PROT_READ|` has one) so a check can refuse it.
public func flagTokens(_ text: String) -> [String] {
    text.split(separator: "|", omittingEmptySubsequences: false).map { String($0.drop { $0 == " " }.reversed().drop { $0 == " " }.reversed()) }
}
