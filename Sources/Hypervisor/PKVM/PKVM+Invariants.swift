import Hardware
import HostKernel
import PageTables

extension PKVM {
    /// The state tuple of one page as the ownership selftest checks it: host, hyp, and the
    /// guest's state at `gfn` and `gfn + 1` when a guest is named.
    /// Linux mem_protect.c assert_page_state.
    public func stateTuple(pa: UInt64, guest: Int?, gfn: UInt64) -> [PKVMPageState] {
        var t = [hostState(pa), hypState(pa)]
        if let g = guest { t += [guestState(g, ipa: gfn << pageShift), guestState(g, ipa: (gfn + 1) << pageShift)] }
        return t
    }

    /// Every page's states form one of the valid tuples (the forms the ownership selftest
    /// walks through): the host owns it and nobody else maps it; the host shares it with
    /// exactly one kind of borrower (the hypervisor, FF-A, or guests as many as the share
    /// count); or exactly one other component owns it, recorded by an owner annotation in
    /// the host stage-2. And a page a protected guest wrote never comes back to the host
    /// without EL2 wiping it first (seed 003: "it's up to the EL2 code to hand over suitably
    /// scrubbed pages"). Checked in PFN order, so the first violation is always the same.
    public func checkInvariants() throws(InvariantViolation) {
        let name = "pkvm-ownership"
        var mapped: [UInt64: [(guest: Int, gfn: UInt64, state: PKVMPageState)]] = [:]
        for (g, vm) in guests.enumerated() {
            let leaves: [Leaf]
            do { leaves = try vm.stage2.leaves(virt: VirtAddr(0), size: 1 << Self.guestIPABits) } catch {
                throw InvariantViolation(name, "\(vm.name)'s stage-2 cannot be walked: \(error)")
            }
            for leaf in leaves where leaf.descriptor.isPresentLeaf {
                for i in 0..<leaf.size.pages {
                    mapped[leaf.phys.pfn.rawValue + i, default: []].append((g, (leaf.virt.rawValue >> pageShift) + i, PKVMPageState.guest(leaf.descriptor)))
                }
            }
        }
        let pfns = Set(vmemmap.keys).union(mapped.keys).union(donated.keys).union(contents.keys).sorted()
        for pfn in pfns {
            let p = page(pfn), maps = mapped[pfn] ?? [], pa = pfn << pageShift
            let tuple = "host \(p.host), hyp \(p.hyp), share count \(p.hostShareGuestCount), refcount \(p.refcount), "
                + (maps.isEmpty ? "no guest mapping" : maps.map { "\(guests[$0.guest].name)[\(hex($0.gfn))] \($0.state)" }.joined(separator: ", "))
            func fail(_ why: String) -> InvariantViolation { InvariantViolation(name, "page \(hex(pa)): \(why) (\(tuple))") }
            let annotation = hostStage2.entry(holding: VirtAddr(pa))
            if p.refcount != 0 && !(p.host == .sharedOwned && p.hyp == .sharedBorrowed) { throw fail("pinned by the hypervisor but not shared with it") }
            switch p.host {
            case .owned:
                guard p.hyp == .noPage, p.hostShareGuestCount == 0, maps.isEmpty, donated[pfn] == nil else { throw fail("the host owns it but another component maps it") }
                if annotation.entry.pkvmOwner != nil { throw fail("the host owns it but its host stage-2 entry names an owner") }
            case .sharedOwned:
                let borrowers = (p.hyp == .sharedBorrowed ? 1 : 0) + (p.hostShareGuestCount > 0 ? 1 : 0)
                guard p.hyp == .sharedBorrowed || p.hyp == .noPage, borrowers <= 1 else { throw fail("shared with more than one kind of borrower") }
                guard maps.count == Int(p.hostShareGuestCount), maps.allSatisfy({ $0.state == .sharedBorrowed }) else {
                    throw fail("the share count differs from the guests that borrow it")
                }
            case .noPage:
                if p.hyp == .owned {
                    guard maps.isEmpty, donated[pfn] == nil else { throw fail("owned by the hypervisor and mapped by a guest") }
                    guard annotation.level == 1, annotation.entry.pkvmOwner == .hyp else { throw fail("owned by the hypervisor without a 4K PKVM_ID_HYP annotation in the host stage-2") }
                } else {
                    guard p.hyp == .noPage, let d = donated[pfn], maps.count == 1, maps[0].guest == d.guest, maps[0].gfn == d.gfn, maps[0].state == .owned else {
                        throw fail("the host has no access but no single other component owns it")
                    }
                    guard annotation.level == 1, annotation.entry.pkvmOwner == .guest else { throw fail("owned by a guest without a 4K PKVM_ID_GUEST annotation in the host stage-2") }
                }
            case .sharedBorrowed:
                throw fail("the host borrows a page, which no modelled transition does")
            }
            if case .guest(let g) = pageContents(pa), guests[g].isProtected, p.host != .noPage {
                throw fail("the host can reach data protected guest \(guests[g].name) wrote: the page was not wiped")
            }
        }
    }
}
