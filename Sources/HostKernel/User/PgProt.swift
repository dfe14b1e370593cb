import PageTables

/// Which bits pte_modify/pmd_modify/pgprot_modify keep from the old value besides the PFN,
/// caching, dirty and software bits: the history of the encryption bit in x86's
/// _PAGE_CHG_MASK (policy slots `host.pgprot-chg-mask`, `guest.pgprot-chg-mask`).
/// Linux arch/x86/include/asm/pgtable_types.h.
public enum PgprotChgMask: String, CaseIterable, Hashable, Sendable {
    /// 4.14–5.6: the mask has no encryption bit, and pgprot_modify ORs all of the new prot in.
    case none
    /// 5.7–6.8: _PAGE_ENC (sme_me_mask), 6db73f17c5f1 "x86: Don't let pgprot_modify() change
    /// the page encryption bit" (Hellström, seed 000's RFC 1/2).
    case enc
    /// 6.9 on: _PAGE_CC (cc_mask), a0a8d15a798b "x86/tdx: Preserve shared bit on mprotect()":
    /// the C-bit on AMD and a TDX guest's shared bit.
    case cc

    public var summary: String {
        switch self {
        case .none: "Linux 4.14–5.6: _PAGE_CHG_MASK without the encryption bit, so mprotect gives every PTE vm_page_prot's C-bit"
        case .enc: "Linux 5.7–6.8: _PAGE_ENC (sme_me_mask) kept by pte_modify and pgprot_modify (6db73f17c5f1)"
        case .cc: "Linux 6.9 on: _PAGE_CC (cc_mask) kept, which also covers a TDX guest's shared bit (a0a8d15a798b)"
        }
    }

    /// The attributes pte_modify takes from the old entry: _PAGE_CHG_MASK less the PFN (the
    /// frame is kept apart). PWT/PCD/PAT (the memory type), DIRTY, SPECIAL and the software
    /// bits always; the encryption bit by form.
    public var kept: Attributes {
        var k: Attributes = [.dirty, .special, .software1, .software2, .forced4K]
        k.memoryType = .uncached  // both memory-type bits
        switch self {
        case .none: break
        case .enc: k.insert(.encrypted)
        case .cc: k.formUnion([.encrypted, .shared])
        }
        return k
    }
}

/// The x86 page-protection helpers over cocomem's attributes.
public enum PgProt {
    /// protection_map[] through vm_get_page_prot: PAGE_NONE (PROTNONE, i.e. the global bit
    /// without present), PAGE_READONLY / PAGE_COPY (private writable is read-only until a
    /// write fault copies), PAGE_SHARED, the _EXEC forms without NX; `__sme_set` ORs the C-bit
    /// into all of them when the kernel runs with memory encryption (SME host or SEV guest;
    /// a TDX guest's default is private, the shared bit clear). _PAGE_ACCESSED, set in every
    /// entry of the map, is not held (`x86PTE` writes it). Linux arch/x86/mm/pgprot.c
    /// vm_get_page_prot; arch/x86/include/asm/pgtable_types.h PAGE_*.
    public static func vmGetPageProt(_ flags: VMFlags, memEncrypt: Bool) -> Attributes {
        var a: Attributes
        if !flags.contains(.read) && !flags.contains(.write) && !flags.contains(.exec) {
            a = [.global]  // PAGE_NONE: _PAGE_PROTNONE is _PAGE_GLOBAL's bit
        } else {
            a = [.present, .user]
            if flags.contains(.shared) && flags.contains(.write) { a.insert(.writable) }
            if !flags.contains(.exec) { a.insert(.noExecute) }
        }
        if memEncrypt { a.insert(.encrypted) }
        return a
    }

    /// pte_modify (and pmd_modify) with `mask`: the old entry's kept bits, the rest from
    /// `newprot`. Without user shadow stacks DIRTY stays as it is. arch/x86/include/asm/pgtable.h.
    public static func pteModify(_ old: Attributes, _ newprot: Attributes, mask: PgprotChgMask) -> Attributes {
        let k = mask.kept
        return Attributes(rawValue: (old.rawValue & k.rawValue) | (newprot.rawValue & ~k.rawValue))
    }

    /// pgprot_modify(oldprot, newprot): (old & mask) | (new & ~mask) from 5.7; before, the
    /// whole of `newprot` ORed in, so its C-bit always wins. arch/x86/include/asm/pgtable.h.
    public static func pgprotModify(_ old: Attributes, _ newprot: Attributes, mask: PgprotChgMask) -> Attributes {
        let k = mask.kept
        // The memory type's two bits are PWT and PCD, so ORing raw values ORs those bits.
        if mask == .none { return Attributes(rawValue: (old.rawValue & k.rawValue) | newprot.rawValue) }
        return Attributes(rawValue: (old.rawValue & k.rawValue) | (newprot.rawValue & ~k.rawValue))
    }

    /// The C-bit's position, CPUID 0x8000001F EBX[5:0]: 47 on EPYC 7002/7003 (51 on 9004).
    public static let cBit = 47

    /// The 64-bit x86 entry a user leaf is: P, RW, US, PWT/PCD by memory type (Linux's PAT
    /// layout), A (protection_map sets it; the model never clears it), D, PSE on a huge
    /// entry, G (PROTNONE when not present), SPECIAL (SOFTW1, bit 9), the PFN, the C-bit, NX;
    /// a not-present PROT_NONE entry has its PFN inverted (L1TF, flip_protnone_guard).
    /// Intel SDM Vol 3 §4.5 tables 4-19/4-20; arch/x86/include/asm/pgtable_types.h.
    public static func x86PTE(_ d: Descriptor, level: Int) -> UInt64 {
        guard d.isLeaf else { return 0 }
        let a = d.attributes
        var v: UInt64 = 1 << 5  // _PAGE_ACCESSED
        if a.contains(.present) { v |= 1 }
        if a.contains(.writable) { v |= 1 << 1 }
        if a.contains(.user) { v |= 1 << 2 }
        switch a.memoryType {
        case .writeBack: break
        case .writeCombining: v |= 1 << 3
        case .uncachedMinus: v |= 1 << 4
        case .uncached: v |= 1 << 3 | 1 << 4
        }
        if a.contains(.dirty) { v |= 1 << 6 }
        if level > 1 { v |= 1 << 7 }
        if a.contains(.global) { v |= 1 << 8 }
        if a.contains(.special) { v |= 1 << 9 }
        let pfnMask: UInt64 = ((1 << 52) - 1) & ~0xfff & ~(1 << UInt64(cBit))
        var pfnBits = (d.frame.rawValue << 12) & pfnMask
        if !a.contains(.present) { pfnBits = ~pfnBits & pfnMask }
        v |= pfnBits
        if a.contains(.encrypted) { v |= 1 << UInt64(cBit) }
        if a.contains(.noExecute) { v |= 1 << 63 }
        return v
    }
}
