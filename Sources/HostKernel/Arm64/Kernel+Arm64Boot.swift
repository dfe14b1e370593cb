import Hardware
import PageTables

/// Entries in one contiguous run with a 4K granule (CONT_PTES, CONT_PMDS).
let contiguousEntries: UInt64 = 16

extension Kernel {
    /// Maps every memblock RAM range into the linear map as map_mem does: per PUD step a 1G
    /// block when the step is whole and aligned, else per 32M step the contiguous bit when
    /// the step is whole and aligned, and per PMD step a 2M block when whole and aligned,
    /// else PTEs, per 64K step with the contiguous bit when whole and aligned. With
    /// `linearMap == .pte` (NO_BLOCK_MAPPINGS | NO_CONT_MAPPINGS) everything is 4K without the
    /// contiguous bit. Linux arch/arm64/mm/mmu.c map_mem, __create_pgd_mapping,
    /// alloc_init_pud, alloc_init_cont_pmd, init_pmd, alloc_init_cont_pte.
    mutating func bootLinearMap() {
        let blocks = config.linearMap != .pte
        for r in mappedRanges {
            for run in Self.linearMapRuns(r.lowerBound, r.upperBound, blocks: blocks) {
                // map_mem maps RAM with pgprot_tagged(PAGE_KERNEL) (MT_NORMAL_TAGGED, with or
                // without MTE).
                var attributes = pageKernel.union(.tagged)
                if run.contiguous { attributes.insert(.contiguous) }
                do {
                    try pageTable.map(virt: va(PhysAddr(run.start)), phys: PhysAddr(run.start), size: run.end - run.start,
                                      attributes: attributes, sizes: [run.size])
                } catch {
                    preconditionFailure("linear map of \(hex(run.start))-\(hex(run.end)) failed: \(error)")  // RAM is checked at init
                }
            }
        }
        directPagesCount = directMapLeafCounts()
        bootDirectPagesCount = directPagesCount
    }

    /// One run of the linear map: a physical range mapped with one leaf size, with or without
    /// the contiguous bit.
    struct LinearMapRun: Equatable {
        var start: UInt64, end: UInt64, size: PageSize, contiguous: Bool
    }

    /// The runs map_mem makes for `[start, end)` (the linear map's virtual and physical
    /// addresses share their alignment, as PHYS_OFFSET is 1G-aligned), neighbours of the same
    /// kind merged.
    static func linearMapRuns(_ start: UInt64, _ end: UInt64, blocks: Bool) -> [LinearMapRun] {
        var runs: [LinearMapRun] = []
        func add(_ s: UInt64, _ e: UInt64, _ size: PageSize, _ cont: Bool) {
            guard s < e else { return }
            if var last = runs.last, last.end == s, last.size == size, last.contiguous == cont {
                last.end = e
                runs[runs.count - 1] = last
            } else {
                runs.append(LinearMapRun(start: s, end: e, size: size, contiguous: cont))
            }
        }
        func step(_ a: UInt64, _ bytes: UInt64, _ limit: UInt64) -> UInt64 { min((a & ~(bytes - 1)) + bytes, limit) }
        func whole(_ a: UInt64, _ next: UInt64, _ bytes: UInt64) -> Bool { (a | next) & (bytes - 1) == 0 }
        let g1 = PageSize.size1G.bytes, m2 = PageSize.size2M.bytes, k4 = pageBytes
        var pud = start
        while pud < end {
            let pudNext = step(pud, g1, end)
            if blocks && whole(pud, pudNext, g1) {
                add(pud, pudNext, .size1G, false)
            } else {
                var cpmd = pud
                while cpmd < pudNext {  // alloc_init_cont_pmd
                    let cpmdNext = step(cpmd, m2 * contiguousEntries, pudNext)
                    let contPMD = blocks && whole(cpmd, cpmdNext, m2 * contiguousEntries)
                    var pmd = cpmd
                    while pmd < cpmdNext {  // init_pmd
                        let pmdNext = step(pmd, m2, cpmdNext)
                        if blocks && whole(pmd, pmdNext, m2) {
                            add(pmd, pmdNext, .size2M, contPMD)
                        } else {
                            var cpte = pmd
                            while cpte < pmdNext {  // alloc_init_cont_pte
                                let cpteNext = step(cpte, k4 * contiguousEntries, pmdNext)
                                add(cpte, cpteNext, .size4K, blocks && whole(cpte, cpteNext, k4 * contiguousEntries))
                                cpte = cpteNext
                            }
                        }
                        pmd = pmdNext
                    }
                    cpmd = cpmdNext
                }
            }
            pud = pudNext
        }
        return runs
    }
}
