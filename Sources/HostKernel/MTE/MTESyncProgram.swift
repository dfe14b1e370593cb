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
    /// mte_restore_page_tags, one part of the page's tags per action: the action repeats
    /// until every part is written (`MTEHost.restoreSteps` parts, two halves by default; the
    /// loop's STGM stores are 16 to 256 a page, by GMID_EL1.BS). arch/arm64/lib/mte.S.
    case restore
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
        case .restore: "mte_restore_page_tags"
        case .ifPTEUntagged(let j): "pte_tagged(pte) (no → \(j))"
        case .clearTags: "mte_clear_page_tags"
        case .setTagged: "set_page_mte_tagged"
        case .writePTE: "set_pte"
        case .jump(let j): "→ \(j)"
        }
    }
}

extension MTESyncForm {
    /// set_pte_at's MTE part in this form, for one small page, as its atomic actions (built
    /// once: the explorer and every swap-in run them).
    public var program: [MTEAction] {
        switch self {
        case .v5_10: Self.programs.v5_10
        case .v5_14: Self.programs.v5_14
        case .v5_14Stable: Self.programs.v5_14Stable
        case .v6_1Lock: Self.programs.v6_1Lock
        }
    }

    private static let programs = (v5_10: MTESyncForm.v5_10.buildProgram, v5_14: MTESyncForm.v5_14.buildProgram,
                                   v5_14Stable: MTESyncForm.v5_14Stable.buildProgram, v6_1Lock: MTESyncForm.v6_1Lock.buildProgram)

    private var buildProgram: [MTEAction] {
        switch self {
        case .v5_10:
            // mte_sync_tags: if (!test_and_set_bit) mte_sync_page_tags: restore or clear.
            return [.callSite(requiresTaggedPTE: true, orElse: 7), .testAndSetTagged(ifWasSet: 7), .ifNotSwap(6), .ifNoSavedTags(6),
                    .restore, .jump(7), .clearTags, .writePTE]
        case .v5_14:
            // 69e3b846d8a7: called for swap entries too; cleared only when pte_tagged.
            return [.callSite(requiresTaggedPTE: false, orElse: 8), .testAndSetTagged(ifWasSet: 8), .ifNotSwap(6), .ifNoSavedTags(6),
                    .restore, .jump(8), .ifPTEUntagged(8), .clearTags, .writePTE]
        case .v5_14Stable:
            // a8e5e5146ad0: test_bit first; test_and_set_bit where tags are restored or cleared.
            return [.callSite(requiresTaggedPTE: false, orElse: 10), .testTagged(ifSet: 10), .ifNotSwap(7), .ifNoSavedTags(7),
                    .testAndSetTagged(ifWasSet: 10), .restore, .jump(10),
                    .ifPTEUntagged(10), .testAndSetTagged(ifWasSet: 10), .clearTags, .writePTE]
        case .v6_1Lock:
            // d77e59a8fccd: page_mte_tagged; mte_restore_tags under the lock, then the clear.
            return [.callSite(requiresTaggedPTE: false, orElse: 11), .testTagged(ifSet: 11), .ifNotSwap(7), .ifNoSavedTags(7),
                    .tryLock(ifHeld: 7), .restore, .setTagged,
                    .ifPTEUntagged(11), .tryLock(ifHeld: 11), .clearTags, .setTagged, .writePTE]
        }
    }
}

extension MTESyncForm {
    /// user_mem_abort's MTE part for one page, as its atomic actions: sanitise_mte_tags
    /// (test_bit then clear and set before the lock; try_page_mte_tagging from d77e59a8fccd),
    /// then the stage-2 map. Linux arch/arm64/kvm/mmu.c.
    public var sanitiseProgram: [MTEAction] { self == .v6_1Lock ? Self.sanitiseLock : Self.sanitiseTestBit }

    private static let sanitiseTestBit: [MTEAction] = [.testTagged(ifSet: 3), .clearTags, .setTagged, .writePTE]
    private static let sanitiseLock: [MTEAction] = [.tryLock(ifHeld: 3), .clearTags, .setTagged, .writePTE]
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
    /// The parts of the tag restore written so far (0 outside the loop).
    public var restored = 0
    public var done = false
    public init(vma: Int, page: Int, pfn: UInt64, old: UserPTE, sanitise: Bool = false) {
        self.vma = vma
        self.page = page
        self.pfn = pfn
        self.old = old
        self.sanitise = sanitise
    }

    /// Its place and what it maps, folded for the explorer's state key (no Hasher).
    public var digest: UInt64 {
        var old: UInt64
        switch self.old {
        case .none: old = 0
        case .present(let p): old = p << 2 | 1
        case .swap(let e): old = e << 2 | 2
        }
        var d = Digest.combine(UInt64(vma) << 32 | UInt64(page), pfn)
        d = Digest.combine(d, old)
        return Digest.combine(d, UInt64(pc) << 32 | UInt64(restored) << 2 | (sanitise ? 2 : 0) | (done ? 1 : 0))
    }

    /// The program it runs in `form`.
    public func program(_ form: MTESyncForm) -> [MTEAction] { sanitise ? form.sanitiseProgram : form.program }
    /// The action it runs next.
    public func next(_ form: MTESyncForm) -> MTEAction? { done ? nil : program(form)[pc] }
    /// The action it runs next, as a listing shows it (a restore with the granules it writes).
    public func describeNext(_ form: MTESyncForm, restoreSteps n: Int) -> String? {
        guard let a = next(form) else { return nil }
        guard a == .restore else { return a.description }
        let per = MTETags.granulesPerPage / n
        return "mte_restore_page_tags, granules \(restored * per)-\((restored + 1) * per - 1)"
    }
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
        case .restore:
            let n = restoreSteps, per = MTETags.granulesPerPage / n
            var page = tags.page(t.pfn)
            page.copy(from: saved[swapEntry!]!, granules: t.restored * per..<(t.restored + 1) * per)
            tags.set(t.pfn, page)
            t.restored += 1
            if t.restored < n {
                next = t.pc
            } else {
                stats.restored += 1
                t.restored = 0  // a count only inside the loop: states after it do not differ by it
            }
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
