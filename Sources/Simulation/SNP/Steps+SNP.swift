import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The SEV-SNP steps: each RMP instruction under its lowercase name, rmp_make_*, DMA and
/// direct guest accesses, and KVM's launch, teardown, page-state changes and guest accesses.
/// Results print as the APM and Linux name them (`ok (CF=1)`, `FAIL_OVERLAP`, `#PF(RMP)`,
/// `NPF(RMP|ENC|SIZEM)`, `#VC(0x404)`).
extension Steps {
    static let spa = Parameter("spa", .physical, required: true, "system physical address")
    static let guest = Parameter("guest", .guest, required: true, "the guest")
    static let gpa = Parameter("gpa", .address(), required: true, "guest physical address")
    /// The GPA an RMP entry records: GPA[50:12] (Linux struct rmpentry, 51 bits).
    static let rmpGPA = Parameter("gpa", .width(bits: 51, holder: "an RMP entry's GPA field"), default: "0", "guest physical address")
    static let size4K2M = Parameter("size", .choice(["4K", "2M"]), default: "4K", "page size")
    static func vmpl(_ name: String, required: Bool = false, _ help: String) -> Parameter {
        Parameter(name, .count(0...3), default: required ? nil : "0", required: required, help)
    }

    /// `issuer:` on a guest instruction: the guest (default) or the hypervisor, which #GPs.
    static let guestIssuer = Parameter("issuer", .choice(RMP.Issuer.allCases.map(\.rawValue)), default: "guest",
                                       "who executes it: the guest, or the hypervisor (#GP(0))")
    /// `issuer:` on a hypervisor instruction: only the hypervisor is modelled.
    static let hostIssuer = Parameter("issuer", .choice(RMP.Issuer.allCases.map(\.rawValue)), default: "hypervisor",
                                      "who executes it: the hypervisor (a guest is not modelled: the sources disagree)")

    /// A hypervisor instruction's `issuer: guest` is refused: Microsoft's intrinsic docs give
    /// FAIL_PERMISSION ("the current ASID isn't zero") and the nested-SNP patch says these
    /// instructions cannot be trapped, while verismo raises #GP; the APM text was not
    /// available to settle it (docs/SNP-HARDWARE.md).
    static func checkHostIssuer(_ a: StepArguments, _ name: String) throws(ScenarioError) {
        guard a.text("issuer") == RMP.Issuer.guest.rawValue else { return }
        throw a.field("issuer").error("\(name) executed by a guest is not modelled: the sources disagree (FAIL_PERMISSION in Microsoft's "
            + "intrinsic docs, #GP in verismo; docs/SNP-HARDWARE.md); valid: hypervisor")
    }

    static let snp: [StepDefinition] = rmpInstructions + [rmpMakeStep(private: true), rmpMakeStep(private: false)] + guestAccess + kvm

    static let rmpInstructions: [StepDefinition] = [
        snpStep("rmpupdate", "RMPUPDATE: assign or unassign a 4K or 2M RMP entry",
                [spa, Parameter("assigned", .bool, required: true, "assign (true) or return to the hypervisor (false)"),
                 Parameter("asid", .count(0...0xffff_ffff), default: "0", "owner ASID"),
                 rmpGPA, size4K2M,
                 Parameter("immutable", .bool, default: "false", "the Immutable bit"), hostIssuer]) { a, _ throws(ScenarioError) in
            try checkHostIssuer(a, "RMPUPDATE")
            let spa = a.number("spa")
            let u = RMPUpdate(gpa: a.number("gpa"), assigned: a.bool("assigned"), size: size(a), immutable: a.bool("immutable"),
                              asid: UInt32(truncatingIfNeeded: a.number("asid")))
            return { p, _ in .status(p.rmp.rmpupdate(spa: spa, u)) }
        },
        snpStep("psmash", "PSMASH: split a 2M RMP entry into 512 4K entries",
                [Parameter("spa", .physical, required: true, "2M-aligned system physical address"), hostIssuer]) { a, _ throws(ScenarioError) in
            try checkHostIssuer(a, "PSMASH")
            let spa = a.number("spa")
            return { p, _ in .status(p.rmp.psmash(spa: spa)) }
        },
        snpStep("rmpread", "RMPREAD: an RMP entry in the RMPREAD format", [spa]) { a, _ throws(ScenarioError) in
            let spa = a.number("spa")
            return { p, _ in p.rmp.rmpread(spa: spa) }
        },
        snpStep("dump_rmpentry", "the raw RMP entry as Linux's dump_rmpentry prints it, with the firmware's page-state name", [spa]) { a, _ throws(ScenarioError) in
            let spa = a.number("spa")
            return { p, _ in
                .read(.dump(pfn: spa >> pageShift, p.rmp[spa >> pageShift]))
            }
        },
        snpStep("pvalidate", "PVALIDATE: the guest validates or rescinds a page",
                [guest, gpa, size4K2M, Parameter("validate", .bool, required: true, "validate (true) or rescind (false)"),
                 vmpl("vmpl", "VMPL executing it (#GP(0) below VMPL0)"), guestIssuer]) { a, _ throws(ScenarioError) in
            let ctx = try guestContext(a, vmplArgument: "vmpl")
            let sz = size(a), v = a.bool("validate"), host = a.text("issuer") == RMP.Issuer.hypervisor.rawValue
            return { p, _ in host ? RMP.guestInstructionInHypervisor : p.rmp.pvalidate(ctx, size: sz, validate: v) }
        },
        snpStep("rmpadjust", "RMPADJUST: set a less privileged VMPL's permissions on a page",
                [guest, gpa, size4K2M, vmpl("vmpl", required: true, "target VMPL"),
                 Parameter("perms", .count(0...0x1f), required: true, "permission mask: 1 R, 2 W, 4 Xuser, 8 Xsuper, 0x10 SSS"),
                 Parameter("vmsa", .bool, default: "false", "set the VMSA bit"), vmpl("from", "VMPL executing it"), guestIssuer]) { a, _ throws(ScenarioError) in
            let ctx = try guestContext(a, vmplArgument: "from")
            let sz = size(a), target = Int(a.number("vmpl")), vmsa = a.bool("vmsa")
            let perms = VMPLPermissions(rawValue: UInt8(a.number("perms")))
            a.show("perms", perms.description)
            let host = a.text("issuer") == RMP.Issuer.hypervisor.rawValue
            return { p, _ in host ? RMP.guestInstructionInHypervisor : p.rmp.rmpadjust(ctx, size: sz, targetVMPL: target, permissions: perms, vmsa: vmsa) }
        },
        snpStep("rmpquery", "RMPQUERY: a VMPL's permissions on a page",
                [guest, gpa, vmpl("vmpl", required: true, "VMPL to query"), vmpl("from", "VMPL executing it")]) { a, _ throws(ScenarioError) in
            let ctx = try guestContext(a, vmplArgument: "from")
            let target = Int(a.number("vmpl"))
            return { p, _ in p.rmp.rmpquery(ctx, targetVMPL: target) }
        },
        snpStep("vmrun", "VMRUN: a vCPU runs with this VMSA page, which is now in use; VMEXIT_INVALID unless the RMP says it is a VMSA",
                [Parameter("spa", .physical, required: true, "the VMSA page (page-aligned RAM)")]) { a, ctx throws(ScenarioError) in
            let spa = try vmsaPage(a, ctx)
            return { p, _ in p.rmp.vmrun(spa: spa) }
        },
        snpStep("vmexit", "#VMEXIT: the vCPU using this VMSA page stops (`not running` when none does)",
                [Parameter("spa", .physical, required: true, "the VMSA page (page-aligned RAM)")]) { a, ctx throws(ScenarioError) in
            let spa = try vmsaPage(a, ctx)
            return { p, _ in p.rmp.vmexit(spa: spa) }
        },
    ]

    /// A VMSA page: the VMCB holds its page-aligned address (VMSA pointer bits 11:0 are
    /// zero), and it is RAM.
    static func vmsaPage(_ a: StepArguments, _ ctx: StepContext) throws(ScenarioError) -> UInt64 {
        let spa = a.number("spa")
        guard spa & (pageBytes - 1) == 0 else { throw a.field("spa").error("\(hex(spa)) is not page-aligned: a VMSA is a page") }
        guard ctx.kernel.memory.isRAM(spa..<spa + pageBytes) else {
            throw a.field("spa").error("\(hex(spa)) is not RAM; RAM is " + ctx.kernel.memory.ram.map { "[\(hex($0.lowerBound))-\(hex($0.upperBound)))" }.joined(separator: " "))
        }
        return spa
    }

    static let guestAccess: [StepDefinition] = [
        snpStep("dma-write", "a device writes the page through the IOMMU", [Parameter("pa", .physical, required: true, "physical address")]) { a, _ throws(ScenarioError) in
            let pa = a.number("pa")
            return { p, _ in p.rmp.dmaWrite(spa: pa) }
        },
        guestStep("guest-read", write: false), guestStep("guest-write", write: true), loadUnalignedZeropad,
    ]

    /// A step on the SEV-SNP platform whose result is an SNP outcome, counted as a fault if
    /// it is one.
    static func snpStep(
        _ name: String, _ summary: String, _ arguments: [Parameter],
        _ body: @escaping @Sendable (inout StepArguments, StepContext) throws(ScenarioError) -> @Sendable (inout SNPPlatform, inout Machine) -> SNPOutcome
    ) -> StepDefinition {
        platformStep(name, summary, arguments) { a, ctx throws(ScenarioError) in
            let run = try body(&a, ctx)
            return { p, m in
                let outcome = run(&p, &m)
                p.count(outcome)
                return outcome
            }
        }
    }

    /// A step on the SEV-SNP platform, counted as an operation.
    static func platformStep(
        _ name: String, _ summary: String, _ arguments: [Parameter], extraKeys: [String] = [],
        _ body: @escaping @Sendable (inout StepArguments, StepContext) throws(ScenarioError) -> @Sendable (inout SNPPlatform, inout Machine) -> any Outcome
    ) -> StepDefinition {
        platformStep(SNPPlatform.self, name, summary, arguments, extraKeys: extraKeys, body)
    }

    /// The `private` argument: given, it overrides the C-bit; left out, the guest kernel's
    /// own mapping decides.
    static let privateArgument = Parameter("private", .bool, "C-bit set (default: as the guest's direct map on that vCPU has it)")
    /// `cpu:` on a guest access is one of the guest's vCPUs.
    static let vcpuArgument = Parameter("cpu", .count(0...511), default: "0", "the guest's vCPU that makes the access (its TLB, its guest page table)")

    /// The vCPU and C-bit of a guest access step, checked against the guest.
    static func guestAccessArguments(_ a: StepArguments) throws(ScenarioError) -> (vcpu: Int, private: Bool?) {
        let g = a.guest!.spec, vcpu = a.number("cpu")
        guard vcpu < UInt64(g.vcpus) else {
            throw a.field("cpu").error("vCPU \(vcpu) is past \(g.name)'s \(g.vcpus) vCPU\(g.vcpus == 1 ? "" : "s") (valid: 0 to \(g.vcpus - 1))")
        }
        return (Int(vcpu), a.has("private") ? a.bool("private") : nil)
    }

    /// A guest access goes through the guest kernel's translation of the GPA's direct-map
    /// address on the vCPU (its TLB, then its page table): not present is a guest #PF;
    /// otherwise the C-bit is the translation's unless the step gives one, and the page is
    /// the translation's (a stale TLB entry's, if the vCPU holds one).
    static func guestTranslate(_ m: inout Machine, guest i: Int, gpa: UInt64, vcpu: Int, private given: Bool?) -> (gpa: UInt64, private: Bool)? {
        guard let t = m.guestKernels[i].translate(gpa: gpa, vcpu: vcpu) else { return nil }
        return (t.pa | (gpa & (pageBytes - 1)), given ?? t.attributes.contains(.encrypted))
    }

    static func guestStep(_ name: String, write: Bool) -> StepDefinition {
        platformStep(name, "the guest \(write ? "writes" : "reads") a page through its own mapping on a vCPU, private (C=1) or shared (C=0), checked by the RMP directly (no KVM)",
                     [guest, gpa, privateArgument, vmpl("vmpl", "VMPL"), vcpuArgument]) { a, sc throws(ScenarioError) in
            let (vcpu, given) = try guestAccessArguments(a)
            let ctx = try guestContext(a, vmplArgument: "vmpl"), i = a.guest!.index, g = a.guest!.spec
            return { p, m in
                guard let (gpa, priv) = guestTranslate(&m, guest: i, gpa: ctx.gpa, vcpu: vcpu, private: given) else { return GuestPageFault() }
                let c = GuestContext(asid: ctx.asid, vmpl: ctx.vmpl, gpa: gpa, spa: g.spa(gpa), nptSize: ctx.nptSize)
                let outcome = p.rmp.guestAccess(c, write: write, encrypted: priv)
                p.count(outcome)
                return outcome
            }
        }
    }

    /// rmp_make_private / rmp_make_shared: the host kernel's way to change the RMP, through
    /// the direct-map policy (Linux arch/x86/virt/svm/sev.c).
    static func rmpMakeStep(private makePrivate: Bool) -> StepDefinition {
        let arguments: [Parameter] = makePrivate
            ? [Parameter("pa", .physical, required: true, "physical address"), rmpGPA,
               Parameter("asid", .count(0...UInt64(RMP.maxASID)), required: true, "owner ASID"), size4K2M,
               Parameter("immutable", .bool, default: "false", "the Immutable bit")]
            : [Parameter("pa", .physical, required: true, "physical address"), size4K2M]
        return platformStep(makePrivate ? "rmp_make_private" : "rmp_make_shared",
                            makePrivate ? "Linux rmp_make_private: the direct-map policy, then RMPUPDATE to guest-owned"
                                : "Linux rmp_make_shared: the direct-map policy, then RMPUPDATE back to the hypervisor",
                            arguments) { a, _ throws(ScenarioError) in
            let pa = a.number("pa")
            let u = makePrivate
                ? RMPUpdate(gpa: a.number("gpa"), assigned: true, size: size(a), immutable: a.bool("immutable"), asid: UInt32(a.number("asid")))
                : RMPUpdate(assigned: false, size: size(a))
            return { p, m in
                let (status, hw) = m.kernel.rmpUpdate(&p.rmp, pfn: pa >> pageShift, u)
                guard let hw, hw != .success else { return status }
                return AnnotatedOutcome(status, notes: ["\(hw)"])
            }
        }
    }

    static func size(_ a: StepArguments) -> PageSize { a.text("size") == "2M" ? .size2M : .size4K }

    /// The hardware context of a guest instruction or access at the `gpa` argument, from the
    /// VMPL in `vmplArgument`, with the guest's declared nested page size.
    static func guestContext(_ a: StepArguments, vmplArgument: String) throws(ScenarioError) -> GuestContext {
        let g = a.guest!.spec
        let gpa = try guestAddress(a, g)
        return GuestContext(asid: g.asid, vmpl: Int(a.number(vmplArgument)), gpa: gpa, spa: g.spa(gpa), nptSize: g.npt)
    }

    /// The `gpa` argument, which must lie inside the guest's memory.
    static func guestAddress(_ a: StepArguments, _ g: GuestSpec) throws(ScenarioError) -> UInt64 {
        let gpa = a.number("gpa")
        guard gpa < g.memory else { throw a.field("gpa").error("gpa \(hex(gpa)) is past \(g.name)'s \(ByteSize.format(g.memory)) of memory") }
        return gpa
    }
}

/// The KVM steps: launch, destroy, guest page-state changes and accesses through KVM.
extension Steps {
    static let kvm: [StepDefinition] = [
        platformStep("launch", "SNP_LAUNCH_START/UPDATE/FINISH: context page, image pages populated via guest_memfd, one VMSA per vCPU",
                     [guest, Parameter("image", .address(), default: "0", "bytes of guest memory populated at launch")]) { a, _ throws(ScenarioError) in
            let (i, g) = a.guest!
            let image = a.number("image")
            guard image <= g.memory, image & (pageBytes - 1) == 0 else {
                throw a.field("image").error("image \(hex(image)) must be page-aligned and at most \(g.name)'s \(ByteSize.format(g.memory))")
            }
            return { p, m in p.kvm.launch(i, imagePages: image >> pageShift, kernel: &m.kernel, rmp: &p.rmp) }
        },
        platformStep("destroy", "VM teardown: guest memory, VMSAs and the context page back to the hypervisor (a failed reclaim leaks)", [guest]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index
            return { p, m in p.kvm.teardown(i, kernel: &m.kernel, rmp: &p.rmp) }
        },
        platformStep("psc", "a GHCB page-state change from the guest (no PVALIDATE): size bytes at gpa to shared or private, or a request "
                     + "as the GHCB carries it (entries, header), printed as the guest sees it afterwards",
                     [guest, Parameter("gpa", .address(), "first guest physical address (the one-range form)"),
                      Parameter("size", .address(), default: "0x1000", "bytes"), Parameter("to", .choice(["shared", "private"]), "target state (the one-range form)"),
                      Parameter("via", .choice(["ghcb", "msr"]), default: "ghcb", "protocol (msr: one 4K page)")],
                     extraKeys: ["entries", "header"]) { a, _ throws(ScenarioError) in
            let (i, g) = a.guest!
            if a.has("entries") || a.has("header") { return try pscRequestStep(a, guest: i) }
            guard a.has("gpa"), a.has("to") else {
                throw a.fields.owner.error("psc needs 'gpa' and 'to' (one range), or 'entries' (a request as the GHCB carries it)")
            }
            let gpa = a.number("gpa"), size = a.number("size")
            guard gpa & (pageBytes - 1) == 0, size > 0, size & (pageBytes - 1) == 0, gpa <= g.memory, size <= g.memory - gpa else {
                throw a.field("gpa").error("\(hex(gpa)) + \(hex(size)) bytes must be whole pages inside \(g.name)'s \(ByteSize.format(g.memory))")
            }
            let toPrivate = a.text("to") == "private", msr = a.text("via") == "msr"
            let run = notRunning
            if msr && size != pageBytes { throw a.field("size").error("the MSR protocol changes one 4K page; use via: ghcb") }
            let gfns = (gpa >> pageShift)..<((gpa + size) >> pageShift)
            return { p, m in
                if let refused = run(p, i) { return refused }
                if msr {
                    let request = PSCMSRRequest(gfn: gfns.lowerBound, operation: toPrivate ? .makePrivate : .makeShared).msr
                    let response = p.kvm.handlePSCMSR(i, msr: request, kernel: &m.kernel, rmp: &p.rmp)
                    return response == PSCMSRRequest.response(error: 0) ? OK() : ValueOutcome("response \(hex(response))")
                }
                return SNPPlatform.guestCalls(&p, i, &m) { _, _, vmgexit in
                    GuestKernel.snpPageStateChange(gfns, toPrivate: toPrivate, vmgexit: vmgexit)
                } ?? OK()
            }
        },
        platformStep("guest-access", "a guest access through KVM: gmem faults prepare pages, RMP #NPFs are handled, then the result",
                     [guest, Parameter("gpa", .address(), required: true, "guest physical address"),
                      Parameter("write", .bool, default: "false", "a write"), privateArgument, vcpuArgument]) { a, sc throws(ScenarioError) in
            let (vcpu, given) = try guestAccessArguments(a)
            let (i, g) = a.guest!
            let gpa = try guestAddress(a, g)
            let write = a.bool("write")
            return { p, m in
                if let refused = notRunning(p, i) { return refused }
                guard let (gpa, priv) = guestTranslate(&m, guest: i, gpa: gpa, vcpu: vcpu, private: given) else { return GuestPageFault() }
                return p.kvm.access(i, gpa: gpa, write: write, private: priv, kernel: &m.kernel, rmp: &p.rmp)
            }
        },
        StepDefinition("fail_snp_reclaim", "fault injection: SNP_PAGE_RECLAIM fails, so teardown leaks the context page",
                       [Parameter("enabled", .bool, required: true, "whether reclaim fails")]) { a, _ throws(ScenarioError) in
            let on = a.bool("enabled")
            return { m throws(HostKernelError) in
                m.withPlatform(SNPPlatform.self) { p, _ in p.kvm.backend.failReclaim = on }
                return OK()
            }
        },
    ]
}

extension Steps {
    /// A guest exit (a page-state change, an access through KVM) needs the guest to run: a
    /// VM not launched yet, or destroyed, has no vCPU in KVM_RUN, and KVM_RUN on it fails
    /// with -EINVAL (an SEV-ES/SNP vCPU runs only once its VMSA is launched).
    static func notRunning(_ p: SNPPlatform, _ i: Int) -> (any Outcome)? {
        let state = p.kvm.vms[i].state
        guard state != .running else { return nil }
        return AnnotatedOutcome(KernelStatus.error(.EINVAL), notes: ["KVM_RUN: \(p.kvm.vms[i].config.name) is \(state == .created ? "not launched" : state.rawValue)"])
    }

    /// The PSC operations by the names a scenario gives them.
    static let pscOperations: [(String, PSCOperation)] = [("private", .makePrivate), ("shared", .makeShared), ("psmash", .psmash), ("unsmash", .unsmash)]

    /// `psc` with `entries:` (and optionally `header:`): one GHCB page-state-change request
    /// sent as is to KVM (snp_begin_psc), so every header and entry error it returns can be
    /// reached. An entry is `{gpa, size: 4K|2M, op: private|shared|psmash|unsmash or a
    /// number, cur_page}` or `{raw: 0x…}` (the 64-bit entry); the header is `{cur_entry,
    /// end_entry}` (default 0 and the last entry).
    static func pscRequestStep(_ a: StepArguments, guest i: Int) throws(ScenarioError) -> @Sendable (inout SNPPlatform, inout Machine) -> any Outcome {
        for key in ["gpa", "to", "via"] where a.has(key) {
            throw a.field(key).error("'\(key)' belongs to the one-range form; with 'entries' each entry gives its gpa, size and op")
        }
        var entries: [PSCEntry] = []
        if let list = a.fields["entries"] {
            let items = try list.sequence()
            guard items.count <= PSCRequest.maxEntries else {
                throw list.error("\(items.count) entries: a GHCB request holds at most \(PSCRequest.maxEntries) (VMGEXIT_PSC_MAX_COUNT)")
            }
            for item in items { entries.append(try pscEntry(item)) }
        }
        var curEntry = 0, endEntry = entries.count - 1
        if let h = a.fields["header"] {
            let f = try h.mapping()
            try f.only(["cur_entry", "end_entry"])
            curEntry = Int(try f["cur_entry"]?.number(in: 0...0xffff, what: "cur_entry") ?? 0)
            endEntry = Int(try f["end_entry"]?.number(in: 0...0xffff, what: "end_entry") ?? UInt64(max(entries.count - 1, 0)))
        }
        guard endEntry >= 0 else { throw a.fields.owner.error("give 'entries', or a 'header' with end_entry") }
        let request = PSCRequest(curEntry: curEntry, endEntry: endEntry, entries: entries)
        return { p, m in
            if let refused = notRunning(p, i) { return refused }
            let (info, after) = p.kvm.handlePSC(i, request, kernel: &m.kernel, rmp: &p.rmp)
            return PSCResult(exitInfo2: info, request: after)
        }
    }

    /// One PSC entry from a scenario: raw, or by its fields.
    static func pscEntry(_ item: Field) throws(ScenarioError) -> PSCEntry {
        let f = try item.mapping()
        if let raw = f["raw"] {
            try f.only(["raw"])
            return PSCEntry(raw: try raw.number())
        }
        try f.only(["gpa", "size", "op", "cur_page"])
        let gpa = try f.required("gpa").number()
        guard gpa & (pageBytes - 1) == 0, gpa >> pageShift < 1 << 40 else {
            throw f.keyError("gpa", "\(hex(gpa)) is not a page address a PSC entry can hold (4K-aligned, below 2^52); use 'raw' for any bits")
        }
        let size2M = try f["size"]?.choice(["4K", "2M"], what: "size") == "2M"
        let opField = try f.required("op")
        let opText = try opField.text()
        let op: UInt8
        if let named = pscOperations.first(where: { $0.0 == opText }) {
            op = named.1.rawValue
        } else if let n = UInt8(opText), n < 16 {
            op = n
        } else {
            throw opField.error("unknown operation '\(opText)'; valid: private, shared, psmash, unsmash, or a number 0-15")
        }
        let curPage = UInt16(try f["cur_page"]?.number(in: 0...0xfff, what: "cur_page") ?? 0)
        return PSCEntry(gfn: gpa >> pageShift, operation: op, size2M: size2M, curPage: curPage)
    }
}
