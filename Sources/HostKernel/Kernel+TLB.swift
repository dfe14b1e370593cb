import Hardware
import PageTables

/// The kernel's TLB maintenance and its CPUs' translations: every flush the kernel does
/// reaches every CPU (x86: on_each_cpu IPIs; arm64: the inner-shareable TLBI broadcast), and
/// an access on a CPU goes through that CPU's TLB before the page table.
extension Kernel {
    /// Sends one invalidation to every CPU, unless flushes are left out by fault injection.
    mutating func broadcast(_ op: TLBInvalidation) {
        guard !omitTLBFlushes else { return log("flush omitted (\(op))") }
        tlbs.invalidateEverywhere(op)
        switch op {
        case .all: unflushed.removeAll()
        case .page(let va): forgetUnflushed(va)
        case .nonGlobal: break
        }
    }

    /// flush_tlb_all: every entry on every CPU, counted. Linux arch/x86/mm/tlb.c flush_tlb_all.
    public mutating func flushTLBAll() {
        stats.tlbFullFlushes += 1
        log("flush_tlb_all")
        broadcast(.all)
    }

    /// flush_tlb_one_kernel on every CPU for each page of `[start, start + pages·4K)`, counted
    /// as one round. Linux set_memory.c __cpa_flush_tlb.
    mutating func flushTLBPages(_ start: UInt64, pages: Int) {
        stats.tlbPageFlushRounds += 1
        stats.tlbPagesFlushed += UInt64(pages)
        log("flush_tlb_one_kernel x\(pages)")
        for i in 0..<pages { broadcast(.page(start &+ UInt64(i) << pageShift)) }
    }

    /// flush_tlb_kernel_range: everything above the single-page ceiling, else page by page.
    /// Linux arch/x86/mm/tlb.c flush_tlb_kernel_range (tlb_single_page_flush_ceiling). On
    /// arm64, everything (TLBI VMALLE1IS) from MAX_DVM_OPS pages (2M) up, else TLBI VAALE1IS
    /// per page, broadcast by the hardware; arch/arm64/include/asm/tlbflush.h (6.13+, no
    /// FEAT_TLBIRANGE).
    public mutating func flushTLBKernelRange(_ start: UInt64, pages: Int) {
        let all = config.isa == .arm64 ? pages >= entriesPerTable : pages > config.tlbSinglePageFlushCeiling
        if all { flushTLBAll() } else { flushTLBPages(start, pages: pages) }
    }

    /// An arm64 TLBI executed on CPU `cpu`: broadcast (the IS forms) or local. A broadcast
    /// one counts as a flush point for the pages it covers; a local one does not (other CPUs
    /// may still hold the old translation).
    public mutating func tlbi(_ op: ArmTLBI, va: UInt64, cpu: Int) {
        let inv = op.invalidation(va: va)
        log("tlbi \(op.rawValue)" + (op.byAddress ? " \(hex(va))" : "") + " on CPU \(cpu)")
        if op.broadcast { return broadcast(inv) }
        guard !omitTLBFlushes else { return log("flush omitted (\(inv))") }
        tlbs.invalidate(cpu: cpu, inv)
    }

    /// Notes that `va`'s page changed without a flush (the *_noflush operations).
    mutating func noteUnflushed(_ va: UInt64) {
        let page = va & ~(pageBytes - 1)
        guard !isUnflushed(page) else { return }
        if let last = unflushed.last, last.upperBound == page {
            unflushed[unflushed.count - 1] = last.lowerBound..<page + pageBytes
        } else {
            unflushed.append(page..<page + pageBytes)
        }
    }

    /// CPU `cpu`'s TLB entry for `va`, if it holds one (nothing counted).
    public func tlbEntry(cpu: Int, _ va: UInt64) -> TLBEntry? { tlbs.entry(cpu: cpu, va) }

    /// Whether `va`'s page changed without a flush since.
    public func isUnflushed(_ va: UInt64) -> Bool { unflushed.contains { $0.contains(va) } }

    mutating func forgetUnflushed(_ va: UInt64) {
        guard !unflushed.isEmpty, let i = unflushed.firstIndex(where: { $0.contains(va) }) else { return }
        let r = unflushed[i], page = va & ~(pageBytes - 1)
        unflushed.remove(at: i)
        if page + pageBytes < r.upperBound { unflushed.insert(page + pageBytes..<r.upperBound, at: i) }
        if r.lowerBound < page { unflushed.insert(r.lowerBound..<page, at: i) }
    }

    /// The translation of `va` on CPU `cpu`: the TLB's if it holds one (stale or not), else
    /// the page-table walk's, cached when it ends on a present leaf. Nil when the walk finds
    /// no present leaf (a #PF).
    @inlinable public mutating func translate(cpu: Int, _ va: UInt64) -> TLBEntry? {
        if let e = tlbs.entry(cpu: cpu, va) {
            if _fastPath(cpu == pendingCPU) { pendingHits &+= 1 } else { countHit(cpu: cpu) }
            return e
        }
        return walkAndFill(cpu: cpu, va)
    }

    /// Moves the pending hits into their CPU's stats and starts counting for `cpu`.
    @usableFromInline mutating func countHit(cpu: Int) {
        tlbs.countHits(cpu: pendingCPU, pendingHits)
        pendingCPU = cpu
        pendingHits = 1
    }

    /// The miss path of `translate`, out of line so the hit stays small.
    @usableFromInline mutating func walkAndFill(cpu: Int, _ va: UInt64) -> TLBEntry? {
        tlbs.countMiss(cpu: cpu)
        guard let leaf = pageTable.lookup(VirtAddr(va)), leaf.descriptor.isPresentLeaf else { return nil }
        let pa = leaf.translate(VirtAddr(va)).rawValue
        tlbs.fill(cpu: cpu, va, pa: pa, size: leaf.size, attributes: leaf.attributes)
        return tlbs.entry(cpu: cpu, va)
    }

    /// "After a flush point no CPU holds a translation that disagrees with the page table":
    /// each valid TLB entry must match the walk (present, same page, same attributes; a leaf
    /// size that changed alone does not count), unless a *_noflush operation changed that page and nothing flushed it yet.
    public func checkTLBInvariants() throws(InvariantViolation) {
        for cpu in cpus {
            for e in cpu.tlb.validEntries where !isUnflushed(e.va) {
                let leaf = pageTable.lookup(VirtAddr(e.va))
                let now = leaf.flatMap { l in
                    l.descriptor.isPresentLeaf ? (pa: l.translate(VirtAddr(e.va)).rawValue, size: l.size, attributes: l.attributes) : nil
                }
                // A larger entry left by a split that maps the page the same way is not stale
                // (the translation agrees; BBML2 splits rely on it).
                let same = now.map { $0.pa == e.pa && $0.attributes.rawValue & 0x3ff == e.attributes.rawValue } ?? false
                if !same {
                    throw InvariantViolation("no CPU holds a stale translation after a flush point",
                        "CPU \(cpu.id) caches \(e), the page table has "
                        + (now.map { "\(hex($0.pa)) \($0.size) \($0.attributes)" } ?? "no present leaf"))
                }
            }
        }
    }

    /// Each CPU's TLB counters, as `cpuN_tlb_hits`, `cpuN_tlb_misses`, `cpuN_tlb_flushes`.
    public var cpuMetrics: [(String, UInt64)] {
        cpus.flatMap { cpu in TLBStats.metrics.map { ("cpu\(cpu.id)_\($0.info.name)", $0.read(cpu.stats)) } }
    }

    /// The declarations of `cpuMetrics` for `cpus` CPUs.
    public static func cpuMetricInfo(cpus: Int) -> [MetricInfo] {
        (0..<cpus).flatMap { i in TLBStats.metrics.map { MetricInfo("cpu\(i)_\($0.info.name)", $0.info.unit, "CPU \(i): \($0.info.summary)") } }
    }
}
