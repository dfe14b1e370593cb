import Hardware
import HostKernel
import Hypervisor
import PageTables

/// A hypervisor BUG_ON: EL2 panics (hyp_panic) and takes the host with it.
public struct HypBug: Outcome, Hashable {
    public let reason: String
    public var kind: OutcomeKind { .fault }
    public var description: String { "BUG: \(reason) (hyp_panic)" }
}

/// A pKVM guest's access through its stage-2.
public enum PKVMGuestAccess: Outcome, Hashable {
    /// The access went through; a read says whose data the page holds.
    case ok(read: PageContentsName?)
    /// Nothing mapped at the IPA: a stage-2 translation fault, an exit for the host to map
    /// (donate or share) a page.
    case notMapped
    /// A write to a page the guest may only read: a stage-2 permission fault.
    case permission

    public var kind: OutcomeKind { if case .ok = self { return .success }; return .fault }
    public var description: String {
        switch self {
        case .ok(nil): "ok"
        case .ok(let c?): "ok (reads \(c))"
        case .notMapped: "stage-2 fault: not mapped (exit to the host)"
        case .permission: "stage-2 fault: permission"
        }
    }
}

/// Whose data a page holds, named for output.
public struct PageContentsName: Hashable, Sendable, CustomStringConvertible {
    public let description: String
    init(_ c: PageContents, guests: [GuestSpec]) {
        switch c {
        case .host: description = "the host's data"
        case .guest(let g): description = "\(guests[g].name)'s data"
        case .zeros: description = "zeros"
        }
    }
}

/// What the host's swap path did with a page.
public enum SwapOutcome: Outcome, Hashable {
    case swappedOut(unsharedFrom: Int)
    case kept(String)
    public var kind: OutcomeKind { .success }
    public var description: String {
        switch self {
        case .swappedOut(0): "ok (swapped out)"
        case .swappedOut(let n): "ok (swapped out after the MMU notifier unshared it from \(n) guest\(n == 1 ? "" : "s"))"
        case .kept(let why): "kept: \(why)"
        }
    }
}

/// The pKVM steps: each ownership transition under its Linux name without the leading
/// underscores, the selftest's state tuple, guest accesses through their stage-2, teardown
/// and reclaim, and the host-side paths the seed asks about (MTE, swap).
extension Steps {
    static let pkvmPA = Parameter("pa", .address(0...(1 << UInt64(PKVM.hostIPABits)) - 1), required: true,
                                  "physical address, page-aligned (the hypercall takes a pfn); outside RAM it is MMIO")
    static let nrPages = Parameter("nr_pages", .count(0...(1 << 18)), default: "1", "pages (the model takes at most 262144, 1G, in one call)")
    static let pkvmGFN = Parameter("gfn", .address(0...(1 << UInt64(PKVM.guestIPABits - 12)) - 1), required: true,
                                   "guest frame number (the guest's IPA space is \(PKVM.guestIPABits) bits)")
    static let prot = Parameter("prot", .letters("RWXDN"), default: "RWX",
                                "the guest's protection: R, W, X (KVM_PGTABLE_PROT_R/W/X), D (DEVICE) or N (NORMAL_NC), which the hypervisor refuses")

    static let pkvm: [StepDefinition] = [
        pkvmHostShareHypStep,
        pkvmHostUnshareHypStep,
        pkvmHostDonateHypStep,
        pkvmHypDonateHostStep,
        pkvmHostShareFfaStep,
        pkvmHostUnshareFfaStep,
        pkvmHostShareGuestStep,
        pkvmHostUnshareGuestStep,
        pkvmHostDonateGuestStep,
        pkvmGuestRelinquishToHostStep,
        hypPinSharedMemStep,
        hypUnpinSharedMemStep,
        pkvmHostForceReclaimPageGuestStep,
        pkvmTeardownVmStep,
        kvmEnableCapStep,
        pkvmStateStep,
        pageContentsStep,
        pkvmGuestAccess("guest-read", write: false), pkvmGuestAccess("guest-write", write: true),
        swapOutStep,
    ]

    static let pkvmHostShareHypStep = transition("pkvm_host_share_hyp", "__pkvm_host_share_hyp: share a host page with the hypervisor", [pkvmPA]) { p, a, _ in
        p.pkvm.hostShareHyp(pfn: a.pfn)
    }

    static let pkvmHostUnshareHypStep = transition("pkvm_host_unshare_hyp", "__pkvm_host_unshare_hyp: take back a page shared with the hypervisor (-EBUSY while pinned)", [pkvmPA]) { p, a, _ in
        p.pkvm.hostUnshareHyp(pfn: a.pfn)
    }

    static let pkvmHostDonateHypStep = transition("pkvm_host_donate_hyp", "__pkvm_host_donate_hyp: give host pages to the hypervisor", [pkvmPA, nrPages]) { p, a, _ in
        p.pkvm.hostDonateHyp(pfn: a.pfn, nrPages: a.nrPages)
    }

    static let pkvmHypDonateHostStep = transition("pkvm_hyp_donate_host", "__pkvm_hyp_donate_host: the hypervisor gives pages back to the host", [pkvmPA, nrPages]) { p, a, _ in
        p.pkvm.hypDonateHost(pfn: a.pfn, nrPages: a.nrPages)
    }

    static let pkvmHostShareFfaStep = transition("pkvm_host_share_ffa", "__pkvm_host_share_ffa: share host pages over FF-A (with the secure world)", [pkvmPA, nrPages]) { p, a, _ in
        p.pkvm.hostShareFFA(pfn: a.pfn, nrPages: a.nrPages)
    }

    static let pkvmHostUnshareFfaStep = transition("pkvm_host_unshare_ffa", "__pkvm_host_unshare_ffa: take back pages shared over FF-A", [pkvmPA, nrPages]) { p, a, _ in
        p.pkvm.hostUnshareFFA(pfn: a.pfn, nrPages: a.nrPages)
    }

    static let pkvmHostShareGuestStep = transition("pkvm_host_share_guest", "__pkvm_host_share_guest: share a page or an aligned 2M block with a (non-protected) guest at gfn",
               [pkvmPA, guest, pkvmGFN, nrPages, prot]) { p, a, _ in
        p.pkvm.hostShareGuest(pfn: a.pfn, gfn: a.gfn, nrPages: a.nrPages, guest: a.guest, prot: a.prot)
    }

    static let pkvmHostUnshareGuestStep = transition("pkvm_host_unshare_guest", "__pkvm_host_unshare_guest: take back what the host shared with a guest at gfn",
               [guest, pkvmGFN, nrPages]) { p, a, _ in
        p.pkvm.hostUnshareGuest(gfn: a.gfn, nrPages: a.nrPages, guest: a.guest)
    }

    static let pkvmHostDonateGuestStep = transition("pkvm_host_donate_guest", "__pkvm_host_donate_guest: give host pages to a protected guest at gfn; they keep their contents",
               [pkvmPA, guest, pkvmGFN, nrPages]) { p, a, _ in
        p.pkvm.hostDonateGuest(pfn: a.pfn, gfn: a.gfn, nrPages: a.nrPages, guest: a.guest)
    }

    static let pkvmGuestRelinquishToHostStep = transition("pkvm_guest_relinquish_to_host", "__pkvm_guest_relinquish_to_host: the guest gives the page at gfn back; EL2 wipes it first. Prints the page's address",
               [guest, pkvmGFN]) { p, a, _ in
        let (status, pa) = p.pkvm.guestRelinquishToHost(guest: a.guest, ipa: a.gfn << pageShift)
        if pa == 0 || status != .ok { return status }
        return AnnotatedOutcome(status, notes: ["pa \(hex(pa))"])
    }

    static let hypPinSharedMemStep = transition("hyp_pin_shared_mem", "hyp_pin_shared_mem: the hypervisor pins pages the host shares with it", [pkvmPA, nrPages]) { p, a, _ in
        if let status = p.pkvm.hypPinSharedMem(pfn: a.pfn, nrPages: a.nrPages) { return status }
        return HypBug(reason: "hyp_page_ref_inc on a refcount at USHRT_MAX")
    }

    static let hypUnpinSharedMemStep = transition("hyp_unpin_shared_mem", "hyp_unpin_shared_mem: the hypervisor drops its pins (returns nothing)", [pkvmPA, nrPages]) { p, a, _ in
        if p.pkvm.hypUnpinSharedMem(pfn: a.pfn, nrPages: a.nrPages) { return OK() }
        return HypBug(reason: "hyp_page_ref_dec on a page with refcount 0")
    }

    static let pkvmHostForceReclaimPageGuestStep = transition("pkvm_host_force_reclaim_page_guest", "__pkvm_host_force_reclaim_page_guest (7.0): the host takes back a donated page; EL2 wipes it first", [pkvmPA]) { p, a, _ in
        p.pkvm.hostForceReclaimPageGuest(pfn: a.pfn)
    }

    static let pkvmTeardownVmStep = transition("pkvm_teardown_vm", "the VM's teardown: the host reclaims each page (__pkvm_host_reclaim_page), wiped if the guest owned it", [guest]) { p, a, _ in
        let (reclaimed, poisoned) = p.pkvm.teardown(guest: a.guest)
        return AnnotatedOutcome(OK(), notes: ["\(reclaimed) page\(reclaimed == 1 ? "" : "s") reclaimed, \(poisoned) wiped"])
    }

    static let kvmEnableCapStep = transition("kvm_enable_cap", "KVM_ENABLE_CAP on a VM: KVM_CAP_ARM_MTE needs MTE (machine.mte) and a VM that is not protected (kvm_pkvm_ext_allowed)",
               [guest, Parameter("cap", .choice(["KVM_CAP_ARM_MTE"]), required: true, "the capability")], checksVM: false) { p, a, m in
        p.pkvm.enableMTE(guest: a.guest, systemSupportsMTE: m.kernel.config.mte)
    }

    static let pkvmStateStep = platformStep(PKVMPlatform.self, "pkvm-state", "the page's states as the ownership selftest checks them: host/hyp, then the guest's at gfn and gfn + 1",
                 [pkvmPA, Parameter("guest", .guest, "the guest whose stage-2 to read too"), Parameter("gfn", .address(0...(1 << UInt64(PKVM.guestIPABits - 12)) - 2), "with guest: the first guest frame")]) { a, ctx throws(ScenarioError) in
        let pa = try pagePA(a, ctx), guest = a.guest?.index, gfn = a.number("gfn")
        if guest != nil && !a.has("gfn") { throw a.fields.owner.error("with 'guest', 'gfn' is required") }
        if guest == nil && a.has("gfn") { throw a.field("gfn").error("'gfn' goes with 'guest'") }
        return { p, _ in ValueOutcome(p.pkvm.stateTuple(pa: pa, guest: guest, gfn: gfn).map(\.description).joined(separator: "/")) }
    }

    static let pageContentsStep = platformStep(PKVMPlatform.self, "page-contents", "whose data the page holds: the host's, a guest's, or zeros after EL2 wiped it", [pkvmPA]) { a, ctx throws(ScenarioError) in
        let pa = try pagePA(a, ctx), guests = ctx.guests
        return { p, _ in ValueOutcome(PageContentsName(p.pkvm.pageContents(pa), guests: guests).description) }
    }

    static let swapOutStep = platformStep(PKVMPlatform.self, "swap-out", "the host's reclaim tries to swap the page out: pages pinned for a protected guest stay; pages shared with guests are unshared first (MMU notifier)", [pkvmPA]) { a, ctx throws(ScenarioError) in
        let pa = try pagePA(a, ctx)
        return { p, m in
            let r = p.swapOut(pa: pa)
            p.flushHost(&m.kernel)
            return r
        }
    }

    /// A transition's arguments, read once.
    struct PKVMArguments: Sendable {
        let pfn: UInt64, gfn: UInt64, nrPages: UInt64, guest: Int, prot: PKVM.Prot
    }

    /// A pKVM step that calls into EL2: its `pa` page-aligned; a torn-down VM is -EINVAL (no
    /// VM has its handle any more, as the hypercall handlers find); EL2's host-VMID
    /// invalidations reach the host CPUs after it.
    static func transition(
        _ name: String, _ summary: String, _ arguments: [Parameter], checksVM: Bool = true,
        _ body: @escaping @Sendable (inout PKVMPlatform, PKVMArguments, Machine) -> any Outcome
    ) -> StepDefinition {
        platformStep(PKVMPlatform.self, name, summary, arguments) { a, ctx throws(ScenarioError) in
            let pa = a.number("pa")
            if a.has("pa") && pa & (pageBytes - 1) != 0 { throw a.field("pa").error("\(hex(pa)) is not page-aligned: \(name) takes a page frame number") }
            var prot: PKVM.Prot = []
            for c in a.text("prot") ?? "" {
                prot.insert(["R": .r, "W": .w, "X": .x, "D": .device, "N": .normalNC][c]!)
            }
            let args = PKVMArguments(pfn: pa >> pageShift, gfn: a.number("gfn"), nrPages: a[number: "nr_pages"] ?? 1, guest: a.guest?.index ?? 0, prot: prot)
            let namesVM = a.guest != nil && checksVM
            return { p, m in
                if namesVM && p.pkvm.guests[args.guest].tornDown { return KernelStatus.error(.EINVAL) }
                let r = body(&p, args, m)
                p.flushHost(&m.kernel)
                return r
            }
        }
    }

    /// A `pa` that must be a page of RAM (the vmemmap covers RAM only).
    static func pagePA(_ a: StepArguments, _ ctx: StepContext) throws(ScenarioError) -> UInt64 {
        let pa = a.number("pa")
        guard pa & (pageBytes - 1) == 0 else { throw a.field("pa").error("\(hex(pa)) is not page-aligned") }
        guard ctx.kernel.memory.isRAM(pa..<pa + pageBytes) else {
            throw a.field("pa").error("\(hex(pa)) is not RAM (the hypervisor's vmemmap covers RAM only); RAM is "
                + ctx.kernel.memory.ram.map { "[\(hex($0.lowerBound))-\(hex($0.upperBound)))" }.joined(separator: " "))
        }
        return pa
    }

    static func pkvmGuestAccess(_ name: String, write: Bool) -> StepDefinition {
        platformStep(PKVMPlatform.self, name, "the guest \(write ? "writes" : "reads") the page at gfn through its stage-2" + (write ? "" : "; the result says whose data it sees"),
                     [guest, pkvmGFN]) { a, ctx throws(ScenarioError) in
            let g = a.guest!.index, ipa = a.number("gfn") << pageShift, guests = ctx.guests
            return { p, _ in
                guard !p.pkvm.guests[g].tornDown, let r = p.pkvm.guestAccess(guest: g, ipa: ipa, write: write) else { return PKVMGuestAccess.notMapped }
                guard r.allowed else { return PKVMGuestAccess.permission }
                return PKVMGuestAccess.ok(read: write ? nil : PageContentsName(p.pkvm.pageContents(r.pa), guests: guests))
            }
        }
    }
}

extension PKVMPlatform {
    /// The host's reclaim of one page (shrink_folio_list): a page the host pinned long-term
    /// for a protected guest stays (try_to_unmap fails on a maybe-DMA-pinned folio, which
    /// is reactivated: mm/rmap.c try_to_unmap_one, mm/vmscan.c); pages shared with the
    /// hypervisor or FF-A are kernel memory, not on the LRU; pages the host shares with
    /// guests are unshared from each first (kvm_unmap_gfn_range → __pkvm_host_unshare_guest);
    /// the host's own pages go.
    mutating func swapOut(pa: UInt64) -> SwapOutcome {
        let pfn = pa >> pageShift, page = pkvm.page(pfn)
        if pkvm.isDonated(pfn) { return .kept("pinned with FOLL_LONGTERM for a protected guest (folio_maybe_dma_pinned), so try_to_unmap fails and the folio is reactivated") }
        switch page.host {
        case .noPage: return .kept("not the host's: donated to the hypervisor")
        case .sharedOwned where page.hostShareGuestCount == 0:
            return .kept("kernel memory shared with \(page.hyp == .sharedBorrowed ? "the hypervisor" : "FF-A"), not on the LRU")
        case .sharedOwned:
            var unshared = 0
            for g in pkvm.guests.indices {
                let leaves = (try? pkvm.guests[g].stage2.leaves(virt: VirtAddr(0), size: 1 << PKVM.guestIPABits)) ?? []
                for leaf in leaves where leaf.descriptor.isPresentLeaf && leaf.phys.pfn.rawValue <= pfn && pfn < leaf.phys.pfn.rawValue + leaf.size.pages {
                    if pkvm.hostUnshareGuest(gfn: leaf.virt.rawValue >> pageShift, nrPages: leaf.size.pages, guest: g) == .ok { unshared += 1 }
                }
            }
            return .swappedOut(unsharedFrom: unshared)
        default: return .swappedOut(unsharedFrom: 0)
        }
    }
}
