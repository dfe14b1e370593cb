import PageTables

/// The set_memory_* family. Each names the Linux function it models; all take a page-aligned
/// direct-map or vmalloc address and a page count. Linux arch/x86/mm/pat/set_memory.c.
extension Kernel {
    /// set_memory_4k: split every large leaf in the range to 4K and mark the pages
    /// _PAGE_KERNEL_4K so they are never collapsed again.
    public mutating func setMemory4K(_ address: UInt64, numpages: Int) throws(HostKernelError) -> KernelStatus {
        try validate(address: address, numpages: numpages, function: "set_memory_4k")
        return changePageAttrSetClr(CPARequest(address: address, numpages: numpages, set: .forced4K, clear: [], forceSplit: true))
    }

    /// set_memory_np: clear _PAGE_PRESENT.
    public mutating func setMemoryNP(_ address: UInt64, numpages: Int) throws(HostKernelError) -> KernelStatus {
        try change(address, numpages, set: [], clear: .present, "set_memory_np")
    }

    /// set_memory_p: set _PAGE_PRESENT.
    public mutating func setMemoryP(_ address: UInt64, numpages: Int) throws(HostKernelError) -> KernelStatus {
        try change(address, numpages, set: .present, clear: [], "set_memory_p")
    }

    /// set_memory_ro: clear _PAGE_RW (and DIRTY, which cocomem does not track).
    public mutating func setMemoryRO(_ address: UInt64, numpages: Int) throws(HostKernelError) -> KernelStatus {
        try change(address, numpages, set: [], clear: .writable, "set_memory_ro")
    }

    /// set_memory_rw: set _PAGE_RW.
    public mutating func setMemoryRW(_ address: UInt64, numpages: Int) throws(HostKernelError) -> KernelStatus {
        try change(address, numpages, set: .writable, clear: [], "set_memory_rw")
    }

    /// set_memory_nx: set _PAGE_NX.
    public mutating func setMemoryNX(_ address: UInt64, numpages: Int) throws(HostKernelError) -> KernelStatus {
        try change(address, numpages, set: .noExecute, clear: [], "set_memory_nx")
    }

    /// set_memory_x: clear _PAGE_NX.
    public mutating func setMemoryX(_ address: UInt64, numpages: Int) throws(HostKernelError) -> KernelStatus {
        try change(address, numpages, set: [], clear: .noExecute, "set_memory_x")
    }

    /// set_memory_rox: clear RW and NX with CPA_COLLAPSE, so the range's tables are
    /// re-merged after the flush where they can be (the 2025 CPA_COLLAPSE series).
    public mutating func setMemoryROX(_ address: UInt64, numpages: Int) throws(HostKernelError) -> KernelStatus {
        try validate(address: address, numpages: numpages, function: "set_memory_rox")
        return changePageAttrSetClr(CPARequest(address: address, numpages: numpages, set: [], clear: [.writable, .noExecute], collapse: true))
    }

    /// set_direct_map_invalid_noflush: clear PRESENT and RW on one direct-map page with
    /// CPA_NO_CHECK_ALIAS; no vm_unmap_aliases and no TLB flush (a split still flushes).
    public mutating func setDirectMapInvalidNoflush(_ address: UInt64) throws(HostKernelError) -> KernelStatus {
        try directMapNoflush(address, set: [], clear: [.present, .writable], "set_direct_map_invalid_noflush")
    }

    /// set_direct_map_default_noflush: set PRESENT and RW on one direct-map page, no flush.
    public mutating func setDirectMapDefaultNoflush(_ address: UInt64) throws(HostKernelError) -> KernelStatus {
        try directMapNoflush(address, set: [.present, .writable], clear: [], "set_direct_map_default_noflush")
    }

    /// __change_page_attr_set_clr over a range without its cpa_flush: the PTEs written, each
    /// CPU's TLB left holding the old entry (noted unflushed) until `flushTLBKernelRange`.
    /// One action of a routine the explorer interleaves (a conversion, a split).
    public mutating func changePageAttrNoFlush(_ address: UInt64, numpages: Int, set: Attributes, clear: Attributes) throws(HostKernelError) -> KernelStatus {
        try validate(address: address, numpages: numpages, function: "__change_page_attr_set_clr")
        let out = changePageAttr(CPARequest(address: address, numpages: numpages, set: set, clear: clear, noCheckAlias: true))
        if out.flushTLB { for i in 0..<numpages { noteUnflushed(address + UInt64(i) * pageBytes) } }
        return out.error.map(KernelStatus.error) ?? .ok
    }

    /// set_memory_encrypted: set the C-bit. `hook` is the platform's
    /// enc_status_change_prepare/finish (a guest's conversion protocol); it returns an errno
    /// to fail the call.
    public mutating func setMemoryEncrypted(
        _ address: UInt64, numpages: Int, hook: EncStatusHook = { _, _, _, _ in nil }
    ) throws(HostKernelError) -> KernelStatus {
        try setMemoryEncDec(address, numpages: numpages, encrypt: true, hook: hook)
    }

    /// set_memory_decrypted: clear the C-bit, with the platform's hooks as for
    /// set_memory_encrypted.
    public mutating func setMemoryDecrypted(
        _ address: UInt64, numpages: Int, hook: EncStatusHook = { _, _, _, _ in nil }
    ) throws(HostKernelError) -> KernelStatus {
        try setMemoryEncDec(address, numpages: numpages, encrypt: false, hook: hook)
    }

    /// set_memory_encrypted (`encrypt`) or set_memory_decrypted: Linux set_memory.c
    /// __set_memory_enc_dec, for a caller that decides the direction at run time (a guest
    /// flipping a page) and passes its hooks as a closure literal, which then needs no heap
    /// context.
    public mutating func setMemoryEncDec(_ address: UInt64, numpages: Int, encrypt: Bool, hook: EncStatusHook) throws(HostKernelError) -> KernelStatus {
        try validate(address: address, numpages: numpages, function: encrypt ? "set_memory_encrypted" : "set_memory_decrypted")
        return setMemoryEncPgtable(address, numpages: numpages, encrypt: encrypt, hook: hook)
    }

    /// x86_platform.guest.enc_status_change_prepare / _finish: (which hook, the first
    /// address, the page count, whether the pages become encrypted) → an errno to fail with.
    public typealias EncStatusHook = (EncryptionHook, UInt64, Int, Bool) -> Errno?

    private mutating func change(_ address: UInt64, _ numpages: Int, set: Attributes, clear: Attributes, _ function: String) throws(HostKernelError) -> KernelStatus {
        try validate(address: address, numpages: numpages, function: function)
        return changePageAttrSetClr(CPARequest(address: address, numpages: numpages, set: set, clear: clear))
    }

    private mutating func directMapNoflush(_ address: UInt64, set: Attributes, clear: Attributes, _ function: String) throws(HostKernelError) -> KernelStatus {
        try validate(address: address, numpages: 1, function: function)
        guard isDirectMap(address) else { throw HostKernelError("\(function): \(hex(address)) is not a direct-map address") }
        let out = changePageAttr(CPARequest(address: address, numpages: 1, set: set, clear: clear, noCheckAlias: true))
        if out.flushTLB { noteUnflushed(address) }
        return out.error.map(KernelStatus.error) ?? .ok
    }

    /// Changes the C-bit: a flush with cache write-back first (AMD: enc_tlb_flush_required
    /// is always true; the cache flush only without SME_COHERENT), the prepare hook, the PTE
    /// change with aliases, an unconditional flush, then the finish hook; a hook failure is
    /// -EIO. Nothing happens without CC_ATTR_MEM_ENCRYPT. Linux set_memory.c
    /// __set_memory_enc_pgtable; mem_encrypt_amd.c.
    mutating func setMemoryEncPgtable(_ address: UInt64, numpages: Int, encrypt: Bool, hook: EncStatusHook) -> KernelStatus {
        guard config.memEncrypt else { return .ok }
        // The C-bit is set to encrypt; a TDX guest's shared bit is cleared to encrypt.
        let bit: Attributes = config.ccSharedBit ? .shared : .encrypted
        let setBit = encrypt != config.ccSharedBit
        let req = CPARequest(address: address, numpages: numpages, set: setBit ? bit : [], clear: setBit ? [] : bit)
        cpaFlush(req, cache: !config.smeCoherent, forceFlushAll: false)
        log("enc_status_change_prepare")
        if failingHook == .prepare || hook(.prepare, address, numpages, encrypt) != nil {
            log("CPA VMM failure to convert memory")
            return .error(.EIO)
        }
        let out = changePageAttr(req)
        stats.encConversions += out.pagesChanged
        log("pte change")
        cpaFlush(req, cache: false, forceFlushAll: out.forceFlushAll)
        if let error = out.error { return .error(error) }
        log("enc_status_change_finish")
        if failingHook == .finish || hook(.finish, address, numpages, encrypt) != nil {
            log("CPA VMM failure to convert memory")
            return .error(.EIO)
        }
        return .ok
    }
}
