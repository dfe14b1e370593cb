import PageTables

/// One change_page_attr request. Linux arch/x86/mm/pat/set_memory.c struct cpa_data.
struct CPARequest {
    var address: UInt64
    var numpages: Int
    var set: Attributes
    var clear: Attributes
    var forceSplit = false
    /// CPA_NO_CHECK_ALIAS.
    var noCheckAlias = false
    /// CPA_COLLAPSE.
    var collapse = false
}

/// What the walk left for cpa_flush. Linux cpa_data.flags / force_flush_all.
struct CPAOutcome {
    /// CPA_FLUSHTLB: a primary entry changed.
    var flushTLB = false
    /// force_flush_all: an alias was processed.
    var forceFlushAll = false
    /// Base pages whose primary entry changed.
    var pagesChanged: UInt64 = 0
    var error: Errno?
}

extension Kernel {
    /// Checks a request names whole pages inside the direct map or the vmalloc area. The
    /// check is inlined; the message is built out of line, only for a refused request.
    @inlinable @inline(__always)
    public func validate(address: UInt64, numpages: Int, function: String) throws(HostKernelError) {
        if address & (pageBytes - 1) == 0, numpages >= 1 {
            let (bytes, o1) = UInt64(numpages).multipliedReportingOverflow(by: pageBytes)
            let (end, o2) = address.addingReportingOverflow(bytes)
            if !o1 && !o2 && (isDirectMap(address) && end <= directMapEnd || isVmalloc(address) && end <= layout.vmallocEnd) { return }
        }
        throw Self.refusal(address: address, numpages: numpages, function: function, layout: layout, directMapEnd: directMapEnd)
    }

    /// Why `validate` refuses a request. Static, so the inlined check never needs the kernel
    /// as a whole (a mutating caller would copy it up front to pass `self`).
    @usableFromInline static func refusal(address: UInt64, numpages: Int, function: String, layout: KernelLayout, directMapEnd: UInt64) -> HostKernelError {
        if address & (pageBytes - 1) != 0 {
            return HostKernelError("\(function): address \(hex(address)) is not page-aligned (the kernel would WARN and round it down)")
        }
        guard numpages >= 1 else { return HostKernelError("\(function): numpages must be at least 1, got \(numpages)") }
        return HostKernelError("\(function): \(hex(address)) + \(numpages) pages is not inside the direct map "
            + "[\(hex(layout.pageOffset))-\(hex(directMapEnd))) or the vmalloc area [\(hex(layout.vmallocStart))-\(hex(layout.vmallocEnd)))")
    }

    mutating func log(_ event: @autoclosure () -> String) {
        if eventLog != nil { eventLog!.append(event()) }
    }

    /// Counts the splits a walk did: split_large_page flushes all, and split_page_count runs
    /// for direct-map addresses only. Linux set_memory.c __split_large_page.
    mutating func accountSplits(_ result: ProtectResult, directMap: Bool) {
        for size in result.splitLevels {
            stats.tlbSplitFlushes += 1
            flushTLBAll()
            if directMap { countDirectMapSplit(size) }
        }
    }

    /// One direct-map leaf of `size` split: the split counter and split_page_count (nothing
    /// when the count is already 0). Linux set_memory.c split_page_count.
    mutating func countDirectMapSplit(_ size: PageSize) {
        stats.splits[size] += 1
        if directPagesCount[size] > 0 {
            directPagesCount[size] -= 1
            directPagesCount[size.smaller!] += entriesPerTable
        }
    }

    /// Applies set/clear to one range of one address space, counting splits.
    mutating func protectRange(_ start: UInt64, pages: Int, set: Attributes, clear: Attributes, forceSplit: Bool) -> (changed: UInt64, error: Errno?) {
        var result = ProtectResult()
        var failure: Errno?
        do {
            try pageTable.protect(virt: VirtAddr(start), size: UInt64(pages) * pageBytes, set: set, clear: clear,
                                  forceSplit: forceSplit, notPresentClearsGlobal: true, into: &result)
        } catch {
            // The range is validated before the walk, so only a split's allocation can fail.
            stats.allocationFailures += 1
            failure = .ENOMEM
        }
        accountSplits(result, directMap: isDirectMap(start))
        return (result.pagesChanged, failure)
    }

    /// The walk of __change_page_attr_set_clr with alias processing: direct-map ranges in one
    /// pass (holes are skipped, __cpa_process_fault), vmalloc pages one by one with the
    /// direct-map alias of each (cpa_process_alias: NX masked out, force_flush_all set; the
    /// alias's own CPA_FLUSHTLB is lost, as it runs on a copy of cpa_data).
    mutating func changePageAttr(_ req: CPARequest) -> CPAOutcome {
        var out = CPAOutcome()
        if isDirectMap(req.address) {
            let r = protectRange(req.address, pages: req.numpages, set: req.set, clear: req.clear, forceSplit: req.forceSplit)
            out.flushTLB = r.changed > 0
            out.pagesChanged = r.changed
            out.error = r.error
            return out
        }
        for i in 0..<req.numpages {
            let va = req.address + UInt64(i) * pageBytes
            guard let leaf = pageTable.lookup(VirtAddr(va)) else {
                log("CPA: called for zero pte at \(hex(va))")  // the kernel WARNs
                out.error = .EFAULT
                return out
            }
            let r = protectRange(va, pages: 1, set: req.set, clear: req.clear, forceSplit: req.forceSplit)
            out.flushTLB = out.flushTLB || r.changed > 0
            out.pagesChanged += r.changed
            if let e = r.error { out.error = e; return out }
            let pa = leaf.translate(VirtAddr(va)).rawValue
            guard !req.noCheckAlias, isMapped(pa) else { continue }
            out.forceFlushAll = true
            let alias = protectRange(self.va(PhysAddr(pa)).rawValue, pages: 1, set: req.set.subtracting(.noExecute),
                                     clear: req.clear.subtracting(.noExecute), forceSplit: req.forceSplit)
            if let e = alias.error { out.error = e; return out }
        }
        return out
    }

    /// Flushes after a change: everything when forced or above the single-page ceiling,
    /// else page by page; then CLFLUSH of each present page when `cache`; then, with
    /// CPA_COLLAPSE, re-merging (as the collapse policy says). Linux set_memory.c cpa_flush.
    mutating func cpaFlush(_ req: CPARequest, cache: Bool, forceFlushAll: Bool) {
        if forceFlushAll { flushTLBAll() } else { flushTLBKernelRange(req.address, pages: req.numpages) }
        if cache {
            var flushed: UInt64 = 0
            for i in 0..<req.numpages where pageTable.translate(VirtAddr(req.address + UInt64(i) * pageBytes)) != nil {
                flushed += 1
            }
            stats.cacheFlushPages += flushed
            log("clflush x\(flushed)")
        }
        switch config.collapse {
        case .never: break
        case .rox: if req.collapse { collapseLargePages(req) }
        case .always: collapseLargePages(req)
        }
    }

    /// Re-merges the direct-map tables the request touched, 2M first and 1G only right after
    /// a 2M collapse under it; one flush_tlb_all if anything merged. Linux set_memory.c
    /// cpa_collapse_large_pages / collapse_large_pages / collapse_page_count.
    mutating func collapseLargePages(_ req: CPARequest) {
        let sizes: [PageSize] = config.gbpages ? [.size2M, .size1G] : [.size2M]
        guard let result = try? pageTable.collapse(virt: VirtAddr(req.address), size: UInt64(req.numpages) * pageBytes,
                                                   sizes: sizes, onlyAfterLowerCollapse: true),
              !result.collapseLevels.isEmpty else { return }
        log("collapse \(result.collapseLevels.map(\.description).joined(separator: ","))")
        flushTLBAll()
        guard isDirectMap(req.address) else { return }
        for size in result.collapseLevels {
            stats.collapses[size] += 1
            directPagesCount[size] += 1
            directPagesCount[size.smaller!] -= entriesPerTable
        }
    }

    /// change_page_attr_set_clr: nothing to do returns 0; else the walk, then no flush
    /// unless an entry changed, cpa_flush_all on error, cpa_flush otherwise. Linux
    /// set_memory.c change_page_attr_set_clr.
    mutating func changePageAttrSetClr(_ req: CPARequest) -> KernelStatus {
        if req.set.isEmpty && req.clear.isEmpty && !req.forceSplit { return .ok }
        let out = changePageAttr(req)
        guard out.flushTLB else { return out.error.map(KernelStatus.error) ?? .ok }
        let cache = req.set.memoryType != .writeBack
        if let error = out.error {
            // cpa_flush_all: __flush_tlb_all (and WBINVD when caching changed) on every CPU.
            if cache { stats.wbinvd += 1 }
            log("cpa_flush_all")
            flushTLBAll()
            return .error(error)
        }
        cpaFlush(req, cache: cache, forceFlushAll: out.forceFlushAll)
        return .ok
    }
}
