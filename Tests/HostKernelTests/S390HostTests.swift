import Hardware
import PageTables
import Testing
@testable import HostKernel
import Expectations

/// The s390 host kernel's side of protected virtualization (Linux 6.18 arch/s390/kernel/uv.c,
/// arch/s390/mm/fault.c): make_hva_secure's every path, arch_make_folio_accessible, the
/// PGM 0x3d handler, the export on a protected mm's PTE clear, swap's round trip and the
/// large-folio split.
struct S390HostTests {
    /// A VMM with 4 MiB of anonymous memory (one 2M-aligned THP-able block) and one
    /// protected configuration over it.
    struct VMM {
        var mm = UserMMTests.mm(memEncrypt: false)
        var uv = Ultravisor()
        var base: UInt64 = 0
        var conf = 0

        init(huge: Bool = false, shared file: Bool = false) {
            mm.recordsEvents = true
            let req = file ? MmapRequest(len: 4 << 20, prot: UserMMTests.rw, shared: true, backing: .file(name: "ram"), huge: huge)
                : MmapRequest(len: 4 << 20, prot: UserMMTests.rw, huge: huge)
            base = UserMMTests.mapped(mm.mmap(process: 0, req))
            conf = uv.createConfiguration().1!
            mm.changeProtectedCount(process: 0, by: 1)
        }

        /// The VMM's write fault, its page events delivered as each step's are.
        mutating func fault(_ gfn: UInt64) {
            expectEqual(mm.handleFault(process: 0, addr: base + gfn << pageShift, write: true), .handled)
            deliver()
        }
        mutating func importPage(_ gfn: UInt64) -> ImportOutcome {
            mm.makeHVASecure(process: 0, hva: base + gfn << pageShift, guest: conf, gfn: gfn, miscFeature: true, &uv)
        }
        func pfn(_ gfn: UInt64) -> UInt64 { mm.mappedFrame(process: 0, addr: base + gfn << pageShift)!.pfn }
        mutating func deliver() { mm.takeS390Events(mm.takeEvents(), &uv) }
        /// The first 2M-aligned block of the memory, its first guest page, and (faulted in by
        /// a write) the head of the folio there.
        var block: UInt64 { (base + (2 << 20) - 1) & ~((2 << 20) - 1) }
        var blockGFN: UInt64 { (block - base) >> pageShift }
        /// Reclaim with the UV as the platform (its exports on the PTE clear, the hook).
        mutating func swapOut(_ gfn: UInt64) -> SwapOutOutcome {
            var acc = UVAccess(uv: uv)
            defer { uv = acc.uv }
            return mm.swapOut(process: 0, addr: base + gfn << pageShift, &acc)
        }
    }

    /// The UV as the user-mapping code sees it (what S390Platform does).
    struct UVAccess: PageAccessibility {
        var uv: Ultravisor
        func isInaccessible(_ pfn: UInt64) -> Bool { !uv.hostAccessible(pfn) }
        mutating func makeAccessible(_ pfn: UInt64, folio: inout Folio) -> Errno? {
            if case .failure(let e) = folio.makeAccessible(pfn: pfn, &uv) { return e }
            return nil
        }
        mutating func take(_ events: [UserMMEvent], _ mm: inout UserMM) { mm.takeS390Events(events, &uv) }
    }

    @Test func importSucceedsAndSetsPGArch1() {
        var v = VMM()
        v.fault(0)
        let r = v.importPage(0)
        expectEqual(r.errno, nil)
        expectEqual(r.description, "0: imported (UVC_CMD_CONV_TO_SEC_STOR cc 0 (UVC_CC_OK) rc 0x0001 (UVC_RC_EXECUTED))")
        expectTrue(v.uv.isSecure(v.pfn(0)))
        expectTrue(v.mm.folio(v.pfn(0))!.flags.contains(.arch1))
    }

    /// Each errno in make_hva_secure's order, and what s390_wiggle_split_folio turns into -EAGAIN.
    @Test func everyPathOfMakeHVASecure() {
        var v = VMM()
        expectEqual(v.mm.makeHVASecure(process: 0, hva: 0x1000, guest: v.conf, gfn: 0, miscFeature: true, &v.uv).errno, .EFAULT)
        expectEqual(v.importPage(0).errno, .ENXIO)  // nothing mapped yet
        // A read fault maps the zero page (special: no folio), then a read-only PTE.
        expectEqual(v.mm.handleFault(process: 0, addr: v.base, write: false), .handled)
        expectEqual(v.importPage(0).errno, .ENXIO)
        v.fault(0)
        // Locked by another task.
        let h = v.pfn(0)
        v.mm.folios[h]!.flags.insert(.locked)
        expectEqual(v.importPage(0), ImportOutcome(errno: .EAGAIN, why: "folio_trylock failed", uvc: nil, split: false))
        v.mm.folios[h]!.flags.remove(.locked)
        // Under writeback: -EBUSY, then the wait for it, then -EAGAIN; the retry imports.
        v.mm.folios[h]!.flags.insert(.writeback)
        let wb = v.importPage(0)
        expectEqual(wb.errno, .EAGAIN)
        expectEqual(wb.cause, .EBUSY)
        expectTrue(!v.mm.folios[h]!.flags.contains(.writeback))
        expectTrue(!v.uv.isSecure(h))
        // A pin's references: the freeze fails, for as long as the pin is held.
        var acc = AllAccessible()
        expectEqual(v.mm.getUserPages(process: 0, addr: v.base, pages: 1, flags: GUPFlags(pin: true), &acc), .pages(1, firstPFN: h, pinned: true))
        let pinned = v.importPage(0)
        expectEqual(pinned.errno, .EAGAIN)
        expectEqual(pinned.cause, .EBUSY)
        expectEqual(pinned.uvc, nil)
        expectEqual(pinned.description, "-EAGAIN after -EBUSY: folio_ref_freeze failed: references beyond the mappings (a pin, a GUP reference)")
        expectEqual(v.mm.unpinUserPage(pfn: h), .ok)
        // The UVC busy: -EAGAIN (PG_arch_1 stays set, over-indicating); then it goes through.
        v.uv.inject(.convToSecStor, cc: 2, count: 1)
        let busy = v.importPage(0)
        expectEqual(busy.errno, .EAGAIN)
        expectEqual(busy.uvc?.cc, 2)
        expectTrue(v.mm.folios[h]!.flags.contains(.arch1))
        expectTrue(!v.uv.isSecure(h))
        // Refused by the UV: -EINVAL.
        v.uv.inject(.convToSecStor, cc: 1, count: 1)
        expectEqual(v.importPage(0).errno, .EINVAL)
        expectEqual(v.importPage(0).errno, nil)
        expectTrue(v.uv.isSecure(h))
    }

    /// A large folio: -E2BIG, split by s390_wiggle_split_folio, -EAGAIN; the retry imports a
    /// small folio. A pinned THP cannot be split.
    @Test func aLargeFolioIsSplitFirst() {
        var v = VMM(huge: true)
        let block = v.block, gfn = v.blockGFN
        v.fault(gfn)
        let h = v.pfn(gfn)
        expectEqual(v.mm.folio(h)!.order, 9)
        var acc = AllAccessible()
        expectEqual(v.mm.getUserPages(process: 0, addr: block, pages: 1, flags: GUPFlags(pin: true), &acc), .pages(1, firstPFN: h, pinned: true))
        let stuck = v.importPage(gfn + 3)
        expectEqual(stuck.errno, .EAGAIN)
        expectEqual(stuck.cause, .E2BIG)
        expectTrue(!stuck.split)
        expectEqual(v.mm.folio(h)!.order, 9)
        expectEqual(v.mm.unpinUserPage(pfn: h), .ok)
        let r = v.importPage(gfn + 3)
        expectEqual(r.errno, .EAGAIN)
        expectEqual(r.cause, .E2BIG)
        expectTrue(r.split)
        expectEqual(v.mm.stats.folioSplits, 1)
        expectEqual(r.description, "-EAGAIN after -E2BIG: a large folio cannot be secure; s390_wiggle_split_folio split the folio")
        expectEqual(v.mm.folio(h + 3)!.order, 0)
        expectEqual(v.mm.folio(h + 3)!.refcount, 1)
        expectEqual(v.mm.folio(h + 3)!.mapcount, 1)
        expectEqual(v.importPage(gfn + 3).errno, nil)
        expectTrue(v.uv.isSecure(h + 3))
    }

    /// pin_user_pages calls the hook on a secure page: it exports it; when it cannot (the pin
    /// and the export both refused), the pin is undone and GUP returns -EINVAL; FOLL_GET
    /// calls nothing. mm/gup.c follow_page_pte.
    @Test func pinUserPagesExportsOrFailsAndUnpins() {
        var v = VMM()
        v.fault(0)
        let h = v.pfn(0)
        expectEqual(v.importPage(0).errno, nil)
        var acc = UVAccess(uv: v.uv)
        acc.uv.inject(.convFromSecStor, cc: 1, count: 1)
        expectEqual(v.mm.getUserPages(process: 0, addr: v.base, pages: 1, flags: GUPFlags(pin: true), &acc), .error(.EINVAL))
        expectEqual(v.mm.folio(h)!.refcount, 1)
        expectTrue(acc.uv.isSecure(h))
        expectEqual(v.mm.stats.gupRefused, 1)
        expectEqual(v.mm.getUserPages(process: 0, addr: v.base, pages: 1, flags: GUPFlags(), &acc), .pages(1, firstPFN: h, pinned: false))
        expectTrue(acc.uv.isSecure(h))
        expectEqual(v.mm.putPage(pfn: h), .ok)
        expectEqual(v.mm.getUserPages(process: 0, addr: v.base, pages: 1, flags: GUPFlags(pin: true), &acc), .pages(1, firstPFN: h, pinned: true))
        expectTrue(!acc.uv.isSecure(h))
        expectEqual(acc.uv.stats.exports, 1)
        expectTrue(v.mm.folio(h)!.maybeDMAPinned)
    }

    /// arch_make_folio_accessible: nothing without PG_arch_1 or on a large folio; a shared
    /// page is pinned; else exported; -EINVAL when both fail.
    @Test func theHook() {
        var v = VMM()
        v.fault(0)
        let h = v.pfn(0)
        expectEqual(v.mm.makeFolioAccessible(head: h, &v.uv), .success(.nothing))
        expectEqual(v.importPage(0).errno, nil)
        v.uv.inject(.convFromSecStor, cc: 1, count: 1)
        expectEqual(v.mm.makeFolioAccessible(head: h, &v.uv), .failure(.EINVAL))
        expectTrue(v.mm.folios[h]!.flags.contains(.arch1))
        expectEqual(v.mm.makeFolioAccessible(head: h, &v.uv), .success(.exported))
        expectTrue(!v.mm.folios[h]!.flags.contains(.arch1))
        expectTrue(!v.uv.isSecure(h))
        expectEqual(v.importPage(0).errno, nil)
        expectTrue(v.uv.setShared(guest: v.conf, pfn: h, shared: true).ok)
        expectEqual(v.mm.makeFolioAccessible(head: h, &v.uv), .success(.pinnedShared))
        expectTrue(v.uv.isSecure(h))
        // Destroy clears PG_arch_1 and the page.
        expectEqual(v.mm.destroySecureFolio(pfn: h, &v.uv), nil)
        expectTrue(!v.uv.isSecure(h))
        expectTrue(!v.mm.folios[h]!.flags.contains(.arch1))
    }

    /// do_secure_storage_access: no exception on a page that is not secure or is shared; a
    /// kernel address exported or BUG(); a user address exported or SIGSEGV.
    @Test func thePGM3DHandler() throws {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 1 << 30), config: { var c = KernelConfig(); c.isa = .s390x; return c }())
        k.user.addProcess("p")
        var uv = Ultravisor()
        let conf = uv.createConfiguration().1!
        let a = UserMMTests.mapped(k.user.mmap(process: 0, MmapRequest(len: 4096, prot: UserMMTests.rw)))
        expectEqual(k.user.handleFault(process: 0, addr: a, write: true), .handled)
        let pfn = k.user.mappedFrame(process: 0, addr: a)!.pfn
        expectEqual(k.secureStorageAccess(pfn: pfn, userAddress: false, &uv), .ok)
        expectEqual(k.user.makeHVASecure(process: 0, hva: a, guest: conf, gfn: 0, miscFeature: true, &uv).errno, nil)
        expectEqual(k.secureStorageAccess(pfn: pfn, userAddress: false, &uv), .resolved(.exported))
        expectEqual(k.user.makeHVASecure(process: 0, hva: a, guest: conf, gfn: 0, miscFeature: true, &uv).errno, nil)
        uv.inject(.convFromSecStor, cc: 1, count: 2)
        let bug = k.secureStorageAccess(pfn: pfn, userAddress: false, &uv)
        expectEqual(bug, .bug(.EINVAL))
        expectEqual(bug.description, "kernel BUG at arch/s390/mm/fault.c: do_secure_storage_access (arch_make_folio_accessible -EINVAL)")
        expectEqual(k.secureStorageAccess(pfn: pfn, userAddress: true, &uv), .sigsegv("arch_make_folio_accessible failed"))
        expectEqual(k.secureStorageAccess(pfn: pfn, userAddress: true, &uv), .resolved(.exported))
    }

    /// A protected mm's cleared PTE exports its page (ptep_get_and_clear); an unprotected
    /// one's does not; swap keeps the guest's data through export, the device and import.
    @Test func exportsOnPTEClearsAndTheSwapRoundTrip() {
        var v = VMM()
        v.fault(1)
        let h = v.pfn(1)
        expectEqual(v.importPage(1).errno, nil)
        v.uv.setContent(h, 0xabc)  // the guest's data
        // try_to_unmap's PTE clear exports the page before pageout (the events before the
        // writeback are delivered first), so the writeback hook finds PG_arch_1 clear.
        expectEqual(v.swapOut(1), .swapped(slot: 0))
        expectEqual(v.mm.events, [.swapOut(pfn: h, slot: 0)])
        expectEqual(v.mm.folio(h), nil)
        expectTrue(!v.uv.isSecure(h))
        expectEqual(v.uv.stats.exports, 1)
        expectEqual(v.mm.swapEntry(0, v.base + 0x1000), 0)
        v.deliver()
        expectNotEqual(v.uv.swapDevice[0], 0xabc)
        expectNotEqual(v.uv.swapDevice[0], nil)
        // The guest's next access: do_swap_page, then the import verifies and decrypts.
        v.fault(1)
        let back = v.pfn(1)
        expectEqual(v.mm.swapEntry(0, v.base + 0x1000), nil)
        expectTrue(v.uv.swapDevice.isEmpty)
        expectEqual(v.mm.stats.swapIns, 1)
        expectEqual(v.importPage(1).errno, nil)
        expectEqual(v.uv.contents(back), 0xabc)
        // MADV_DONTNEED on a protected mm exports as it zaps; the next access refaults a zero
        // page the UV will not take for the exported one.
        expectEqual(v.mm.madviseDontneed(process: 0, addr: v.base + 0x1000, len: 4096), .ok)
        v.deliver()
        expectEqual(v.uv.stats.exports, 2)
        expectTrue(!v.uv.isSecure(back))
        v.fault(1)
        let refused = v.importPage(1)
        expectEqual(refused.description, "-EINVAL: the UVC failed (UVC_CMD_CONV_TO_SEC_STOR cc 1 (UVC_CC_ERROR): integrity check failed: the page is not what the UV exported)")
        expectEqual(refused.errno, .EINVAL)
        expectEqual(refused.uvc?.rc, nil)
        expectEqual(v.uv.stats.integrityFailures, 1)
        // A pinned page is not reclaimed.
        v.fault(2)
        var acc = AllAccessible()
        expectTrue(v.mm.getUserPages(process: 0, addr: v.base + 0x2000, pages: 1, flags: GUPFlags(pin: true), &acc).description.hasPrefix("pinned"))
        expectEqual(v.swapOut(2).description, "kept: folio_maybe_dma_pinned: reclaim keeps a pinned anonymous folio")
        // No events on an mm that backs no protected guest.
        v.mm.changeProtectedCount(process: 0, by: -1)
        _ = v.mm.takeEvents()
        v.fault(3)
        let p3 = v.pfn(3)
        expectEqual(v.swapOut(3), .swapped(slot: 0))
        expectEqual(v.mm.events, [.swapOut(pfn: p3, slot: 0)])
        expectEqual(v.uv.stats.exports, 2)
    }

    /// Writeback's folio_mkclean clears the dirty PTE of a protected mm's page-cache page,
    /// which exports it before the hook (which then finds PG_arch_1 clear); a COW copy of a
    /// secure page reads it through the kernel (PGM 0x3d exports it) and clears its PTE.
    @Test func mkcleanAndCOWExportFirst() {
        var v = VMM(shared: true)
        v.fault(0)
        let h = v.pfn(0)
        expectEqual(v.importPage(0).errno, nil)
        expectTrue(v.uv.isSecure(h))
        let (mapped, dirty) = v.mm.mappedFrame(process: 0, addr: v.base)!
        expectEqual(mapped, h)
        expectTrue(dirty)
        expectTrue(v.mm.wouldWriteBack(pfn: h, dirtyPTE: dirty, UVAccess(uv: v.uv)))
        v.mm.mkclean(process: 0, addr: v.base)
        expectEqual(v.mm.events, [.pteCleared(pfn: h)])
        v.deliver()
        expectTrue(!v.uv.isSecure(h))
        expectTrue(!v.mm.folios[h]!.flags.contains(.arch1))
        var acc = UVAccess(uv: v.uv)
        expectEqual(v.mm.writeback(pfn: h, dirtyPTE: true, &acc), .started)
        expectEqual(acc.uv.stats.exports, 1)
        // COW: a private copy of a secure page.
        var w = VMM()
        w.fault(0)
        let p = w.pfn(0)
        expectEqual(w.importPage(0).errno, nil)
        w.uv.setContent(p, 0x77)
        w.mm.addProcess("child")
        w.mm.fork(process: 0, child: "child")
        w.fault(0)  // the parent's write breaks COW
        let copy = w.pfn(0)
        expectNotEqual(copy, p)
        expectEqual(w.uv.stats.exports, 1)
        expectTrue(!w.uv.isSecure(p))
        expectEqual(w.uv.contents(copy), w.uv.contents(p))
        expectNotEqual(w.uv.contents(copy), 0x77)
    }

    /// s390_enable_sie: VM_HUGEPAGE cleared, huge PMDs split with the folio kept large, THP
    /// off for later mappings and MADV_HUGEPAGE.
    @Test func enableSIETurnsTHPOff() {
        var v = VMM(huge: true)
        let block = v.block
        expectEqual(v.mm.handleFault(process: 0, addr: block, write: true), .handled)
        let h = v.pfn(v.blockGFN)
        v.mm.enableSIE(process: 0)
        expectTrue(v.mm.processes[0].hasPgste)
        expectEqual(v.mm.folio(h)!.order, 9)
        expectEqual(v.mm.folio(h)!.mapcount, 512)
        expectEqual(v.mm.processes[0].pageTable.lookup(VirtAddr(block))!.size, .size4K)
        expectTrue(v.mm.processes[0].vmas.allSatisfy { !$0.flags.contains(.hugepage) })
        let later = UserMMTests.mapped(v.mm.mmap(process: 0, MmapRequest(len: 4 << 20, prot: UserMMTests.rw, huge: true)))
        expectEqual(v.mm.madviseHugepage(process: 0, addr: later, len: 4 << 20, on: true), .ok)
        expectTrue(v.mm.processes[0].vmas.allSatisfy { !$0.flags.contains(.hugepage) })
    }

    /// The handler's dead ends: a secure page with no folio, or whose folio lacks PG_arch_1,
    /// is made accessible by nothing, and the access faults again for ever.
    @Test func theHandlerCanHang() throws {
        var k = try Kernel(memory: PhysicalMemory.pc(size: 1 << 30), config: { var c = KernelConfig(); c.isa = .s390x; return c }())
        var uv = Ultravisor()
        let conf = uv.createConfiguration().1!
        expectTrue(uv.convertToSecure(guest: conf, gfn: 0, pfn: 0x1234).ok)
        expectEqual(k.secureStorageAccess(pfn: 0x1234, userAddress: false, &uv), .repeats)
        expectEqual(k.secureStorageAccess(pfn: 0x1234, userAddress: true, &uv), .repeats)
        k.user.addProcess("p")
        let a = UserMMTests.mapped(k.user.mmap(process: 0, MmapRequest(len: 4096, prot: UserMMTests.rw)))
        expectEqual(k.user.handleFault(process: 0, addr: a, write: true), .handled)
        let pfn = k.user.mappedFrame(process: 0, addr: a)!.pfn
        expectTrue(uv.convertToSecure(guest: conf, gfn: 1, pfn: pfn).ok)  // secure, PG_arch_1 never set
        let r = k.secureStorageAccess(pfn: pfn, userAddress: false, &uv)
        expectEqual(r, .repeats)
        expectEqual(r.description, "hang: the access faults again for ever (do_secure_storage_access found nothing to make accessible)")
    }

    /// A THP partly unmapped before the import still splits (can_split_folio counts its
    /// mappings): the mapped pages become small folios, the unmapped one is freed.
    @Test func aPartlyMappedTHPSplits() {
        var v = VMM(huge: true)
        let block = v.block, gfn = v.blockGFN
        v.fault(gfn)
        let h = v.pfn(gfn)
        expectEqual(v.mm.madviseDontneed(process: 0, addr: block + 0x5000, len: 4096), .ok)  // splits the PMD, drops page 5
        expectEqual(v.mm.folio(h)!.order, 9)
        expectEqual(v.mm.folio(h)!.mapcount, 511)
        expectEqual(v.mm.folio(h)!.refcount, 511)
        let pages = v.mm.allocatedPages
        let r = v.importPage(gfn)
        expectEqual(r.errno, .EAGAIN)
        expectEqual(r.cause, .E2BIG)
        expectTrue(r.split)
        expectEqual(v.mm.folio(h + 5), nil)
        expectEqual(v.mm.folio(h + 6)!.order, 0)
        expectEqual(v.mm.allocatedPages, pages - 1)
        expectEqual(v.importPage(gfn).errno, nil)
    }

    /// A pgste mm maps a huge file's pages with PTEs (do_set_pmd refuses); the large
    /// page-cache folio is split on the import's -E2BIG and stays in the cache, page by page.
    @Test func aLargeFileFolioIsSplitInTheCache() {
        var v = VMM(huge: true, shared: true)
        v.mm.enableSIE(process: 0)
        let block = v.block, gfn = v.blockGFN
        v.fault(gfn + 1)
        expectNotEqual(v.mm.processes[0].pageTable.lookup(VirtAddr(block))?.size, .size2M)
        let p = v.pfn(gfn + 1)
        expectEqual(v.mm.folio(p)!.order, 9)
        let r = v.importPage(gfn + 1)
        expectEqual(r.errno, .EAGAIN)
        expectEqual(r.cause, .E2BIG)
        expectTrue(r.split)
        expectEqual(v.mm.folio(p)!.order, 0)
        expectEqual(v.mm.folio(p)!.refcount, 2)
        expectEqual(v.mm.folio(p - 1)!.refcount, 1)
        expectTrue(v.mm.folio(p - 1)!.flags.contains(.pageCache))
        expectEqual(v.importPage(gfn + 1).errno, nil)
        v.fault(gfn + 2)  // the next page faults in from the cache as its own small folio
        expectEqual(v.pfn(gfn + 2), p + 1)
        expectEqual(v.mm.folio(p + 1)!.mapcount, 1)
    }

    /// should_export_before_import: two protected guests on one mm and no misc feature, an
    /// import first exports the page (here another guest's); with the feature it does not.
    @Test func exportBeforeImportWithoutTheMiscFeature() {
        var v = VMM()
        let other = v.uv.createConfiguration().1!
        v.mm.changeProtectedCount(process: 0, by: 1)
        v.fault(0)
        let h = v.pfn(0)
        expectTrue(v.uv.convertToSecure(guest: other, gfn: 9, pfn: h).ok)
        v.mm.folios[h]!.flags.insert(.arch1)
        let refused = v.mm.makeHVASecure(process: 0, hva: v.base, guest: v.conf, gfn: 0, miscFeature: true, &v.uv)
        expectEqual(refused.errno, .EINVAL)
        expectEqual(refused.uvc?.rc, UVCResult.rcInvalidState)
        expectEqual(v.uv.stats.exports, 0)
        let r = v.mm.makeHVASecure(process: 0, hva: v.base, guest: v.conf, gfn: 0, miscFeature: false, &v.uv)
        expectEqual(r.errno, nil)
        expectEqual(v.uv.stats.exports, 1)
        expectEqual(v.uv.secure[h]?.guest, v.conf)
        expectEqual(v.uv.secure[h]?.gfn, 0)
    }
}
