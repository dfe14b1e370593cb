import Hardware
import PageTables

/// Which architecture's kernel code runs: its page-table format, layout, boot mapping and
/// set_memory_* (Linux arch/x86 or arch/arm64).
public enum KernelISA: String, Hashable, Sendable {
    case x86_64 = "x86-64"
    case arm64
    /// s390x (z/Architecture): the kernel's identity mapping is taken as mapping all RAM
    /// and its DAT tables are not modelled (docs/s390-pv.md); what the model keeps of this
    /// kernel is its user mappings, its folios and its program-check handlers.
    case s390x
}

/// How the arm64 kernel maps its linear map at boot (policy slot `host.arm64-linear-map`).
/// Linux arch/arm64/mm/mmu.c map_mem.
public enum Arm64LinearMap: String, CaseIterable, Hashable, Sendable {
    /// Block mappings (1G, 2M, contiguous runs): can_set_direct_map() is false (no
    /// rodata=full, debug_pagealloc or KFENCE), so set_direct_map_* do nothing.
    case blocks
    /// Page granularity (NO_BLOCK_MAPPINGS | NO_CONT_MAPPINGS) because can_set_direct_map()
    /// holds: rodata=full (the RODATA_FULL_DEFAULT_ENABLED default), debug_pagealloc, KFENCE,
    /// or running in a realm (6.13+).
    case pte
    /// Linux 6.18 on BBML2_NOABORT CPUs: blocks although can_set_direct_map() holds,
    /// split on demand by split_kernel_leaf_mapping without break-before-make.
    case bbml2Split = "bbml2-split"

    public var summary: String {
        switch self {
        case .blocks: "block mappings; can_set_direct_map() is false, so set_direct_map_* do nothing"
        case .pte: "4K pages only, as rodata=full (the default), debug_pagealloc, KFENCE or a realm make it"
        case .bbml2Split: "Linux 6.18 with BBML2_NOABORT: blocks, split on demand without break-before-make"
        }
    }

    /// can_set_direct_map(): rodata_full or the like holds.
    public var canSetDirectMap: Bool { self != .blocks }
}

/// How the host kernel is built and booted: the switches that change its memory layout.
public struct KernelConfig: Hashable, Sendable {
    /// The kernel's architecture.
    public var isa = KernelISA.x86_64
    /// arm64: how the linear map is mapped.
    public var linearMap = Arm64LinearMap.blocks
    /// arm64: the CPUs implement MTE (system_supports_mte()), `machine.mte`.
    public var mte = false
    /// arm64 with MTE: the form of mte_sync_tags (policy slot `host.mte-sync`).
    public var mteSync = MTESyncForm.v6_1Lock
    /// The actions of one tag restore, a power of two from 1 to 256 (`machine.mte-restore-steps`).
    public var mteRestoreSteps = 2
    /// 1G direct-map leaves (X86_FEATURE_GBPAGES and no `nogbpages`). Linux
    /// arch/x86/mm/init.c probe_page_size_mask.
    public var gbpages = true
    /// 5-level paging (LA57): PAGE_OFFSET 0xff11000000000000.
    public var la57 = false
    /// Host memory encryption (SME): PAGE_KERNEL carries the C-bit and
    /// cc_platform_has(CC_ATTR_MEM_ENCRYPT) holds, so set_memory_{en,de}crypted act.
    /// Linux arch/x86/mm/pat/set_memory.c __set_memory_enc_dec.
    public var memEncrypt = true
    /// X86_FEATURE_SME_COHERENT: no cache flush before an encryption change.
    /// Linux arch/x86/mm/mem_encrypt_amd.c amd_enc_cache_flush_required.
    public var smeCoherent = true
    /// CPUs (nr_cpu_ids): each has its own TLB, and the kernel's flushes reach all of them.
    public var cpus = 1
    /// tlb_single_page_flush_ceiling, arch/x86/mm/tlb.c (default 33).
    public var tlbSinglePageFlushCeiling = 33
    /// When change_page_attr re-merges split tables.
    public var collapse = CollapsePolicy.rox
    /// What the host does to its direct map as pages enter and leave the RMP (SEV-SNP).
    public var directMapPolicy = DirectMapPolicyKind.splitOnAssign
    /// The user-mapping code's policies (_PAGE_CHG_MASK, TTM's inserts, where inaccessible
    /// memory is refused, CONFIG_DEBUG_VM).
    public var user = UserMMConfig()
    /// KVM on an SEV host: WBINVD when a guest's memory is reclaimed from the VMM
    /// (`kvm.sev-reclaim-flush`, sev_guest_memory_reclaimed, 6.0 on).
    public var sevReclaimFlush = true
    /// X86_BUG_TDX_PW_MCE (Sapphire and Emerald Rapids): a partial write to TDX private
    /// memory poisons the line (`machine.tdx-erratum`). arch/x86/kernel/cpu/intel.c.
    public var tdxErratum = false
    /// How the TDX module gets its PAMT (`host.tdx-pamt`).
    public var tdxPAMT = TDXPAMTMode.static
    /// cc_mask is a TDX guest's shared bit: private is the default (no bit in PAGE_KERNEL),
    /// pgprot_decrypted sets the bit and pgprot_encrypted clears it. arch/x86/coco/core.c
    /// cc_mkdec/cc_mkenc for CC_VENDOR_INTEL.
    public var ccSharedBit = false
    /// How a guest kernel accepts the memory its firmware left unaccepted (`guest.accept-memory`).
    public var acceptMemory = AcceptMemoryMode.lazy
    /// KVM maps TD private memory at 2M where it can (`kvm.tdx-hugepages`, the unmerged
    /// TDX huge-page series); mainline maps 4K only.
    public var tdxHugepages = false
    /// `kvm.cca-rtt-fold`: KVM's realm backend folds RTTs after unmapping (the KVM CCA host
    /// series' realm_fold_rtt_level), or never.
    public var ccaFoldRTTs = true
    /// A realm guest's kernel: `guest.cca-enc-order`, `guest.cca-vmalloc`, and
    /// `guest.dcache-word-access` (CONFIG_DCACHE_WORD_ACCESS, which arm64 always selects:
    /// load_unaligned_zeropad in the dcache's name hashing and compares).
    public var realmEncOrder = RealmEncOrder.invalidateFirst
    public var realmVmalloc = RealmVmallocPolicy.reject
    public var dcacheWordAccess = true
    /// When the host resets a page a TD released before reusing it (`host.tdx-page-reset`).
    public var tdxPageReset = TDXPageReset.always
    /// x86-64: the kernel image, whose mark_rodata_ro reaches its alias in the direct map
    /// at boot; nil boots the direct map alone (scenarios, whose figures are the direct map's).
    public var image: KernelImage?

    public init(gbpages: Bool = true, la57: Bool = false, memEncrypt: Bool = true, smeCoherent: Bool = true, cpus: Int = 1) {
        self.cpus = cpus
        self.gbpages = gbpages
        self.la57 = la57
        self.memEncrypt = memEncrypt
        self.smeCoherent = smeCoherent
    }
}

/// How a guest kernel accepts the memory its firmware left unaccepted.
public enum AcceptMemoryMode: String, CaseIterable, Sendable {
    /// The page allocator accepts a MAX_ORDER block when it runs out of accepted memory.
    case lazy
    /// Everything is accepted at boot (the `accept_memory=eager` command line).
    case eager

    public var summary: String {
        switch self {
        case .lazy: "the page allocator accepts a MAX_ORDER block (4 MiB) when it needs memory (mm/page_alloc.c cond_accept_memory)"
        case .eager: "all of it accepted at boot, block by block (accept_memory=eager)"
        }
    }
}

/// When the host resets (MOVDIR64B with its own KeyID) a page a TD released, before reuse.
public enum TDXPageReset: String, CaseIterable, Sendable {
    /// Every page (Linux 6.16 tdx_clear_page).
    case always
    /// Only on CPUs with X86_BUG_TDX_PW_MCE (Linux 6.18 on): elsewhere a later host
    /// access cannot consume poison from the TD's lines.
    case erratumOnly = "erratum-only"

    public var summary: String {
        switch self {
        case .always: "every page a TD releases is reset before the host reuses it (6.16)"
        case .erratumOnly: "only on erratum CPUs (X86_BUG_TDX_PW_MCE; 6.18 on)"
        }
    }
}

/// Where the kernel puts its mappings. Linux Documentation/arch/x86/x86_64/mm.rst.
public struct KernelLayout: Hashable, Sendable {
    /// Start of the direct map (__PAGE_OFFSET_BASE_L4 / _L5, without KASLR).
    public let pageOffset: UInt64
    /// Bytes the direct map can span (64 TiB with 4 levels, 32 PiB with 5).
    public let directMapMax: UInt64
    /// VMALLOC_START.
    public let vmallocStart: UInt64
    /// VMALLOC_START + VMALLOC_SIZE (exclusive).
    public let vmallocEnd: UInt64
    /// VMEMMAP_START, the marker after the vmalloc area in ptdump.
    public let vmemmapStart: UInt64

    /// 4-level x86-64: direct map at 0xffff888000000000, vmalloc at 0xffffc90000000000 (32 TiB).
    public static let fourLevel = KernelLayout(
        pageOffset: 0xffff_8880_0000_0000, directMapMax: 64 << 40,
        vmallocStart: 0xffff_c900_0000_0000, vmallocEnd: 0xffff_c900_0000_0000 + (32 << 40),
        vmemmapStart: 0xffff_ea00_0000_0000)
    /// arm64 with a 4K granule and 48-bit VAs (Linux 6.9 and later): the linear map at
    /// PAGE_OFFSET 0xffff000000000000 up to PAGE_END (128 TiB), modules at PAGE_END, vmalloc
    /// from 0xffff800080000000 to VMEMMAP_START - 8M. arch/arm64/include/asm/memory.h.
    public static let arm64 = KernelLayout(
        pageOffset: 0xffff_0000_0000_0000, directMapMax: 1 << 47,
        vmallocStart: 0xffff_8000_8000_0000, vmallocEnd: 0xffff_fdff_bf80_0000,
        vmemmapStart: 0xffff_fdff_c000_0000)
    /// s390x: the identity mapping at __identity_base 0 (no CONFIG_RANDOMIZE_IDENTITY_BASE)
    /// over up to 2^53 bytes; vmalloc is not modelled on s390x (an empty range).
    /// arch/s390/boot/startup.c setup_kernel_memory_layout.
    public static let s390x = KernelLayout(pageOffset: 0, directMapMax: 1 << 53, vmallocStart: 0, vmallocEnd: 0, vmemmapStart: 0)
    /// 5-level x86-64: direct map at 0xff11000000000000, vmalloc at 0xffa0000000000000 (12800 TiB).
    public static let fiveLevel = KernelLayout(
        pageOffset: 0xff11_0000_0000_0000, directMapMax: 32 << 50,
        vmallocStart: 0xffa0_0000_0000_0000, vmallocEnd: 0xffa0_0000_0000_0000 + (12800 << 40),
        vmemmapStart: 0xffd4_0000_0000_0000)
}

/// When change_page_attr re-merges 512 entries into one large leaf (policy slot
/// `host.cpa-collapse`).
public enum CollapsePolicy: String, CaseIterable, Hashable, Sendable {
    /// Splits are one-way, as in Linux before the CPA_COLLAPSE series (and in mainline
    /// wherever no caller passes CPA_COLLAPSE). Linux arch/x86/mm/pat/set_memory.c.
    case never
    /// Only set_memory_rox passes CPA_COLLAPSE: "x86/mm/pat: restore large ROX pages after
    /// fragmentation" (Rapoport, execmem ROX series, 2025).
    case rox
    /// What-if: every flush tries to collapse, as if every caller passed CPA_COLLAPSE.
    case always

    public var summary: String {
        switch self {
        case .never: "splits are one-way (Linux before CPA_COLLAPSE)"
        case .rox: "only set_memory_rox re-merges (CPA_COLLAPSE, 2025)"
        case .always: "what-if: every change_page_attr flush tries to re-merge"
        }
    }
}
