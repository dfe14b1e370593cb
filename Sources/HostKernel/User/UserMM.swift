import Hardware
import PageTables

/// How a kernel's user-mapping code is built: the policies of docs/user-mappings.md.
public struct UserMMConfig: Hashable, Sendable {
    /// _PAGE_CHG_MASK's encryption bit (`host.pgprot-chg-mask`, `guest.pgprot-chg-mask`).
    public var chgMask = PgprotChgMask.cc
    /// How TTM inserts a buffer object's pages (`host.ttm-insert`).
    public var ttmInsert = TTMInsert.protInsert
    /// Where memory the hardware protects is refused (`host.inaccessible-check`).
    public var inaccessibleCheck = InaccessibleCheck.gupAndWriteback
    /// CONFIG_DEBUG_VM: a VM_BUG_ON is a BUG (`host.debug-vm`).
    public var debugVM = false
    public init() {}
}

/// TTM's two ways of giving a buffer object's pages their own protection
/// (drivers/gpu/drm/ttm/ttm_bo_vm.c).
public enum TTMInsert: String, CaseIterable, Hashable, Sendable {
    /// Up to 5.5: VM_MIXEDMAP; the fault handler copies the VMA onto its stack, sets the
    /// copy's vm_page_prot to ttm_io_prot(vm_get_page_prot(vm_flags)) (decrypted for iomem)
    /// and calls vmf_insert_mixed/vmf_insert_pfn on the copy ("the vma hack" of seed 000).
    case vmaCopy = "vma-copy"
    /// From 5.6 (5379e4dd3220): the prot is ttm_io_prot(vma->vm_page_prot) and goes to
    /// vmf_insert_*_prot; from 5.14 (f91142c62161) the VMA is VM_PFNMAP and the insert
    /// vmf_insert_pfn_prot, as modelled. vm_page_prot is never written.
    case protInsert = "prot-insert"

    public var summary: String {
        switch self {
        case .vmaCopy: "Linux ≤5.5: a VM_MIXEDMAP VMA; each fault inserts through a stack copy of the VMA whose vm_page_prot is ttm_io_prot(vm_get_page_prot(vm_flags))"
        case .protInsert: "Linux 5.6 on: the prot is ttm_io_prot(vma->vm_page_prot), passed to vmf_insert_pfn_prot (a VM_PFNMAP VMA from 5.14)"
        }
    }
}

/// Where the kernel stops memory the hardware has made inaccessible to it (seed 002's
/// argument), as a policy (`host.inaccessible-check`).
public enum InaccessibleCheck: String, CaseIterable, Hashable, Sendable {
    /// arch_make_page_accessible() in GUP with FOLL_PIN (4K PTEs, slow and fast GUP) and at
    /// writeback start: f28d43636d6f (5.7), what Linux merged.
    case gupAndWriteback = "gup-and-writeback"
    /// Dave Hansen's proposal: vm_normal_page() returns no page for an inaccessible one, so
    /// every walker that turns a PTE into a page (GUP of both kinds, follow_page, the huge
    /// paths) stops there; writeback, which starts from the page, is not covered.
    case vmNormalPage = "vm-normal-page"
    /// Private memory never has a user mapping (the guest_memfd design Linux took for SNP and
    /// TDX, 6.8): the VMM's mapping faults with SIGBUS on a private page, and private folios
    /// are unevictable, so neither GUP nor writeback reaches them.
    case unmapped

    public var summary: String {
        switch self {
        case .gupAndWriteback: "arch_make_page_accessible in GUP (FOLL_PIN, 4K) and at writeback start, as merged in 5.7 (f28d43636d6f)"
        case .vmNormalPage: "Dave Hansen's view: vm_normal_page() refuses an inaccessible page, so every PTE-to-page walker stops there"
        case .unmapped: "private memory is never mapped in user space (guest_memfd, 6.8): SIGBUS on the VMM's access, never on the LRU"
        }
    }
}

/// A user mapping's backing: what its fault handler inserts.
public enum VMABacking: Hashable, Sendable {
    /// Private or shared anonymous memory (do_anonymous_page; THP where allowed).
    case anonymous
    /// A file's page cache (`UserMM.files`), through filemap_fault.
    case file(Int)
    /// A TTM buffer object (`UserMM.buffers`), through ttm_bo_vm_fault.
    case ttm(Int)
    /// The vDSO's vvar area (arch/x86/entry/vdso/vma.c vvar_fault).
    case vvar
    /// dma_direct_mmap of a coherent buffer: remap_pfn_range at mmap, no fault handler.
    case dmaCoherent(firstPFN: UInt64)
    /// A device's memory (a VFIO BAR): vmf_insert_pfn / vmf_insert_pfn_pmd.
    case pfnmap(firstPFN: UInt64)
    /// A VMM's mapping of a guest's RAM (a shared memfd whose pages are the guest's
    /// placement in host memory; `pages` long: past it a fault is SIGBUS).
    case guestMemory(guest: Int, firstPFN: UInt64, pages: UInt64)

    public var name: String {
        switch self {
        case .anonymous: "anon"
        case .file: "file"
        case .ttm: "ttm"
        case .vvar: "vvar"
        case .dmaCoherent: "dma-coherent"
        case .pfnmap: "pfnmap"
        case .guestMemory: "guest-memory"
        }
    }
}

/// struct vm_area_struct: [start, end), vm_flags, vm_page_prot, what backs it and at which
/// page offset. Linux include/linux/mm_types.h.
public struct VMA: Hashable, Sendable {
    public var start: UInt64
    public var end: UInt64
    public var flags: VMFlags
    /// vm_page_prot: the protection new PTEs get unless a driver inserts with its own.
    public var pageProt: Attributes
    public var backing: VMABacking
    /// vm_pgoff: the page of the backing object at `start`.
    public var pgoff: UInt64

    public var pages: UInt64 { (end - start) >> pageShift }
    /// The backing object's page at `addr`.
    public func index(_ addr: UInt64) -> UInt64 { pgoff + ((addr - start) >> pageShift) }
    public var isAnonymous: Bool { backing == .anonymous }
    /// is_cow_mapping: private and may be written.
    public var isCOW: Bool { !flags.contains(.shared) && flags.contains(.mayWrite) }
    /// vma_is_special_huge: a file-backed VM_PFNMAP/VM_MIXEDMAP VMA (TTM, VFIO BARs).
    public var isSpecialHuge: Bool { !isAnonymous && !flags.isDisjoint(with: [.pfnmap, .mixedmap]) }
}

/// A process's mm_struct: its user page table and VMAs, in address order.
public struct UserProcess: Sendable {
    public let name: String
    /// The user half of its page tables (x86-64 4-level), on the shared PageTable.
    public internal(set) var pageTable = PageTable(format: .x86_64)
    public internal(set) var vmas: [VMA] = []
    /// mm->context.protected_count (s390): protected guests this mm backs; while it is
    /// non-zero every cleared present PTE exports its page (ptep_get_and_clear).
    public internal(set) var protectedCount = 0
    /// mm->context.has_pgste (s390): the mm runs KVM guests; THP is off for it
    /// (mm->def_flags VM_NOHUGEPAGE, and MADV_HUGEPAGE ignored).
    public internal(set) var hasPgste = false

    /// The VMA holding `addr` (find_vma with the start check).
    public func vmaIndex(_ addr: UInt64) -> Int? {
        let i = insertionIndex(addr)
        return i < vmas.count && vmas[i].start <= addr ? i : nil
    }

    /// The first VMA that ends after `addr`, where an insertion at `addr` goes.
    func insertionIndex(_ addr: UInt64) -> Int {
        var lo = 0, hi = vmas.count
        while lo < hi {
            let mid = (lo + hi) / 2
            if vmas[mid].end <= addr { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Whether any VMA overlaps [start, end).
    func overlaps(_ start: UInt64, _ end: UInt64) -> Bool {
        let i = insertionIndex(start)
        return i < vmas.count && vmas[i].start < end
    }
}

/// A file in the page cache: its pages by index, shared by every process that maps it.
public struct PageCacheFile: Hashable, Sendable {
    public let name: String
    public internal(set) var pages: [UInt64: UInt64] = [:]
    /// Large folios (shmem/file THP) where the mapping allows.
    public let huge: Bool
    /// A file on a disk with writeback and dirty accounting (mapping_can_writeback); false
    /// for shmem, whose pages go to swap.
    public let writeback: Bool
}

/// A TTM buffer object: its first `vram` pages in device memory (an iomem aperture the CPU
/// reaches through the BAR), the rest in system pages (a TT placement) allocated when first
/// populated.
public struct TTMBuffer: Hashable, Sendable {
    public let pages: Int
    public let vram: Int
    /// The first frame of its VRAM in the BAR.
    public let vramPFN: UInt64
    /// Inserted with huge PMDs where aligned (Linux 5.8 to 5.14, ttm_bo_vm_insert_huge).
    public let huge: Bool
    public internal(set) var system: [UInt64] = []

    /// ttm_bo_io_mem_pfn / the TT page: the frame of page `i`.
    public func pfn(_ i: Int) -> UInt64? {
        i < vram ? vramPFN + UInt64(i) : (i - vram < system.count ? system[i - vram] : nil)
    }
    /// Whether page `i` is iomem (ttm_io_prot adds pgprot_decrypted for it).
    public func isIomem(_ i: Int) -> Bool { i < vram }
}

/// What the user-mapping code did, for metrics.
public struct UserMMStats: Hashable, Sendable {
    public var faults: UInt64 = 0
    public var cowCopies: UInt64 = 0
    public var thpFaults: UInt64 = 0
    public var pmdSplits: UInt64 = 0
    public var pmdZaps: UInt64 = 0
    public var gupPages: UInt64 = 0
    public var gupRefused: UInt64 = 0
    /// A CPU touched a page the hardware protects (kmap, a walker's page, a user access).
    public var strayAccesses: UInt64 = 0
    /// arch_make_page_accessible failed at writeback start (VM_BUG_ON_FOLIO).
    public var writebackBugs: UInt64 = 0
    /// Device accesses (DMA, writeback I/O) to a page the hardware protects.
    public var deviceAccesses: UInt64 = 0
    public var writebacks: UInt64 = 0
    public var swapOuts: UInt64 = 0
    public var swapIns: UInt64 = 0
    /// Large folios split into small ones (split_folio).
    public var folioSplits: UInt64 = 0
}

/// Every process of one kernel (the host's, or a guest's own), the page cache and TTM
/// objects they map, and the folios behind their pages.
public struct UserMM: Sendable {
    public var config = UserMMConfig()
    /// Whether vm_get_page_prot ORs in sme_me_mask (an SME host or an SEV guest).
    public let memEncrypt: Bool
    public internal(set) var processes: [UserProcess] = []
    /// Folios by their first frame.
    public internal(set) var folios: [UInt64: Folio] = [:]
    var allocator: UserPageAllocator
    public internal(set) var files: [PageCacheFile] = []
    public internal(set) var buffers: [TTMBuffer] = []
    public internal(set) var stats = UserMMStats()
    /// Whether the architecture takes the page events (s390); none are kept otherwise.
    public var recordsEvents = false
    /// Page events not yet delivered to the platform, in order.
    public internal(set) var events: [UserMMEvent] = []
    /// Swap slots in use (a slot is its index; freed slots are reused lowest first).
    public internal(set) var swapSlots: [Bool] = []
    /// How many of them are in use (faults look for swap entries only when some are).
    public internal(set) var swapSlotsInUse = 0
    /// The vvar data page and, in an SEV guest with kvmclock, the pvclock page.
    public internal(set) var vvarPFN: UInt64?
    public internal(set) var pvclockPFN: UInt64?
    /// empty_zero_page and the huge zero folio, allocated when first mapped.
    public internal(set) var zeroPFN: UInt64?
    public internal(set) var hugeZeroPFN: UInt64?
    /// Where device memory (TTM VRAM, BARs) starts: past RAM, at a 1 TiB boundary.
    public let iomemBase: UInt64
    /// RAM (bytes), for pfn_valid.
    let ram: [Range<UInt64>]

    /// TASK_SIZE_MAX with 4-level paging: (1 << 47) - PAGE_SIZE. arch/x86/include/asm/page_64_types.h.
    public static let taskSize: UInt64 = (1 << 47) - pageBytes
    /// mmap_base without randomisation: TASK_SIZE less the 128M minimum gap for the stack.
    /// arch/x86/mm/mmap.c mmap_base.
    public static let mmapBase: UInt64 = taskSize - (128 << 20)
    /// mmap_min_addr's default (CONFIG_DEFAULT_MMAP_MIN_ADDR 65536).
    public static let mmapMinAddr: UInt64 = 0x10000
    /// TTM_BO_VM_NUM_PREFAULT: pages a TTM fault inserts from the faulting one on.
    public static let ttmPrefault = 16

    public init(ram: [Range<UInt64>], memEncrypt: Bool) {
        self.memEncrypt = memEncrypt
        self.ram = ram
        allocator = UserPageAllocator(ram: ram)
        let end = ram.last?.upperBound ?? 0
        iomemBase = max(1 << 40, (end + (1 << 40) - 1) & ~((1 << 40) - 1))
    }

    /// Keeps user pages out of `range` (a guest's memory), before any allocation.
    public mutating func reserve(_ range: Range<UInt64>) { allocator.reserve(range) }

    public func processIndex(_ name: String) -> Int? { processes.firstIndex { $0.name == name } }

    /// A new process with an empty mm.
    public mutating func addProcess(_ name: String) { processes.append(UserProcess(name: name)) }

    /// Frames of user memory allocated now.
    public var allocatedPages: UInt64 { allocator.allocated }

    /// The folio a frame belongs to (its head frame), if it has one.
    public func folioHead(_ pfn: UInt64) -> UInt64? {
        if folios[pfn] != nil { return pfn }
        let head = pfn & ~511
        return folios[head]?.order == 9 ? head : nil
    }

    public func folio(_ pfn: UInt64) -> Folio? { folioHead(pfn).flatMap { folios[$0] } }

    mutating func newFolio(order: UInt8, flags: FolioFlags) -> UInt64? {
        guard let pfn = order == 0 ? allocator.alloc4K() : allocator.alloc2M() else { return nil }
        folios[pfn] = Folio(order: order, refcount: 1, mapcount: 0, pincount: 0, flags: flags)
        if recordsEvents { events.append(.allocated(pfn: pfn, order: order)) }
        return pfn
    }

    /// folio_put: drops one reference; the last frees an allocated folio.
    mutating func put(_ head: UInt64, by n: Int32 = 1) {
        guard var f = folios[head] else { return }
        f.refcount -= n
        if f.refcount <= 0 {
            folios[head] = nil
            allocator.free(head, order: f.order)
        } else {
            folios[head] = f
        }
    }

    mutating func zeroPage() -> UInt64 {
        if let z = zeroPFN { return z }
        let z = allocator.alloc4K() ?? 0
        zeroPFN = z
        return z
    }

    mutating func hugeZeroPage() -> UInt64? {
        if let z = hugeZeroPFN { return z }
        hugeZeroPFN = allocator.alloc2M()
        return hugeZeroPFN
    }
}
