import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// Seed 004's question on SEV-SNP: a guest's set_memory_decrypted on one vCPU while another
/// vCPU's load_unaligned_zeropad reads across into the page. docs/explorer.md.

/// The order set_memory_decrypted changes a page in: as merged (Linux set_memory.c
/// __set_memory_enc_pgtable, v5.19 to today: flush, prepare, the PTE, flush, finish), or with
/// the PTE not present through the change, as Kelley's RFC of July 2023 proposed for every
/// CoCo guest ("x86/mm: Mark CoCo VM pages invalid while moving between private and
/// shared"); v6.8 merged it for Hyper-V's paravisor only (0f34d1123486), its cover letter
/// saying the generic form breaks SEV-SNP's PVALIDATE.
public enum EncTransition: String, CaseIterable, Sendable {
    case merged
    case notPresent = "not-present"
}

extension SNPPlatform {
    /// The explorer's form of set_memory_decrypted: a thread of guest `guest`'s vCPU.
    static let threadRoutines: [ThreadRoutineDefinition] = [
        ThreadRoutineDefinition(
            "set_memory_decrypted",
            "one page of a guest's direct map made shared, one action per step of __set_memory_enc_pgtable and the SNP hooks",
            [Steps.guest, Parameter("gpa", .address(), required: true, "the page (guest physical, page-aligned)"),
             Steps.vcpuArgument, Parameter("transition", .choice(EncTransition.allCases.map(\.rawValue)), default: "merged",
                                           "merged (today's order), or not-present (the PTE invalid through the change: Kelley's RFC)")]
        ) { a, _ throws(ScenarioError) in
            let g = a.guest!.spec, i = a.guest!.index, gpa = a.number("gpa"), vcpu = Int(a.number("cpu"))
            guard gpa & (pageBytes - 1) == 0 else { throw a.field("gpa").error("gpa \(hex(gpa)) is not page-aligned") }
            guard gpa < g.memory else { throw a.field("gpa").error("gpa \(hex(gpa)) is past \(g.name)'s \(ByteSize.format(g.memory)) of memory") }
            guard vcpu < g.vcpus else { throw a.field("cpu").error("vCPU \(vcpu) is past \(g.name)'s \(g.vcpus) vCPUs (valid: 0 to \(g.vcpus - 1))") }
            return decryptActions(guest: i, gfn: gpa >> pageShift, vcpu: vcpu, transition: EncTransition(rawValue: a.text("transition")!)!)
        },
    ]

    /// The actions, in the transition's order. Each runs in guest `i`'s kernel on the
    /// machine's SNP platform.
    static func decryptActions(guest i: Int, gfn: UInt64, vcpu: Int, transition: EncTransition) -> [ThreadAction] {
        func pte(_ label: String, set: Attributes, clear: Attributes) -> ThreadAction {
            ThreadAction(label) { m in (m.guestKernels[i].writePTE(gfn: gfn, set: set, clear: clear), false) }
        }
        func flush(_ label: String) -> ThreadAction {
            ThreadAction(label) { m in
                m.guestKernels[i].flush(gfn: gfn)
                return (OK(), false)
            }
        }
        /// PVALIDATE takes the page's virtual address: with the PTE not present it takes a
        /// #PF, which has no fixup (an oops). AMD APM Vol 3 PVALIDATE.
        let rescind = ThreadAction("enc_status_change_prepare: PVALIDATE rescind") { m in
            if m.guestKernels[i].translate(gpa: gfn << pageShift, vcpu: vcpu) == nil {
                return (m.withPlatform(SNPPlatform.self) { p, _ in
                    p.faults.guestOops += 1
                    return GuestOops(detail: "#PF in PVALIDATE: the page's address is not present")
                }, true)
            }
            let failure = m.withPlatform(SNPPlatform.self) { p, m in
                guestCalls(&p, i, &m) { _, pvalidate, _ in GuestKernel.snpPvalidate(gfn..<gfn + 1, validate: false, pvalidate: pvalidate) }
            }
            return (failure, !failure.isOK)
        }
        let psc = ThreadAction("enc_status_change_prepare: page-state change to shared (VMGEXIT)") { m in
            let failure = m.withPlatform(SNPPlatform.self) { p, m in
                guestCalls(&p, i, &m) { _, _, vmgexit in GuestKernel.snpPageStateChange(gfn..<gfn + 1, toPrivate: false, vmgexit: vmgexit) }
            }
            return (failure.map { $0 as any Outcome } ?? OK(), failure != nil)
        }
        let cbit = pte("__change_page_attr_set_clr: the C-bit cleared", set: [], clear: .encrypted)
        let finish = ThreadAction("enc_status_change_finish: nothing to do when decrypting") { _ in (OK(), false) }
        switch transition {
        case .merged:
            return [flush("cpa_flush before the change"), rescind, psc, cbit, flush("cpa_flush after the change"), finish]
        case .notPresent:
            return [pte("set_memory_np: the PTE not present", set: [], clear: .present), flush("set_memory_np's flush"),
                    rescind, psc, cbit, finish, pte("set_memory_p: the PTE present", set: .present, clear: []), flush("set_memory_p's flush")]
        }
    }

    public func footprintDigest(guest: Int, gpa: UInt64) -> UInt64 {
        guard guest < kvm.vms.count else { return 0 }
        let pfn = (kvm.vms[guest].config.placement + gpa) >> pageShift
        return rmp.covers(pfn) ? Digest.of(rmp[pfn]) : 0
    }
}

/// A guest kernel fault with no fixup: an oops.
public struct GuestOops: Outcome, Hashable {
    public let detail: String
    public var kind: OutcomeKind { .fault }
    public var description: String { "guest oops (\(detail))" }
}

/// load_unaligned_zeropad's read crossing into a page that faulted: ex_handler_zeropad fixed
/// it up (the fault address is the aligned address + 8) and the bytes past the page read as
/// zero. Linux arch/x86/mm/extable.c ex_handler_zeropad.
public struct ZeropadFixedUp: Outcome, Hashable {
    /// The exception the read took in the next page: a #PF (not present), or in a TDX guest
    /// the #VE that handle_mmio refused because the access crossed a page.
    public var exception = "#PF"
    /// The fixup: x86's ex_handler_zeropad, arm64's ex_handler_load_unaligned_zeropad.
    public var handler = "ex_handler_zeropad"
    public var kind: OutcomeKind { .success }
    public var description: String { "\(exception) fixed up by \(handler) (the next page's bytes read as zero)" }
}

extension Steps {
    /// load_unaligned_zeropad: an 8-byte read at `gpa` through the guest's direct map on a
    /// vCPU. A word crossing into the next page reads that page too: not present there is a
    /// #PF that ex_handler_zeropad fixes up; present, the access meets the RMP check with its
    /// C-bit, and a #VC(0x404) has no fixup (vc_handle_exitcode: ES_UNSUPPORTED, then
    /// sev_es_terminate). A fault on the first page is not fixed up. Linux
    /// arch/x86/include/asm/word-at-a-time.h, arch/x86/mm/extable.c, arch/x86/coco/sev.
    static let loadUnalignedZeropad = platformStep(
        "load_unaligned_zeropad", "the guest kernel reads 8 bytes that may cross into the next page: a #PF there is fixed up, a #VC is not",
        [guest, gpa, vcpuArgument]
    ) { a, _ throws(ScenarioError) in
        let (vcpu, _) = try guestAccessArguments(a)
        let i = a.guest!.index, g = a.guest!.spec
        let first = try guestAddress(a, g), second = (first & ~7) + 8
        return { p, m in
            var pages = [first & ~(pageBytes - 1)]
            if first & 7 != 0, second & (pageBytes - 1) == 0, second < g.memory { pages.append(second) }
            for (n, page) in pages.enumerated() {
                guard let (gpa, priv) = guestTranslate(&m, guest: i, gpa: page, vcpu: vcpu, private: nil) else {
                    if n == 0 {
                        p.faults.guestOops += 1
                        return GuestOops(detail: "#PF on the word's own page: no fixup")
                    }
                    p.faults.zeropadFixups += 1
                    return ZeropadFixedUp()
                }
                if let refused = notRunning(p, i) { return refused }
                let r = p.kvm.access(i, gpa: gpa, write: false, private: priv, kernel: &m.kernel, rmp: &p.rmp)
                // The RMP check's answer, when KVM let the access reach it (not an exit).
                if let step = r.outcome as? KVM<SNPBackend>.GuestStepResult, step.stopped == nil, let hw = step.outcome {
                    p.count(hw)
                    if hw != .ok { return r }
                } else if r.kind != .success {
                    return r
                }
            }
            return OK()
        }
    }
}
