import PageTables

/// What one 4K page of an SEV guest's memory holds, as far as keys and caches go.
public struct SEVPageState: Hashable, Sendable {
    /// Memory (or the guest's own cache line) holds the guest's data under its key.
    public var guestData = false
    /// That data is damaged: a host or device write landed on it, or a stale host-key line
    /// will be written back over it.
    public var corrupt = false
    /// A dirty line under the host's key (a host write) not yet written back.
    public var hostDirty = false
    /// A dirty line under the guest's key not yet written back.
    public var guestDirty = false
    /// The VMM gave the frame up while the guest lived; the host may reuse it.
    public var reclaimed = false
}

/// SEV (not SNP) memory: each guest's pages encrypted with its ASID's key, no integrity and
/// no ownership table, so every host access goes through; reads of a guest's page return
/// ciphertext, writes replace the guest's data. Without SME_COHERENT (CPUID 0x8000001F
/// EAX[10]) caches do not keep one physical line coherent across keys, so a dirty line
/// under one key can later be written back over data written under another; CLFLUSH (host
/// key only) and WBINVD (every key) are the kernel's remedies. AMD APM Vol 2 §15.34
/// (SEV; "Cache coherency" as Linux's sev.c comments describe it); arch/x86/kvm/svm/sev.c.
public struct SEVMemory: HostOwnership, Sendable {
    /// A guest's memory in host frames, and what the host knows of its state.
    public struct Guest: Hashable, Sendable {
        public let asid: UInt32
        public let firstPFN: UInt64
        public let pages: UInt64
        /// LAUNCH_START done and not yet destroyed: its key is in use.
        public var alive = false
        /// Frames the guest has made shared (its KVM_HC_MAP_GPA_RANGE notifications), by gfn.
        public var shared: Set<UInt64> = []
        public func contains(_ pfn: UInt64) -> Bool { pfn >= firstPFN && pfn - firstPFN < pages }
    }

    /// Counters of what the keys and caches did.
    public struct Stats: Hashable, Sendable {
        public var guestCorruptReads = 0
        public var hostCorruptions = 0
        public var strayWrites = 0
        public var clflushPages: UInt64 = 0
        public var wbinvd = 0
    }

    /// X86_FEATURE_SME_COHERENT.
    public let coherent: Bool
    public internal(set) var guests: [Guest] = []
    /// Pages that are not in the default state (nothing written), by frame.
    public internal(set) var pages: [UInt64: SEVPageState] = [:]
    public internal(set) var stats = Stats()

    public init(coherent: Bool) { self.coherent = coherent }

    public mutating func addGuest(asid: UInt32, firstPFN: UInt64, pages: UInt64) {
        guests.append(Guest(asid: asid, firstPFN: firstPFN, pages: pages))
    }

    public func guest(of pfn: UInt64) -> Int? { guests.firstIndex { $0.contains(pfn) } }

    public func state(_ pfn: UInt64) -> SEVPageState { pages[pfn] ?? SEVPageState() }

    /// Whether the page holds a live guest's private data (what the host cannot use).
    public func isGuestPrivate(_ pfn: UInt64) -> Bool {
        guard let g = guest(of: pfn), guests[g].alive else { return false }
        let s = state(pfn)
        return !guests[g].shared.contains(pfn - guests[g].firstPFN) && s.guestData && !s.reclaimed
    }

    public mutating func setAlive(_ g: Int, _ alive: Bool) { guests[g].alive = alive }

    public mutating func setShared(_ g: Int, gfns: Range<UInt64>, shared: Bool) {
        for gfn in gfns { if shared { guests[g].shared.insert(gfn) } else { guests[g].shared.remove(gfn) } }
    }

    /// Frames the VMM gave up (an MMU-notifier invalidation: munmap, MADV_DONTNEED,
    /// reclaim): the host may reuse them; the guest's data there is gone, its dirty lines
    /// are not.
    public mutating func reclaim(_ pfns: [UInt64]) {
        for pfn in pfns where guest(of: pfn) != nil {
            var s = state(pfn)
            s.guestData = false
            s.corrupt = false
            s.reclaimed = true
            pages[pfn] = s
        }
    }

    /// A host CPU write (any mapping, the host's key or none): it replaces a guest's data
    /// (corrupting it, there is no integrity), and leaves a dirty host-key line; on a page
    /// the host took back with a guest-key line still dirty (no WBINVD since), that line's
    /// write-back will clobber the host's data.
    public mutating func hostWrite(_ pfn: UInt64) {
        var s = state(pfn)
        if isGuestPrivate(pfn) { s.corrupt = true; stats.strayWrites += 1 }
        if s.guestDirty && !coherent, let g = guest(of: pfn), s.reclaimed || !guests[g].alive {
            stats.hostCorruptions += 1
        }
        if coherent { s.guestDirty = false }
        s.hostDirty = true
        pages[pfn] = s
    }

    /// A device's DMA write (no key; the IOMMU snoops the caches): a guest's data is replaced.
    public mutating func deviceWrite(_ pfn: UInt64) {
        guard isGuestPrivate(pfn) else { return }
        pages[pfn, default: SEVPageState()].corrupt = true
        stats.strayWrites += 1
    }

    /// The guest writes its page under its key (C=1). A stale dirty host-key line (no flush
    /// since the host wrote it, caches not coherent) will be written back over it later.
    public mutating func guestWrite(_ pfn: UInt64) {
        var s = state(pfn)
        s.corrupt = s.hostDirty && !coherent
        if coherent { s.hostDirty = false }
        s.guestData = true
        s.guestDirty = true
        s.reclaimed = false  // KVM faulted the frame back in for the guest
        pages[pfn] = s
    }

    /// The guest reads its page: whether what it reads is corrupted (counted).
    public mutating func guestRead(_ pfn: UInt64) -> Bool {
        let s = state(pfn)
        if s.guestData && s.corrupt { stats.guestCorruptReads += 1; return true }
        return false
    }

    /// CLFLUSH of a page through the host's mapping: its host-key lines are written back now
    /// (over guest data if there is some), guest-key lines stay ("CLFLUSH will not do this",
    /// sev_mem_enc_unregister_region).
    public mutating func clflush(_ pfn: UInt64) {
        stats.clflushPages += 1
        guard var s = pages[pfn], s.hostDirty else { return }
        if s.guestData { s.corrupt = true }
        s.hostDirty = false
        pages[pfn] = s
    }

    /// LAUNCH_UPDATE_DATA of a page: the firmware encrypts it in place under the guest's key.
    public mutating func launchEncrypt(_ pfn: UInt64) {
        var s = state(pfn)
        s.corrupt = s.hostDirty && !coherent
        s.guestData = true
        pages[pfn] = s
    }

    /// WBINVD on every CPU: every dirty line of every key written back and invalidated.
    public mutating func wbinvd() {
        stats.wbinvd += 1
        for (pfn, var s) in pages where s.hostDirty || s.guestDirty {
            if s.hostDirty && s.guestData && isGuestPrivate(pfn) { s.corrupt = true }
            s.hostDirty = false
            s.guestDirty = false
            pages[pfn] = s
        }
    }

    /// The guest is gone: its data means nothing any more (its dirty lines stay until flushed).
    public mutating func forgetGuestData(_ g: Int) {
        for pfn in Array(pages.keys) where guests[g].contains(pfn) {
            pages[pfn]!.guestData = false
            pages[pfn]!.corrupt = false
        }
    }

    // HostOwnership: SEV checks nothing; a read of a guest's private page is ciphertext.
    public func hostCheck(pa: UInt64, write: Bool, walk: Bool, mappingSize: PageSize) -> HostCheck { .allowed }
    public func isGuestOwned(pfn: UInt64) -> Bool { isGuestPrivate(pfn) }
    public func regionHasGuestPages(pfn: UInt64) -> Bool { guest(of: pfn) != nil }
}
