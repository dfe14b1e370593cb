import Hardware
import PageTables

/// One atomic action of set_pte_at's MTE part, at the granularity the kernel's atomics give:
/// a bit operation on the page flags, a check of the PTEs (thread-local), a half of a tag
/// restore (mte_restore_page_tags may be preempted part way), a tag clear, the PTE write.
/// A jump target is an index in the form's program. Linux arch/arm64/kernel/mte.c,
/// arch/arm64/mm/mteswap.c, arch/arm64/include/asm/mte.h.
public enum MTEAction: Hashable, Sendable, CustomStringConvertible {
    /// The call site's condition (set_pte_at): else jump (straight to the PTE write).
    case callSite(requiresTaggedPTE: Bool, orElse: Int)
    /// test_and_set_bit(PG_mte_tagged): jump when it was already set.
    case testAndSetTagged(ifWasSet: Int)
    /// test_bit(PG_mte_tagged) / page_mte_tagged: jump when set.
    case testTagged(ifSet: Int)
    /// try_page_mte_tagging: take PG_mte_lock, or (held) wait for PG_mte_tagged and jump.
    case tryLock(ifHeld: Int)
    /// is_swap_pte(old_pte): jump when the old PTE is not a swap entry.
    case ifNotSwap(Int)
    /// xa_load(&mte_pages, entry): jump when no tags are saved for it.
    case ifNoSavedTags(Int)
    /// mte_restore_page_tags, first half of the granules, then the second.
    case restoreFirstHalf
    case restoreSecondHalf
    /// pte_tagged(pte) false: jump.
    case ifPTEUntagged(Int)
    /// mte_clear_page_tags.
    case clearTags
    /// set_page_mte_tagged: smp_wmb, set_bit(PG_mte_tagged).
    case setTagged
    /// set_pte: the PTE visible; the access through it sees the page's tags from now on.
    case writePTE
    case jump(Int)

    public var description: String {
        switch self {
        case .callSite(let t, let e): "call site (\(t ? "pte_tagged" : "pte_tagged || swap"), else → \(e))"
        case .testAndSetTagged(let j): "test_and_set_bit(PG_mte_tagged) (set → \(j))"
        case .testTagged(let j): "test_bit(PG_mte_tagged) (set → \(j))"
        case .tryLock(let j): "try_page_mte_tagging (held → wait, \(j))"
        case .ifNotSwap(let j): "is_swap_pte(old) (no → \(j))"
        case .ifNoSavedTags(let j): "xa_load(mte_pages) (none → \(j))"
        case .restoreFirstHalf: "mte_restore_page_tags, granules 0-127"
        case .restoreSecondHalf: "mte_restore_page_tags, granules 128-255"
        case .ifPTEUntagged(let j): "pte_tagged(pte) (no → \(j))"
        case .clearTags: "mte_clear_page_tags"
        case .setTagged: "set_page_mte_tagged"
        case .writePTE: "set_pte"
        case .jump(let j): "→ \(j)"
        }
    }
}

extension MTESyncForm {
    /// set_pte_at's MTE part in this form, for one small page, as its atomic actions.
    public var program: [MTEAction] {
        switch self {
        case .v5_10:
            // mte_sync_tags: if (!test_and_set_bit) mte_sync_page_tags: restore or clear.
            return [.callSite(requiresTaggedPTE: true, orElse: 8), .testAndSetTagged(ifWasSet: 8), .ifNotSwap(7), .ifNoSavedTags(7),
                    .restoreFirstHalf, .restoreSecondHalf, .jump(8), .clearTags, .writePTE]
        case .v5_14:
            // 69e3b846d8a7: called for swap entries too; cleared only when pte_tagged.
            return [.callSite(requiresTaggedPTE: false, orElse: 9), .testAndSetTagged(ifWasSet: 9), .ifNotSwap(7), .ifNoSavedTags(7),
                    .restoreFirstHalf, .restoreSecondHalf, .jump(9), .ifPTEUntagged(9), .clearTags, .writePTE]
        case .v5_14Stable:
            // a8e5e5146ad0: test_bit first; test_and_set_bit where tags are restored or cleared.
            return [.callSite(requiresTaggedPTE: false, orElse: 11), .testTagged(ifSet: 11), .ifNotSwap(8), .ifNoSavedTags(8),
                    .testAndSetTagged(ifWasSet: 11), .restoreFirstHalf, .restoreSecondHalf, .jump(11),
                    .ifPTEUntagged(11), .testAndSetTagged(ifWasSet: 11), .clearTags, .writePTE]
        case .v6_1Lock:
            // d77e59a8fccd: page_mte_tagged; mte_restore_tags under the lock, then the clear.
            return [.callSite(requiresTaggedPTE: false, orElse: 12), .testTagged(ifSet: 12), .ifNotSwap(8), .ifNoSavedTags(8),
                    .tryLock(ifHeld: 8), .restoreFirstHalf, .restoreSecondHalf, .setTagged,
                    .ifPTEUntagged(12), .tryLock(ifHeld: 12), .clearTags, .setTagged, .writePTE]
        }
    }
}

extension MTESyncForm {
    /// user_mem_abort's MTE part for one page, as its atomic actions: sanitise_mte_tags
    /// (test_bit then clear and set before the lock; try_page_mte_tagging from d77e59a8fccd),
    /// then the stage-2 map. Linux arch/arm64/kvm/mmu.c.
    public var sanitiseProgram: [MTEAction] {
        switch self {
        case .v5_10, .v5_14, .v5_14Stable: [.testTagged(ifSet: 3), .clearTags, .setTagged, .writePTE]
        case .v6_1Lock: [.tryLock(ifHeld: 3), .clearTags, .setTagged, .writePTE]
        }
    }
}

/// One CPU running set_pte_at's MTE part: where it is in its form's program and what it
/// maps. The interleaving explorer runs several, one action at a time (`MTEHost.step`).
public struct MTESyncThread: Hashable, Sendable {
    public let vma: Int
    public let page: Int
    public let pfn: UInt64
    public let old: UserPTE
    /// Running user_mem_abort's sanitise_mte_tags (its last action the stage-2 map, which
    /// the caller makes) rather than set_pte_at.
    public let sanitise: Bool
    public var pc = 0
    public var done = false
    public init(vma: Int, page: Int, pfn: UInt64, old: UserPTE, sanitise: Bool = false) {
        self.vma = vma
        self.page = page
        self.pfn = pfn
        self.old = old
        self.sanitise = sanitise
    }

    /// The program it runs in `form`.
    public func program(_ form: MTESyncForm) -> [MTEAction] { sanitise ? form.sanitiseProgram : form.program }
    /// The action it runs next.
    public func next(_ form: MTESyncForm) -> MTEAction? { done ? nil : program(form)[pc] }
}

extension MTEHost {
    /// Whether `t`'s next action can run: a try_page_mte_tagging that finds the lock held
    /// waits until PG_mte_tagged is set.
    public func canStep(_ t: MTESyncThread) -> Bool {
        guard !t.done else { return false }
        if case .tryLock = t.program(form)[t.pc], locked.contains(t.pfn), !tagged.contains(t.pfn) { return false }
        return true
    }

    /// Runs `t`'s next action atomically.
    public mutating func step(_ t: inout MTESyncThread) {
        let program = t.program(form)
        var swapEntry: UInt64?
        if case .swap(let e) = t.old { swapEntry = e }
        let tagged = vmas[t.vma].mte
        var next = t.pc + 1
        switch program[t.pc] {
        case .callSite(let requiresTagged, let orElse):
            // From 69e3b846d8a7 the PTE must be user-accessible (pte_access_permitted): a
            // PROT_NONE PTE is not.
            let accessible = requiresTagged || !vmas[t.vma].protNone
            if !(accessible && (tagged || (!requiresTagged && swapEntry != nil))) { next = orElse }
        case .testAndSetTagged(let j): if testAndSetTagged(t.pfn) { next = j }
        case .testTagged(let j): if pageMTETagged(t.pfn) { next = j }
        case .tryLock(let j): if !tryPageMTETagging(t.pfn) { next = j }
        case .ifNotSwap(let j): if swapEntry == nil { next = j }
        case .ifNoSavedTags(let j): if swapEntry.flatMap({ saved[$0] }) == nil { next = j }
        case .restoreFirstHalf, .restoreSecondHalf:
            let first = program[t.pc] == .restoreFirstHalf
            let source = saved[swapEntry!]!
            var page = tags.page(t.pfn)
            for g in (first ? 0..<128 : 128..<256) { page[g] = source[g] }
            tags.set(t.pfn, page)
            if !first { stats.restored += 1 }
        case .ifPTEUntagged(let j): if !tagged { next = j }
        case .clearTags: clearTags(t.pfn)
        case .setTagged: setPageMTETagged(t.pfn)
        case .writePTE:
            if let e = swapEntry { noteMapFromSwap(e, t.pfn) }
            if !t.sanitise {
                vmas[t.vma].ptes[t.page] = .present(pfn: t.pfn)
                noteMapped(vma: t.vma, page: t.page, pfn: t.pfn)
            }
        case .jump(let j): next = j
        }
        t.pc = next
        if t.pc >= program.count { t.done = true }
    }
}
