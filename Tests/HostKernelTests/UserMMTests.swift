import Foundation
import Hardware
import PageTables
import Testing
@testable import HostKernel
import Expectations

/// User mappings: one test per rule, with exact entries (docs/user-mappings.md).
struct UserMMTests {
    static let rw = UserProt(read: true, write: true)
    static let ro = UserProt(read: true)

    /// A kernel's user MM over 1 GiB of RAM with one process.
    static func mm(memEncrypt: Bool = true, _ configure: (inout UserMMConfig) -> Void = { _ in }) -> UserMM {
        var m = UserMM(ram: [0..<(1 << 30)], memEncrypt: memEncrypt)
        configure(&m.config)
        m.addProcess("p")
        return m
    }

    static func mapped(_ r: MmapOutcome) -> UInt64 {
        guard case .mapped(let a) = r else { Issue.record("mmap failed: \(r)"); return 0 }
        return a
    }

    static func pte(_ m: UserMM, _ addr: UInt64) -> UInt64 {
        let e = m.processes[0].pageTable.entry(holding: VirtAddr(addr))
        return PgProt.x86PTE(e.entry, level: e.level)
    }

    // MARK: pgprot

    /// protection_map through vm_get_page_prot, every VM_READ/WRITE/EXEC/SHARED combination,
    /// as raw x86 bits (PFN 0), with the C-bit of an SME host (arch/x86/mm/pgprot.c).
    @Test func vmGetPageProtIsProtectionMapWithTheCBit() {
        let c: UInt64 = 1 << 47, nx: UInt64 = 1 << 63
        // PAGE_NONE A|G; PAGE_READONLY = PAGE_COPY P|U|A|NX; PAGE_SHARED P|RW|U|A|NX; _EXEC without NX.
        let table: [(VMFlags, UInt64)] = [
            ([], 0x120), ([.read], 0x25 | nx), ([.write], 0x25 | nx), ([.read, .write], 0x25 | nx),
            ([.exec], 0x25), ([.read, .exec], 0x25), ([.write, .exec], 0x25), ([.read, .write, .exec], 0x25),
            ([.shared], 0x120), ([.shared, .read], 0x25 | nx), ([.shared, .write], 0x27 | nx), ([.shared, .read, .write], 0x27 | nx),
            ([.shared, .exec], 0x25), ([.shared, .read, .exec], 0x25), ([.shared, .write, .exec], 0x27), ([.shared, .read, .write, .exec], 0x27),
        ]
        for (flags, bits) in table {
            let a = PgProt.vmGetPageProt(flags, memEncrypt: true)
            // PAGE_NONE is not present: its PFN field is inverted (L1TF), so compare the low and high bits only.
            let raw = PgProt.x86PTE(.leaf(PFN(0), a), level: 1)
            expectEqual(raw & (0xfff | nx | c), bits | c, "\(flags)")
            expectEqual(PgProt.vmGetPageProt(flags, memEncrypt: false).contains(.encrypted), false)
        }
    }

    /// pte_modify keeps the PFN, memory type, dirty, special and, by the mask's form, the
    /// encryption bits; present, RW, USER, NX and PROTNONE come from the new prot.
    @Test func pteModifyKeepsTheEncryptionBitOnlyWhereTheMaskHasIt() {
        let old: Attributes = Attributes([.present, .writable, .user, .noExecute, .special, .dirty, .shared]).with(memoryType: .writeCombining)
        let newprot: Attributes = [.present, .user, .encrypted]  // PAGE_READONLY_EXEC with the C-bit
        let none = PgProt.pteModify(old, newprot, mask: .none)
        expectEqual(none, Attributes([.present, .user, .encrypted, .special, .dirty]).with(memoryType: .writeCombining))
        let enc = PgProt.pteModify(old, newprot, mask: .enc)
        expectEqual(enc, Attributes([.present, .user, .special, .dirty]).with(memoryType: .writeCombining))
        let cc = PgProt.pteModify(old, newprot, mask: .cc)
        expectEqual(cc, Attributes([.present, .user, .special, .dirty, .shared]).with(memoryType: .writeCombining))
        // The C-bit set in the old entry survives enc and cc, not none with a clear new prot.
        expectEqual(PgProt.pteModify([.present, .encrypted], [.present], mask: .none), [.present])
        expectEqual(PgProt.pteModify([.present, .encrypted], [.present], mask: .enc), [.present, .encrypted])
    }

    /// pgprot_modify before 5.7 ORs all of the new prot in; from 5.7 the masked bits are the old's.
    @Test func pgprotModifyBeforeAndAfterTheFix() {
        let decrypted: Attributes = [.present, .user, .noExecute]
        let def = PgProt.vmGetPageProt([.read], memEncrypt: true)
        expectTrue(PgProt.pgprotModify(decrypted, def, mask: .none).contains(.encrypted))
        expectTrue(!PgProt.pgprotModify(decrypted, def, mask: .enc).contains(.encrypted))
        expectTrue(!PgProt.pgprotModify(decrypted, def, mask: .cc).contains(.encrypted))
    }

    // MARK: mmap, munmap, mprotect

    @Test func mmapPlacesTopDownAndChecksItsArguments() {
        var m = Self.mm()
        expectEqual(m.mmap(process: 0, MmapRequest(len: 8192, prot: Self.rw)), .mapped(0x7fff_f7ff_d000))
        expectEqual(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw)), .mapped(0x7fff_f7ff_c000))
        // A free hint is taken; an anonymous multiple of 2M is PMD-aligned.
        expectEqual(m.mmap(process: 0, MmapRequest(addr: 0x1000_0000, len: 4096, prot: Self.rw)), .mapped(0x1000_0000))
        expectEqual(m.mmap(process: 0, MmapRequest(len: 2 << 20, prot: Self.rw)), .mapped(0x7fff_f7c0_0000))
        expectEqual(m.mmap(process: 0, MmapRequest(len: 0, prot: Self.rw)), .error(.EINVAL))
        expectEqual(m.mmap(process: 0, MmapRequest(addr: 0x1000_0800, len: 4096, prot: Self.rw, fixed: .fixed)), .error(.EINVAL))
        expectEqual(m.mmap(process: 0, MmapRequest(addr: 0x1000, len: 4096, prot: Self.rw, fixed: .fixed)), .error(.EPERM))
        expectEqual(m.mmap(process: 0, MmapRequest(addr: UserMM.taskSize, len: 4096, prot: Self.rw, fixed: .fixed)), .error(.ENOMEM))
        expectEqual(m.mmap(process: 0, MmapRequest(len: UserMM.taskSize + 4096, prot: Self.rw)), .error(.ENOMEM))
        expectEqual(m.mmap(process: 0, MmapRequest(addr: 0x1000_0000, len: 4096, prot: Self.rw, fixed: .noreplace)), .error(.EEXIST))
        // MAP_FIXED replaces: the old page is freed.
        _ = m.handleFault(process: 0, addr: 0x1000_0000, write: true)
        expectEqual(m.allocatedPages, 1)
        expectEqual(m.mmap(process: 0, MmapRequest(addr: 0x1000_0000, len: 4096, prot: Self.ro, fixed: .fixed)), .mapped(0x1000_0000))
        expectEqual(m.allocatedPages, 0)
        expectEqual(m.processes[0].vmas.count, 4)
    }

    @Test func munmapSplitsAndChecks() {
        var m = Self.mm()
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 3 * 4096, prot: Self.rw)))
        expectEqual(m.munmap(process: 0, addr: a + 4096, len: 4096), .ok)
        expectEqual(m.processes[0].vmas.map { [$0.start, $0.end] }, [[a, a + 4096], [a + 8192, a + 12288]])
        expectEqual(m.processes[0].vmas[1].pgoff, 2)
        expectEqual(m.munmap(process: 0, addr: a + 4096, len: 4096), .ok)  // nothing there
        expectEqual(m.munmap(process: 0, addr: a + 1, len: 4096), .error(.EINVAL))
        expectEqual(m.munmap(process: 0, addr: a, len: 0), .error(.EINVAL))
        expectEqual(m.munmap(process: 0, addr: UserMM.taskSize, len: 8192), .error(.EINVAL))
    }

    /// do_mprotect_pkey walks VMA by VMA: a hole is -ENOMEM after the VMAs before it changed.
    @Test func mprotectStopsAtAHoleWithoutRollingBack() {
        var m = Self.mm()
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(addr: 0x1000_0000, len: 4096, prot: Self.rw, fixed: .fixed)))
        _ = m.mmap(process: 0, MmapRequest(addr: 0x1000_2000, len: 4096, prot: Self.rw, fixed: .fixed))
        expectEqual(m.mprotect(process: 0, addr: a, len: 3 * 4096, prot: Self.ro), .error(.ENOMEM))
        expectEqual(m.processes[0].vmas[0].flags.contains(.write), false)
        expectTrue(m.processes[0].vmas[1].flags.contains(.write))
        expectEqual(m.mprotect(process: 0, addr: 0x2000_0000, len: 4096, prot: Self.ro), .error(.ENOMEM))
        expectEqual(m.mprotect(process: 0, addr: a + 1, len: 4096, prot: Self.ro), .error(.EINVAL))
        expectEqual(m.mprotect(process: 0, addr: a, len: 0, prot: Self.ro), .ok)
    }

    /// mprotect on an anonymous page: PROT_READ drops RW; PROT_READ|PROT_WRITE gives it back
    /// to the exclusive, dirty page (can_change_pte_writable); the C-bit and dirty stay.
    @Test func mprotectRewritesEntriesWithPteModify() {
        var m = Self.mm()
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw)))
        expectEqual(m.handleFault(process: 0, addr: a, write: true), .handled)
        let pfn = m.mappedFrame(process: 0, addr: a)!.pfn
        expectEqual(Self.pte(m, a), 0x8000_8000_0000_0067 | pfn << 12)
        expectEqual(m.mprotect(process: 0, addr: a, len: 4096, prot: Self.ro), .ok)
        expectEqual(Self.pte(m, a), 0x8000_8000_0000_0065 | pfn << 12)
        expectEqual(m.mprotect(process: 0, addr: a, len: 4096, prot: Self.rw), .ok)
        expectEqual(Self.pte(m, a), 0x8000_8000_0000_0067 | pfn << 12)
        // PROT_NONE: not present, PROTNONE (G), the PFN inverted.
        expectEqual(m.mprotect(process: 0, addr: a, len: 4096, prot: UserProt()), .ok)
        let none = Self.pte(m, a)
        expectEqual(none & 0xfff, 0x160)
        expectNotEqual(none & (1 << 47), 0)
        expectEqual(m.handleFault(process: 0, addr: a, write: false), .sigsegv)
    }

    // MARK: faults

    @Test func anonymousReadMapsTheZeroPageAndWriteCopiesIt() {
        var m = Self.mm()
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw)))
        expectEqual(m.handleFault(process: 0, addr: a, write: false), .handled)
        let zero = m.zeroPFN!
        expectEqual(Self.pte(m, a), 0x8000_8000_0000_0225 | zero << 12)  // special, read-only, not dirty
        expectEqual(m.handleFault(process: 0, addr: a, write: true), .handled)
        let pfn = m.mappedFrame(process: 0, addr: a)!.pfn
        expectNotEqual(pfn, zero)
        expectEqual(Self.pte(m, a), 0x8000_8000_0000_0067 | pfn << 12)
        expectEqual(m.stats.cowCopies, 1)
        expectEqual(m.folio(pfn), Folio(order: 0, refcount: 1, mapcount: 1, pincount: 0, flags: [.anon, .anonExclusive]))
        expectEqual(m.handleFault(process: 0, addr: a + 4096, write: false), .sigsegv)
    }

    /// After fork both share the page read-only; the child's write copies, the parent's then reuses.
    @Test func forkSharesAnonymousPagesCopyOnWrite() {
        var m = Self.mm()
        m.addProcess("c")
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw)))
        _ = m.handleFault(process: 0, addr: a, write: true)
        let pfn = m.mappedFrame(process: 0, addr: a)!.pfn
        m.fork(process: 0, child: "c")
        let c = m.processIndex("c")!
        expectEqual(m.folio(pfn)!.mapcount, 2)
        expectEqual(m.folio(pfn)!.refcount, 2)
        expectTrue(!m.folio(pfn)!.flags.contains(.anonExclusive))
        expectEqual(Self.pte(m, a) & 2, 0)
        expectEqual(m.handleFault(process: c, addr: a, write: true), .handled)
        expectNotEqual(m.mappedFrame(process: c, addr: a)!.pfn, pfn)
        expectEqual(m.handleFault(process: 0, addr: a, write: true), .handled)
        expectEqual(m.mappedFrame(process: 0, addr: a)!.pfn, pfn)
        expectEqual(m.stats.cowCopies, 1)
    }

    /// A shared writable file mapping with dirty accounting maps read-only first
    /// (write-notify); the write fault makes it writable and dirties the folio. A private
    /// one copies on write.
    @Test func fileMappingsWriteNotifyAndCopyOnWrite() {
        var m = Self.mm()
        let s = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw, shared: true, backing: .file(name: "f"))))
        _ = m.handleFault(process: 0, addr: s, write: false)
        let pfn = m.mappedFrame(process: 0, addr: s)!.pfn
        expectEqual(Self.pte(m, s), 0x8000_8000_0000_0025 | pfn << 12)
        _ = m.handleFault(process: 0, addr: s, write: true)
        expectEqual(Self.pte(m, s), 0x8000_8000_0000_0067 | pfn << 12)
        expectEqual(m.folio(pfn)!.flags, [.pageCache, .dirty])
        expectEqual(m.folio(pfn)!.refcount, 2)
        let p = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw, backing: .file(name: "f"))))
        _ = m.handleFault(process: 0, addr: p, write: true)
        expectNotEqual(m.mappedFrame(process: 0, addr: p)!.pfn, pfn)
        expectEqual(m.stats.cowCopies, 1)
        expectEqual(m.folio(pfn)!.refcount, 2)  // the cache's and the shared mapping's
    }

    /// A write fault in a VM_HUGEPAGE anonymous VMA maps a 2M THP; its split rebuilds 512
    /// PTEs from vm_page_prot with write and dirty from the PMD; a read maps the huge zero
    /// folio, whose split gives 512 special zero-page PTEs.
    @Test func anonymousTHPAndItsSplit() {
        var m = Self.mm()
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4 << 20, prot: Self.rw, huge: true)))
        expectEqual(a & (2 << 20 - 1), 0)
        _ = m.handleFault(process: 0, addr: a + 0x1234, write: true)
        let head = m.mappedFrame(process: 0, addr: a)!.pfn
        expectEqual(head & 511, 0)
        expectEqual(Self.pte(m, a), 0x8000_8000_0000_00e7 | head << 12)
        m.splitHugePMD(0, a)
        for i in [0, 1, 511] as [UInt64] { #expect(Self.pte(m, a + i << 12) == 0x8000_8000_0000_0067 | (head + i) << 12) }
        expectEqual(m.folio(head)!.refcount, 512)
        expectEqual(m.folio(head)!.mapcount, 512)
        _ = m.handleFault(process: 0, addr: a + (2 << 20), write: false)
        let zero = m.hugeZeroPFN!
        expectEqual(Self.pte(m, a + (2 << 20)), 0x8000_8000_0000_02a5 | zero << 12)
        m.splitHugePMD(0, a + (2 << 20))
        expectEqual(Self.pte(m, a + (2 << 20) + 4096), 0x8000_8000_0000_0225 | m.zeroPFN! << 12)
        // munmap of the split THP's pages frees the folio once the last goes, and the PTE
        // table with it (free_pgtables): the same address gets a THP again.
        expectEqual(m.munmap(process: 0, addr: a, len: 4 << 20), .ok)
        expectEqual(m.folio(head), nil)
        expectEqual(m.processes[0].pageTable.descriptor(at: VirtAddr(a), level: 2)?.isNone, true)
        expectEqual(m.mmap(process: 0, MmapRequest(addr: a, len: 2 << 20, prot: Self.rw, fixed: .fixed, huge: true)), .mapped(a))
        _ = m.handleFault(process: 0, addr: a, write: true)
        expectEqual(m.processes[0].pageTable.lookup(VirtAddr(a))?.size, .size2M)
    }

    /// The split never copies the PMD's encryption or cache bits: a THP entry without the
    /// C-bit (which Linux never makes) still splits into C=1 PTEs from vm_page_prot.
    @Test func anonymousSplitTakesEncryptionFromVmPageProt() {
        var m = Self.mm()
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 2 << 20, prot: Self.rw, huge: true)))
        _ = m.handleFault(process: 0, addr: a, write: true)
        let head = m.mappedFrame(process: 0, addr: a)!.pfn
        m.setLeaf(0, a, head, .size2M, Attributes([.present, .writable, .user, .noExecute, .dirty]).with(memoryType: .uncached))
        m.splitHugePMD(0, a)
        expectEqual(Self.pte(m, a + 4096), 0x8000_8000_0000_0067 | (head + 1) << 12)
    }

    /// A VMA boundary across a THP splits it first under the old prot
    /// (vma_adjust_trans_huge): mprotect of the first 1M to PROT_EXEC leaves NX on the rest.
    @Test func mprotectOfHalfATHPSplitsItUnderTheOldProt() {
        var m = Self.mm()
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 2 << 20, prot: UserProt(read: true, write: true, exec: false), huge: true)))
        _ = m.handleFault(process: 0, addr: a, write: true)
        let head = m.mappedFrame(process: 0, addr: a)!.pfn
        expectEqual(m.mprotect(process: 0, addr: a, len: 1 << 20, prot: UserProt(read: true, exec: true)), .ok)
        expectEqual(Self.pte(m, a), 0x0000_8000_0000_0065 | head << 12)  // executable, read-only, still dirty
        expectEqual(Self.pte(m, a + (1 << 20)), 0x8000_8000_0000_0067 | (head + 256) << 12)
        expectEqual(m.processes[0].vmas.count, 2)
    }

    /// A non-anonymous huge entry is zapped by the split, not rebuilt.
    @Test func fileTHPSplitZaps() {
        var m = Self.mm()
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 2 << 20, prot: Self.rw, shared: true, backing: .file(name: "shm"), huge: true)))
        _ = m.handleFault(process: 0, addr: a, write: false)
        expectEqual(m.processes[0].pageTable.lookup(VirtAddr(a))!.size, .size2M)
        m.splitHugePMD(0, a)
        expectEqual(m.processes[0].pageTable.lookup(VirtAddr(a)), nil)
        expectEqual(m.stats.pmdZaps, 1)
    }

    // MARK: inserts

    /// vmf_insert_pfn_prot's BUG_ONs and checks, each (mm/memory.c).
    @Test func insertPFNProtRules() {
        var m = Self.mm()
        let anon = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw)))
        let io: UInt64 = 1 << 28  // a frame past RAM
        if case .bug(_, let cond) = m.insert(.pfnProt, process: 0, addr: anon, pfn: io, prot: [.present]) {
            expectEqual(cond, "!(vma->vm_flags & (VM_PFNMAP|VM_MIXEDMAP))")
        } else { Issue.record("no BUG_ON for an anonymous VMA") }
        // VFIO refuses a private BAR mapping; a private coherent-DMA mapping is a COW VM_PFNMAP.
        expectEqual(m.mmap(process: 0, MmapRequest(len: 8192, prot: Self.rw, backing: .pfnmap(pa: io << 12))), .error(.EINVAL))
        let cow = Self.mapped(m.mmap(process: 0, MmapRequest(len: 8192, prot: Self.rw, backing: .dmaCoherent(decrypted: false))))
        if case .bug(_, let cond) = m.insert(.pfnProt, process: 0, addr: cow + 4096, pfn: io, prot: [.present]) {
            expectEqual(cond, "(vma->vm_flags & VM_PFNMAP) && is_cow_mapping(vma->vm_flags)")
        } else { Issue.record("no BUG_ON for a COW PFNMAP") }
        let pfnmap = Self.mapped(m.mmap(process: 0, MmapRequest(len: 8192, prot: Self.rw, shared: true, backing: .pfnmap(pa: io << 12))))
        let dec: Attributes = [.present, .user, .noExecute]
        expectEqual(m.insert(.pfnProt, process: 0, addr: pfnmap, pfn: io, prot: dec), .nopage)
        expectEqual(Self.pte(m, pfnmap), 0x8000_0000_0000_0225 | io << 12)
        // An entry already there is left alone.
        expectEqual(m.insert(.pfnProt, process: 0, addr: pfnmap, pfn: io + 1, prot: [.present, .user, .encrypted]), .nopage)
        expectEqual(Self.pte(m, pfnmap), 0x8000_0000_0000_0225 | io << 12)
        expectEqual(m.insert(.pfnProt, process: 0, addr: 0x1000, pfn: io, prot: dec), .sigbus)
        // vmf_insert_mixed needs VM_MIXEDMAP (or the zero page).
        if case .bug(_, let cond) = m.insert(.mixed, process: 0, addr: pfnmap + 4096, pfn: io, prot: dec) {
            expectEqual(cond, "!vm_mixed_ok(vma, pfn)")
        } else { Issue.record("no BUG_ON for a mixed insert into a PFNMAP") }
    }

    @Test func insertPFNIntoMixedmapRefusesAStructPage() {
        var m = Self.mm { $0.ttmInsert = .vmaCopy }
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw, shared: true, backing: .ttm(vram: 1))))
        expectTrue(m.processes[0].vmas[0].flags.contains(.mixedmap))
        if case .bug(_, let cond) = m.insert(.pfn, process: 0, addr: a, pfn: 5, prot: [.present]) {
            expectEqual(cond, "(vma->vm_flags & VM_MIXEDMAP) && pfn_valid(pfn)")
        } else { Issue.record("no BUG_ON") }
        expectEqual(m.insert(.mixedProt, process: 0, addr: a, pfn: 5, prot: [.present, .user]), .nopage)
        expectEqual(Self.pte(m, a), 0x225 | 5 << 12)
    }

    // MARK: GUP

    /// check_vma_flags and follow_page_pte: VM_IO|VM_PFNMAP and a write to a read-only VMA
    /// are -EFAULT, a special entry in a VM_MIXEDMAP VMA -EEXIST, no VMA -EFAULT; FOLL_PIN
    /// adds GUP_PIN_COUNTING_BIAS; FOLL_LONGTERM needs FOLL_PIN.
    @Test func gupRules() {
        var m = Self.mm { $0.ttmInsert = .vmaCopy }
        var acc = AllAccessible()
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 8192, prot: Self.rw)))
        expectEqual(m.getUserPages(process: 0, addr: a, pages: 1, flags: GUPFlags(write: true, pin: true), &acc), .pages(1, firstPFN: m.mappedFrame(process: 0, addr: a)?.pfn ?? 0, pinned: true))
        let pfn = m.mappedFrame(process: 0, addr: a)!.pfn
        expectEqual(m.folio(pfn)!.refcount, 1 + 1024)
        expectTrue(m.folio(pfn)!.maybeDMAPinned)
        expectEqual(m.getUserPages(process: 0, addr: a, pages: 1, flags: GUPFlags(), &acc), .pages(1, firstPFN: pfn, pinned: false))
        expectEqual(m.folio(pfn)!.refcount, 1026)
        expectEqual(m.unpinUserPage(pfn: pfn), .ok)
        expectEqual(m.putPage(pfn: pfn), .ok)
        expectEqual(m.folio(pfn)!.refcount, 1)
        // Only references GUP took can be dropped: the mapping's is not put_page's.
        expectEqual(m.unpinUserPage(pfn: pfn), .error(.EINVAL))
        expectEqual(m.putPage(pfn: pfn), .error(.EINVAL))
        expectEqual(m.getUserPages(process: 0, addr: 0x1000, pages: 1, flags: GUPFlags(), &acc), .error(.EFAULT))
        expectEqual(m.getUserPages(process: 0, addr: a, pages: 1, flags: GUPFlags(longterm: true), &acc), .error(.EINVAL))
        // Two pages, the second past the VMA: one taken.
        expectTrue(m.getUserPages(process: 0, addr: a + 4096, pages: 2, flags: GUPFlags(), &acc).description.hasPrefix("got 1 page"))
        let r = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.ro)))
        expectEqual(m.getUserPages(process: 0, addr: r, pages: 1, flags: GUPFlags(write: true), &acc), .error(.EFAULT))
        let io = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw, shared: true, backing: .pfnmap(pa: 1 << 40))))
        expectEqual(m.getUserPages(process: 0, addr: io, pages: 1, flags: GUPFlags(), &acc), .error(.EFAULT))
        // A TTM BO of ≤5.5 is VM_MIXEDMAP|VM_IO: check_vma_flags refuses it too.
        let bo = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw, shared: true, backing: .ttm(vram: 0))))
        expectEqual(m.getUserPages(process: 0, addr: bo, pages: 1, flags: GUPFlags(), &acc), .error(.EFAULT))
    }

    /// FOLL_WRITE on a page shared after fork breaks COW first; a THP pin counts in _pincount.
    @Test func gupWriteBreaksCOWAndPinsLargeFolios() {
        var m = Self.mm()
        var acc = AllAccessible()
        m.addProcess("c")
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 2 << 20, prot: Self.rw, huge: true)))
        _ = m.handleFault(process: 0, addr: a, write: true)
        let head = m.mappedFrame(process: 0, addr: a)!.pfn
        expectEqual(m.getUserPages(process: 0, addr: a + 4096, pages: 1, flags: GUPFlags(pin: true), &acc), .pages(1, firstPFN: head + 1, pinned: true))
        expectEqual(m.folio(head)!.pincount, 1)
        expectEqual(m.folio(head)!.refcount, 2)
        let b = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw)))
        _ = m.handleFault(process: 0, addr: b, write: true)
        let old = m.mappedFrame(process: 0, addr: b)!.pfn
        m.fork(process: 0, child: "c")
        guard case .pages(1, let got, _) = m.getUserPages(process: 0, addr: b, pages: 1, flags: GUPFlags(write: true), &acc) else {
            Issue.record("GUP failed"); return
        }
        expectNotEqual(got, old)
        expectEqual(m.stats.cowCopies, 1)
    }

    /// A platform that refuses: the pin fails and is undone; FOLL_GET and a huge leaf never
    /// call the hook; writeback's VM_BUG_ON is a BUG only with CONFIG_DEBUG_VM.
    struct Refusing: PageAccessibility {
        var calls = 0
        func isInaccessible(_ pfn: UInt64) -> Bool { true }
        mutating func makeAccessible(_ pfn: UInt64, folio: inout Folio) -> Errno? { calls += 1; return .EFAULT }
    }

    @Test func theAccessibilityHookWhereLinuxCallsIt() {
        var m = Self.mm()
        var acc = Refusing()
        let a = Self.mapped(m.mmap(process: 0, MmapRequest(len: 4096, prot: Self.rw)))
        _ = m.handleFault(process: 0, addr: a, write: true)
        let pfn = m.mappedFrame(process: 0, addr: a)!.pfn
        expectEqual(m.getUserPages(process: 0, addr: a, pages: 1, flags: GUPFlags(pin: true), &acc), .error(.EFAULT))
        expectEqual(m.folio(pfn)!.refcount, 1)
        expectEqual(acc.calls, 1)
        expectEqual(m.getUserPages(process: 0, addr: a, pages: 1, flags: GUPFlags(), &acc), .pages(1, firstPFN: pfn, pinned: false))
        expectEqual(acc.calls, 1)
        let h = Self.mapped(m.mmap(process: 0, MmapRequest(len: 2 << 20, prot: Self.rw, huge: true)))
        _ = m.handleFault(process: 0, addr: h, write: true)
        expectTrue(m.getUserPages(process: 0, addr: h, pages: 1, flags: GUPFlags(pin: true), &acc).description.hasPrefix("pinned 1 page"))
        expectEqual(acc.calls, 1)
        expectEqual(m.writeback(pfn: pfn, dirtyPTE: true, &acc), .bugIgnored(.EFAULT))
        expectEqual(m.writeback(pfn: pfn, dirtyPTE: false, &acc), .clean)
        m.config.debugVM = true
        expectEqual(m.writeback(pfn: pfn, dirtyPTE: true, &acc), .bug(.EFAULT))
        // Dave Hansen's design: vm_normal_page gives no page, every walker stops.
        m.config.inaccessibleCheck = .vmNormalPage
        expectEqual(m.getUserPages(process: 0, addr: a, pages: 1, flags: GUPFlags(), &acc), .error(.EEXIST))
        expectEqual(m.followPage(process: 0, addr: a, acc), nil)
        m.config.debugVM = false
        expectEqual(m.writeback(pfn: pfn, dirtyPTE: true, &acc), .started)
    }

    // MARK: the invariant

    /// A user PTE whose C-bit disagrees with its page is found: iomem mapped encrypted.
    @Test func encryptionMismatchIsFound() throws {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 1 << 30))
        k.user.addProcess("p")
        k.user.config.chgMask = .none
        let a = Self.mapped(k.userMmap(process: 0, MmapRequest(len: 8192, prot: Self.rw, shared: true, backing: .ttm(vram: 1))))
        _ = k.user.handleFault(process: 0, addr: a, write: false)
        try k.checkUserInvariants()
        expectEqual(k.user.mprotect(process: 0, addr: a, len: 8192, prot: Self.ro), .ok)
        expectEqual(k.userEncryptionMismatches().map(\.addr), [a])
        #expect(throws: InvariantViolation.self) { try k.checkUserInvariants() }
    }
}
