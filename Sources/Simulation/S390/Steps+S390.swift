import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The s390-pv steps: KVM's protected guests, the guests' accesses and shared pages, the
/// Ultravisor calls under Linux's names, and UVC fault injection. docs/s390-pv.md.
enum S390Steps {
    static let guest = Parameter("guest", .guest, required: true, "the protected guest")
    static let gpa = Parameter("gpa", .address(0...(1 << 53)), required: true, "a guest absolute address")
    static let pa = Parameter("pa", .physical, required: true, "the host physical (absolute) address of the page")

    static func step(_ name: String, _ summary: String, _ arguments: [Parameter],
                     _ body: @escaping @Sendable (inout StepArguments, StepContext) throws(ScenarioError) -> @Sendable (inout S390Platform, inout Machine) -> any Outcome) -> StepDefinition {
        Steps.platformStep(S390Platform.self, name, summary, arguments, body)
    }

    static let all: [StepDefinition] = [
        initVM, deinitVM, guestAccess("guest-read", write: false), guestAccess("guest-write", write: true),
        guestShare("uv_set_shared", shared: true), guestShare("uv_remove_shared", shared: false),
        convertToSecure, rawUVC("uv_convert_from_secure", "UVC_CMD_CONV_FROM_SEC_STOR on the page (export): encrypted for the host, its record kept for the next import; a page that is not secure is left as it is") { uv, pfn in uv.convertFromSecure(pfn) },
        rawUVC("uv_pin_shared", "UVC_CMD_PIN_PAGE_SHARED on the page: a page its guest shared stays shared (the guest's unshare is intercepted); anything else is refused") { uv, pfn in uv.pinShared(pfn) },
        destroyFolio, makeAccessible, failUVC,
    ]

    /// KVM_PV_ENABLE: kvm_s390_pv_init_vm with the memory slot the VMM gave.
    static let initVM = step("kvm_s390_pv_init_vm", "s390_enable_sie on the VMM's mm (THP off, huge PMDs split), then KVM_PV_ENABLE: protected_count up (its cleared PTEs export their pages from now on), the UV creates the guest's secure configuration over the memory slot [addr, addr+len); -EIO when the UV refuses",
                             [guest, UserSteps.process, Parameter("addr", .address(), required: true, "the memory slot's userspace_addr (guest absolute 0), page-aligned"),
                              Parameter("len", .address(1...(1 << 44)), required: true, "the memory slot's size in bytes (whole pages)"),
                              Parameter("vcpus", .count(1...248), default: "1", "vCPUs, each a secure CPU (UVC_CMD_CREATE_SEC_CPU)")]) { a, ctx throws(ScenarioError) in
        let i = a.guest!.index, name = a.text("process")!, addr = a.number("addr"), len = a.number("len"), vcpus = Int(a.number("vcpus"))
        guard ctx.processes.contains(where: { $0.name == name && $0.guest == nil }) else {
            throw a.field("process").error("unknown host process '\(name)'" + Suggest.hint(name, in: ctx.processes.map(\.name), listedBy: "the scenario's processes:"))
        }
        guard addr & (pageBytes - 1) == 0, len & (pageBytes - 1) == 0, addr < UserMM.taskSize, len <= UserMM.taskSize - addr else {
            throw a.field(addr & (pageBytes - 1) != 0 || addr >= UserMM.taskSize ? "addr" : "len").error("the memory slot [\(hex(addr)), +\(hex(len))) must be page-aligned and below TASK_SIZE \(hex(UserMM.taskSize))")
        }
        return { p, m in
            let pi = m.kernel.user.processIndex(name)!
            return p.kvm.initVM(i, process: pi, hva: addr, pages: len >> pageShift, vcpus: vcpus, kernel: &m.kernel, &p.uv)
        }
    }

    static let deinitVM = step("kvm_s390_pv_deinit_vm", "KVM_PV_DISABLE: the secure configuration destroyed (-EIO when the UV refuses: the mm stays protected), then every secure page of the mm (s390_uv_destroy_range: cleared, not exported), protected_count down", [guest]) { a, _ throws(ScenarioError) in
        let i = a.guest!.index
        return { p, m in p.kvm.deinitVM(i, kernel: &m.kernel, &p.uv) }
    }

    /// A protected vCPU's access, with KVM's exits until it completes or KVM gives up.
    static func guestAccess(_ name: String, write: Bool) -> StepDefinition {
        step(name, "the protected guest \(write ? "writes" : "reads") a page: DAT faults fault the VMM's page in, a non-secure page is imported (make_hva_secure); prints ok, what the import's errno did (-EAGAIN re-enters SIE, -EINVAL is SIGSEGV to the VMM), or a read that found its data changed",
             [guest, gpa, Parameter("vcpu", .count(0...247), default: "0", "the vCPU that makes the access")]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index, gpa = a.number("gpa"), vcpu = Int(a.number("vcpu"))
            return { p, m in
                guard let g = p.kvm.guests[i], gpa >> pageShift < g.pages else {
                    return p.kvm.guests[i] == nil ? PVAccessOutcome.notProtected : KernelStatus.error(.EFAULT)  // gfn_to_hva outside the slot
                }
                return p.kvm.guestAccess(i, vcpu: vcpu, gpa: gpa, write: write, kernel: &m.kernel, &p.uv)
            }
        }
    }

    /// The frame the VMM's PTE maps for guest `i`'s page at `gpa`, if any.
    static func frame(_ p: S390Platform, _ m: Machine, guest i: Int, gpa: UInt64) -> UInt64? {
        guard let g = p.kvm.guests[i], gpa >> pageShift < g.pages else { return nil }
        return m.kernel.user.mappedFrame(process: g.process, addr: g.hva + (gpa & ~(pageBytes - 1))).map(\.pfn)
    }

    static func guestShare(_ name: String, shared: Bool) -> StepDefinition {
        step(name, shared ? "the guest shares its page with the host (UVC_CMD_SET_SHARED_ACCESS, as its set_memory_decrypted does): host accesses no longer fault"
                 : "the guest takes its page back (UVC_CMD_REMOVE_SHARED_ACCESS); intercepted while the host has it pinned shared",
             [guest, gpa]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index, gpa = a.number("gpa")
            return { p, m in
                guard let g = p.kvm.guests[i], g.live else { return PVAccessOutcome.notProtected }
                let conf = g.configuration
                guard let pfn = frame(p, m, guest: i, gpa: gpa) else {
                    return UVCResult(shared ? .setSharedAccess : .removeSharedAccess, cc: 1, rc: UVCResult.rcInvalidState, "the page is not mapped")
                }
                return p.uv.setShared(guest: conf, pfn: pfn, shared: shared)
            }
        }
    }

    static let convertToSecure = step("kvm_s390_pv_convert_to_secure", "the import alone (make_hva_secure): the VMM's folio checked (large: -E2BIG then a split, locked: -EAGAIN, writeback or extra references: -EBUSY then -EAGAIN), PG_arch_1 set, UVC_CMD_CONV_TO_SEC_STOR; prints 0 or the errno with its cause",
                                      [guest, gpa]) { a, _ throws(ScenarioError) in
        let i = a.guest!.index, gpa = a.number("gpa")
        return { p, m in
            guard let g = p.kvm.guests[i], g.live else { return PVAccessOutcome.notProtected }
            guard gpa >> pageShift < g.pages else { return KernelStatus.error(.EFAULT) }
            return m.kernel.user.makeHVASecure(process: g.process, hva: g.hva + (gpa & ~(pageBytes - 1)), guest: g.configuration, gfn: gpa >> pageShift,
                                               miscFeature: p.kvm.miscFeature, &p.uv)
        }
    }

    static func rawUVC(_ name: String, _ summary: String, _ call: @escaping @Sendable (inout Ultravisor, UInt64) -> UVCResult) -> StepDefinition {
        step(name, summary, [pa]) { a, _ throws(ScenarioError) in
            let pfn = a.number("pa") >> pageShift
            return { p, _ in call(&p.uv, pfn) }
        }
    }

    static let destroyFolio = step("uv_destroy_folio", "UVC_CMD_DESTR_SEC_STOR on the folio holding the page (cleared, not exported; PG_arch_1 cleared); a large folio is never secure (0); prints 0 or -EINVAL", [pa]) { a, _ throws(ScenarioError) in
        let pfn = a.number("pa") >> pageShift
        return { p, m in
            guard m.kernel.user.folioHead(pfn) != nil else { return KernelStatus.error(.EINVAL) }
            return m.kernel.user.destroySecureFolio(pfn: pfn, &p.uv).map { KernelStatus.error($0) } ?? KernelStatus.ok
        }
    }

    static let makeAccessible = step("arch_make_folio_accessible", "the hook itself on the folio holding the page: nothing for a large folio or PG_arch_1 clear, else uv_pin_shared, else uv_convert_from_secure (export); prints 0 with what it did, or -EINVAL", [pa]) { a, _ throws(ScenarioError) in
        let pfn = a.number("pa") >> pageShift
        return { p, m in
            guard let h = m.kernel.user.folioHead(pfn) else { return ValueOutcome("0: no folio (nothing to do)") }
            switch m.kernel.user.makeFolioAccessible(head: h, &p.uv) {
            case .success(.nothing): return ValueOutcome("0: nothing to do")
            case .success(.pinnedShared): return ValueOutcome("0: pinned shared (uv_pin_shared)")
            case .success(.exported): return ValueOutcome("0: exported (uv_convert_from_secure)")
            case .failure(let e): return KernelStatus.error(e)
            }
        }
    }

    static let failUVC = step("fail_uvc", "fault injection: the next COUNT calls of a UVC answer condition code CC (2 busy, 3 partial: uv_call repeats the call, the import's single __uv_call says -EAGAIN; 1: refused, e.g. an export that fails so arch_make_folio_accessible cannot succeed)",
                              [Parameter("command", .choice(UVCCommand.allCases.map(\.shortName)), required: true, "the UVC, without UVC_CMD_ and in lowercase (conv_to_sec_stor, conv_from_sec_stor, …)"),
                               Parameter("cc", .count(1...3), default: "1", "the condition code: 1 error, 2 busy, 3 partial"),
                               Parameter("count", .count(0...1_000_000), default: "1", "how many calls (0 cancels)")]) { a, _ throws(ScenarioError) in
        let c = UVCCommand.allCases.first { $0.shortName == a.text("command")! }!, cc = UInt8(a.number("cc")), n = Int(a.number("count"))
        return { p, _ in
            p.uv.inject(c, cc: cc, count: n)
            return OK()
        }
    }

    // MARK: - Workloads

    static let workloads: [WorkloadDefinition] = [
        WorkloadDefinition("pv-swap-dio", "while the protected guest writes and reads random pages, the host swaps them out and does direct I/O on them (pin_user_pages, the device's read, a guest access while pinned, unpin); errors are guest reads that found their data changed and SIGSEGVs",
                           [guest, Parameter("operations", .count(1...1_000_000_000), default: "1", "how many operations")]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index, ops = a.number("operations")
            return { m in
                var t = WorkloadTally()
                m.withPlatform(S390Platform.self) { p, m in
                    guard let g = p.kvm.guests[i], g.live, g.pages > 0 else {
                        t.note(KernelStatus.error(.EINVAL))
                        return
                    }
                    for k in 0..<ops {
                        let gfn = m.rng.below(g.pages), hva = g.hva + gfn << pageShift
                        var r: any Outcome
                        switch m.rng.below(4) {
                        case 0: r = p.kvm.guestAccess(i, gpa: gfn << pageShift, write: true, kernel: &m.kernel, &p.uv)
                        case 1: r = p.kvm.guestAccess(i, gpa: gfn << pageShift, write: false, kernel: &m.kernel, &p.uv)
                        case 2:
                            r = p.withAccess(&m.kernel.user) { $0.swapOut(process: g.process, addr: hva, &$1) }
                        default: r = directIO(&p, &m, guest: i, process: g.process, hva: hva)
                        }
                        if r.kind == .fault || r.kind == .error { t.errors += 1; if t.first == nil { t.first = r } }
                        m.tick(k + 1, ops)
                    }
                }
                return t
            }
        },
    ]

    /// One direct I/O on guest page `hva`: pin_user_pages (FOLL_WRITE), the device reads
    /// it, the guest touches the page while it is pinned (an import meets the pin's
    /// references), then unpin.
    static func directIO(_ p: inout S390Platform, _ m: inout Machine, guest i: Int, process pi: Int, hva: UInt64) -> any Outcome {
        let r = p.withAccess(&m.kernel.user) { $0.getUserPages(process: pi, addr: hva, pages: 1, flags: GUPFlags(write: true, pin: true), &$1) }
        guard case .pages(_, let pfn, _) = r else { return r }
        p.noteAccess(pfn: pfn, write: false, device: true)
        let gpa = (hva - p.kvm.guests[i]!.hva)
        let touched = p.kvm.guestAccess(i, gpa: gpa, write: false, kernel: &m.kernel, &p.uv)
        _ = m.kernel.user.unpinUserPage(pfn: pfn)
        return touched
    }
}

extension S390Platform {
    /// `cycles` rounds on guest 0 (the bench's swap cycle): a random page of `pages`
    /// written, swapped out, read back; the reads that did not find the data.
    public mutating func benchSwapCycles(_ m: inout Machine, pages: UInt64, cycles: Int, _ rng: inout SeededGenerator) -> Int {
        guard let g = kvm.guests[0] else { return cycles }
        var bad = 0
        for _ in 0..<cycles {
            let gfn = rng.below(pages)
            if kvm.guestAccess(0, gpa: gfn << pageShift, write: true, kernel: &m.kernel, &uv) != .ok { bad += 1 }
            _ = withAccess(&m.kernel.user) { $0.swapOut(process: g.process, addr: g.hva + gfn << pageShift, &$1) }
            if kvm.guestAccess(0, gpa: gfn << pageShift, write: false, kernel: &m.kernel, &uv) != .ok { bad += 1 }
        }
        return bad
    }
}
