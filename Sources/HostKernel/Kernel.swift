import Hardware
import PageTables

/// The host kernel's memory-management state: init_mm's page table with the direct map and
/// the vmalloc area, the direct-map page counts, and what change_page_attr has done.
///
/// A value: copying a Kernel is a snapshot.
public struct Kernel: Sendable {
    public let config: KernelConfig
    public let layout: KernelLayout
    public let memory: PhysicalMemory
    /// PHYS_OFFSET: the physical address the direct map's first byte maps (0 on x86;
    /// memstart_addr on arm64).
    public let physOffset: UInt64
    /// init_mm.pgd: one table for the direct map and vmalloc.
    public internal(set) var pageTable: PageTable
    /// direct_pages_count[], as arch_report_meminfo prints it. Linux
    /// arch/x86/mm/pat/set_memory.c update_page_count / split_page_count.
    public internal(set) var directPagesCount = LeafCounts()
    /// The walk's count right after boot (for the kernel's count, `directPagesCount(.kernel)`).
    public internal(set) var bootDirectPagesCount = LeafCounts()
    /// Physical ranges the direct map covers (pfn_range_is_mapped): [0, 1M) and RAM.
    public let mappedRanges: [Range<UInt64>]
    public internal(set) var stats = CPAStats()
    /// Faults on host accesses by how they ended, and pages given away and leaked.
    public internal(set) var faults = HostFaultStats()
    /// The faults themselves, the first `HostFaultLog.kept` of them, for explaining a run.
    public var faultLog = HostFaultLog()
    /// arm64 with MTE: tags, their page flags, swap's saved tags, the VMM's VMAs.
    public var mte = MTEHost()
    /// User address spaces: processes, their VMAs and page tables, the folios they map
    /// (docs/user-mappings.md).
    public var user: UserMM
    /// The vmap areas made so far, in address order.
    public internal(set) var vmapAreas: [VmapArea] = []
    /// The CPUs, each with its TLB (`config.cpus` of them).
    public var cpus: [CPU] {
        (0..<tlbs.count).map { i in
            var c = tlbs.cpu(i)
            if i == pendingCPU { c.stats.hits += pendingHits }
            return c
        }
    }
    /// The CPUs' TLBs and counters, flat.
    @usableFromInline var tlbs: CPUSet
    /// How many CPUs (without copying them, as `cpus` does).
    public var cpuCount: Int { tlbs.count }
    /// TLB hits of CPU `pendingCPU` not yet added to its stats: the hit path writes no
    /// array (`translate`).
    @usableFromInline var pendingHits: UInt64 = 0
    @usableFromInline var pendingCPU = 0
    /// Virtual pages changed by a *_noflush operation and not flushed since: a CPU may
    /// still hold their old translation, as the kernel allows until the caller flushes.
    public internal(set) var unflushed: [Range<UInt64>] = []
    /// Fault injection: the kernel's TLB flushes are left out (a missing flush).
    public var omitTLBFlushes = false
    /// Fault injection: the next encryption-status hook to fail (prepare or finish).
    public var failingHook: EncryptionHook?
    /// When not nil, each step of a CPA call is appended here (for tests and traces).
    public var eventLog: [String]?

    /// Fault injection: every page-table page allocation fails (-ENOMEM from splits).
    public var failPageTableAllocations: Bool {
        get { pageTable.failAllocations }
        set { pageTable.failAllocations = newValue }
    }
    /// Whether direct-map splits make compact tables (`PageTable.compactSplits`); the C
    /// reference benchmark turns it off to read the dense layout.
    public var compactPageTables: Bool {
        get { pageTable.compactSplits }
        set { pageTable.compactSplits = newValue }
    }

    /// Boots: builds the direct map over `memory` as init_mem_mapping does.
    /// `reserveTables` sets aside room for splitting all of RAM up front (the host's); a
    /// guest's kernel, one of hundreds, grows its tables as it splits.
    public init(memory: PhysicalMemory, config: KernelConfig = KernelConfig(), reserveTables: Bool = true) throws(HostKernelError) {
        self.config = config
        self.memory = memory
        switch config.isa {
        case .x86_64:
            self.layout = config.la57 ? .fiveLevel : .fourLevel
            self.pageTable = PageTable(format: config.la57 ? .x86_64_la57 : .x86_64)
            self.physOffset = 0
        case .arm64:
            self.layout = .arm64
            self.pageTable = PageTable(format: .arm64_4K)
            // memstart_addr: the start of DRAM rounded down to ARM64_MEMSTART_ALIGN (1G with
            // 4K pages), without linear-map randomisation. arch/arm64/mm/init.c.
            self.physOffset = (memory.ram.first?.lowerBound ?? 0) & ~(PageSize.size1G.bytes - 1)
        case .s390x:
            // No DAT tables are built: the table stays empty (docs/s390-pv.md).
            self.layout = .s390x
            self.pageTable = PageTable(format: .x86_64)
            self.physOffset = 0
        }
        self.tlbs = CPUSet(count: max(config.cpus, 1))
        self.user = UserMM(ram: memory.ram, memEncrypt: config.memEncrypt && !config.ccSharedBit && config.isa == .x86_64)
        self.user.config = config.user
        guard memory.endOfRAM - physOffset <= layout.directMapMax else {
            throw HostKernelError("RAM ends at \(hex(memory.endOfRAM)), past the \(ByteSize.format(layout.directMapMax)) the direct map can hold"
                + (config.isa != .x86_64 ? "" : config.la57 ? "" : " with 4-level paging (use 5-level paging)") + (config.isa == .arm64 ? " with 48-bit VAs" : ""))
        }
        let tables = Self.bootTableEstimate(ram: memory.ramPages() << pageShift, config: config)
        guard tables <= Self.maxBootTables else {
            let noGB = config.isa == .x86_64 && !config.gbpages
            throw HostKernelError("booting RAM up to \(ByteSize.format(memory.endOfRAM)) needs about \(tables >> 8) MiB of page tables for the direct map"
                + (noGB ? " without gbpages" : config.linearMap == .pte && config.isa == .arm64 ? " mapped with 4K pages" : "")
                + " (\(tables) table pages); the model builds at most \(Self.maxBootTables >> 8) MiB at boot: "
                + (noGB ? "boot with gbpages, or less memory" : "boot with less memory"))
        }
        // x86 maps the ISA range whatever it holds; arm64 maps memblock's RAM only.
        var ranges: [Range<UInt64>] = config.isa == .x86_64 ? [0..<Self.isaEnd] : []
        for r in memory.ram where config.isa != .x86_64 {
            if let last = ranges.last, last.upperBound == r.lowerBound { ranges[ranges.count - 1] = last.lowerBound..<r.upperBound } else { ranges.append(r) }
        }
        for r in memory.ram where config.isa == .x86_64 {
            let start = max(r.lowerBound, Self.isaEnd)
            guard start < r.upperBound else { continue }
            if ranges[ranges.count - 1].upperBound == start {
                ranges[ranges.count - 1] = ranges[ranges.count - 1].lowerBound..<r.upperBound
            } else {
                ranges.append(start..<r.upperBound)
            }
        }
        self.mappedRanges = ranges
        // Room for one table per 2M region of RAM (what splitting all of it would take), at
        // most a million tables (4 GiB of address space), so dense tables never copy the array.
        if reserveTables && config.isa != .s390x { pageTable.reserveCapacity(tables: min(Int(memory.endOfRAM >> 21) + 64, 1 << 20)) }
        switch config.isa {
        case .x86_64: bootDirectMap()
        case .arm64: bootLinearMap()
        case .s390x: break
        }
        if let image = config.image, config.isa == .x86_64 { try markRodataRO(image) }
        mte.form = config.mteSync
        mte.restoreSteps = config.mteRestoreSteps
    }

    /// mark_rodata_ro as it reaches the image's alias in the direct map: set_memory_ro of
    /// [_text, __end_rodata_hpage_align) changes the alias too (cpa_process_alias), its NX
    /// does not ("Directmap always has NX set"), and free_kernel_image_pages makes the
    /// text/rodata and rodata/data gaps writable again, alias included. The high mapping
    /// itself is not in the model's table; ptdump draws it from the image.
    /// Linux arch/x86/mm/init_64.c mark_rodata_ro; arch/x86/mm/pat/set_memory.c.
    mutating func markRodataRO(_ image: KernelImage) throws(HostKernelError) {
        let first = image.pa(image.text), last = image.pa(image.brkEnd)
        guard mappedRanges.contains(where: { $0.lowerBound <= first && last <= $0.upperBound }) else {
            throw HostKernelError("the kernel image at physical [\(hex(first)), \(hex(last))) is not in RAM the direct map maps")
        }
        func pfnAlign(_ v: UInt64) -> UInt64 { (v + pageBytes - 1) & ~(pageBytes - 1) }
        func alias(_ v: UInt64) -> UInt64 { layout.pageOffset + image.pa(v) }
        func pages(_ a: UInt64, _ b: UInt64) -> Int { Int((b - a) >> pageShift) }
        _ = try setMemoryRO(alias(image.text), numpages: pages(image.text, image.endRodataHpageAlign))
        for (from, to) in [(pfnAlign(image.etext), image.startRodata), (pfnAlign(image.endRodata), image.sdata)] where from < to {
            _ = try setMemoryRW(alias(from), numpages: pages(from, to))
        }
    }

    /// The most page-table pages a boot may build (1 GiB of tables): past it the run is
    /// refused before it starts, with the estimate (docs/limits.md).
    public static let maxBootTables = 1 << 18

    /// About how many table pages the boot mapping of `ram` bytes builds: one table per
    /// 512 leaves of the largest size the configuration maps with (2M leaves without
    /// gbpages, 1G with; arm64 4K pages with `pte`), plus one per level above.
    public static func bootTableEstimate(ram: UInt64, config: KernelConfig) -> Int {
        let leaf: UInt64
        switch config.isa {
        case .x86_64: leaf = config.gbpages ? PageSize.size1G.bytes : PageSize.size2M.bytes
        case .arm64: leaf = config.linearMap == .pte ? pageBytes : PageSize.size1G.bytes
        case .s390x: return 0
        }
        let tables = (ram / leaf + 511) / 512
        return Int(tables + (tables + 511) / 512 + 2)
    }

    /// End of the ISA range, always mapped. Linux ISA_END_ADDRESS.
    public static let isaEnd: UInt64 = 0x10_0000

    /// PAGE_KERNEL for this machine (arm64: PROT_NORMAL, valid, writable, PXN|UXN, not nG,
    /// MT_NORMAL; arch/arm64/include/asm/pgtable-prot.h).
    public var pageKernel: Attributes {
        config.isa == .arm64 ? [.present, .writable, .noExecute, .global] : .pageKernel(encrypted: config.memEncrypt && !config.ccSharedBit)
    }

    /// The direct-map address of a physical address (__va; arm64 __phys_to_virt subtracts
    /// PHYS_OFFSET).
    @inlinable public func va(_ pa: PhysAddr) -> VirtAddr { VirtAddr(layout.pageOffset &+ (pa.rawValue &- physOffset)) }
    /// The physical address of a direct-map address (__pa).
    @inlinable public func pa(_ va: VirtAddr) -> PhysAddr { PhysAddr(va.rawValue &- layout.pageOffset &+ physOffset) }

    /// First address past the direct map (PAGE_OFFSET + max_pfn_mapped << PAGE_SHIFT).
    @inlinable public var directMapEnd: UInt64 { va(PhysAddr(mappedRanges.last?.upperBound ?? physOffset)).rawValue }

    /// Whether `pa` has a direct-map address at all (arm64: at or above PHYS_OFFSET).
    public func hasDirectMapAddress(_ pa: UInt64) -> Bool { pa >= physOffset && pa - physOffset < layout.directMapMax }

    /// Whether `va` lies in the direct map's window.
    @inlinable public func isDirectMap(_ va: UInt64) -> Bool { va >= layout.pageOffset && va < directMapEnd }
    /// Whether `va` lies in the vmalloc area.
    @inlinable public func isVmalloc(_ va: UInt64) -> Bool { va >= layout.vmallocStart && va < layout.vmallocEnd }

    /// Whether a physical frame is covered by the direct map. Linux pfn_range_is_mapped.
    public func isMapped(_ pa: UInt64) -> Bool {
        mappedRanges.contains { $0.contains(pa) }
    }

    /// The direct-map leaf that holds a physical address, if any. Inlined: called out of
    /// line from a mutating method, Swift would copy the whole kernel to pass `self`.
    @inlinable @inline(__always) public func directMapLeaf(_ pa: PhysAddr) -> Leaf? { pageTable.lookup(va(pa)) }
}

/// The encryption-status hooks around a C-bit change. Linux x86_platform.guest
/// enc_status_change_prepare / enc_status_change_finish.
public enum EncryptionHook: String, Sendable, CaseIterable {
    case prepare
    case finish
}

/// One vmap()ed area: contiguous physical pages mapped at a vmalloc address with 4K PTEs.
public struct VmapArea: Hashable, Sendable {
    public let virt: VirtAddr
    public let phys: PhysAddr
    public let pages: Int
}

extension Kernel {
    /// The metrics of a host kernel of `isa`: the direct map (as /proc/meminfo counts it on
    /// x86; the linear map's leaves on arm64), its page-table pages, what change_page_attr
    /// did, and how host accesses faulted.
    public static func metrics(_ isa: KernelISA) -> [Metric<Kernel>] {
        switch isa {
        case .x86_64: x86Metrics
        case .arm64: arm64Metrics
        case .s390x: faultMetrics  // no direct-map tables or change_page_attr in the s390x model
        }
    }

    static let x86Metrics = base + CPAStats.metrics(.x86_64).map { $0.pulled { $0.stats } } + faultMetrics
    static let arm64Metrics = base + CPAStats.metrics(.arm64).map { $0.pulled { $0.stats } } + faultMetrics
    static let faultMetrics = HostFaultStats.metrics.map { $0.pulled { (k: Kernel) in k.faults } }

    /// The user-mapping code's counters (docs/user-mappings.md), which an architecture with
    /// user processes reports.
    public static let userMetrics: [Metric<Kernel>] = [
        Metric("user_pages", "pages", "frames user memory holds (anonymous, page cache, TTM system pages)") { $0.user.allocatedPages },
        Metric("user_faults", "faults", "user page faults handled (handle_mm_fault)") { $0.user.stats.faults },
        Metric("user_cow_copies", "pages", "copy-on-write copies (wp_page_copy, do_cow_fault)") { $0.user.stats.cowCopies },
        Metric("user_thp_faults", "faults", "anonymous faults that mapped a 2M THP") { $0.user.stats.thpFaults },
        Metric("user_pmd_splits", "splits", "huge PMDs split (__split_huge_pmd_locked), zapped ones included") { $0.user.stats.pmdSplits },
        Metric("user_pmd_zaps", "splits", "huge PMD splits that zapped a non-anonymous entry to refault") { $0.user.stats.pmdZaps },
        Metric("gup_pages", "pages", "pages get_user_pages/pin_user_pages took") { $0.user.stats.gupPages },
        Metric("gup_refused", "calls", "GUP calls that stopped on an error") { $0.user.stats.gupRefused },
        Metric("stray_cpu_accesses", "accesses", "CPU accesses (kmap, a process's own) to a page the hardware keeps from the host") { $0.user.stats.strayAccesses },
        Metric("protected_device_accesses", "accesses", "device accesses (DMA, writeback I/O) to a page the hardware keeps from the host") { $0.user.stats.deviceAccesses },
        Metric("writeback_vm_bug_on", "folios", "writebacks whose arch_make_folio_accessible failed (VM_BUG_ON_FOLIO)") { $0.user.stats.writebackBugs },
        Metric("user_enc_mismatches", "entries", "present user entries whose encryption bit disagrees with the page they map") { UInt64($0.userEncryptionMismatches().count) },
    ]

    static let base: [Metric<Kernel>] = [
        Metric("directmap_4k_kb", "KiB", "DirectMap4k in /proc/meminfo") { UInt64($0.directPagesCount.size4K) << 2 },
        Metric("directmap_2m_kb", "KiB", "DirectMap2M in /proc/meminfo") { UInt64($0.directPagesCount.size2M) << 11 },
        Metric("directmap_1g_kb", "KiB", "DirectMap1G in /proc/meminfo") { UInt64($0.directPagesCount.size1G) << 20 },
        Metric("pgtable_pages", "pages", "page-table pages of init_mm (direct map and vmalloc)") { UInt64($0.pageTable.tablePages) },
    ]
}
