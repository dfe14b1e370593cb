import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The SEV-SNP steps: each RMP instruction under its lowercase name, and host, DMA and guest
/// accesses. Results print as the APM and Linux name them (`ok (CF=1)`, `FAIL_OVERLAP`,
/// `#PF(RMP)`, `NPF(RMP|ENC|SIZEM)`, `#VC(0x404)`).
extension Steps {
    /// Host access contexts, in HostAccessContext's order.
    public static let hostContexts = HostAccessContext.allCases.map(\.rawValue)

    static let snp: [StepDefinition] = [
        snpStep("rmpupdate", "RMPUPDATE: assign or unassign a 4K or 2M RMP entry",
                [("spa", "system physical address"), ("assigned", "true or false"), ("asid", "owner ASID (default 0)"),
                 ("gpa", "guest physical address (default 0)"), ("size", "4K or 2M (default 4K)"), ("immutable", "default false")]) { f, ctx throws(ScenarioError) in
            let spa = try spaField(f, ctx)
            let u = RMPUpdate(gpa: try f["gpa"]?.number() ?? 0, assigned: try f.required("assigned").bool(), size: try size(f),
                              immutable: try f["immutable"]?.bool() ?? false, asid: UInt32(truncatingIfNeeded: try f["asid"]?.number(in: 0...0xffff_ffff, what: "asid") ?? 0))
            return ([("spa", hex(spa)), ("assigned", "\(u.assigned)"), ("asid", "\(u.asid)"), ("gpa", hex(u.gpa)), ("size", "\(u.size)"), ("immutable", "\(u.immutable)")],
                    { m in .status(m.rmp!.rmpupdate(spa: spa, u)) })
        },
        snpStep("psmash", "PSMASH: split a 2M RMP entry into 512 4K entries", [("spa", "2M-aligned system physical address")]) { f, ctx throws(ScenarioError) in
            let spa = try spaField(f, ctx)
            return ([("spa", hex(spa))], { m in .status(m.rmp!.psmash(spa: spa)) })
        },
        snpStep("rmpread", "RMPREAD: an RMP entry in the RMPREAD format", [("spa", "system physical address")]) { f, ctx throws(ScenarioError) in
            let spa = try spaField(f, ctx)
            return ([("spa", hex(spa))], { m in m.rmp!.rmpread(spa: spa) })
        },
        snpStep("dump_rmpentry", "the raw RMP entry as Linux's dump_rmpentry prints it, with the firmware's page-state name",
                [("spa", "system physical address")]) { f, ctx throws(ScenarioError) in
            let spa = try spaField(f, ctx)
            return ([("spa", hex(spa))], { m in
                let e = m.rmp![spa >> pageShift]
                return .read("PFN \(hex(spa >> pageShift)), RMP entry: [\(hex(e.hi, digits: 16)) - \(hex(e.lo, digits: 16))] \(e.state)")
            })
        },
        snpStep("pvalidate", "PVALIDATE: the guest validates or rescinds a page",
                [("guest", "guest name"), ("gpa", "guest physical address"), ("size", "4K or 2M (default 4K)"),
                 ("validate", "true or false"), ("vmpl", "VMPL executing it (default 0)")]) { f, ctx throws(ScenarioError) in
            let (g, gpa) = try guestAddress(f, ctx)
            let sz = try size(f), v = try f.required("validate").bool(), vmpl = try vmplField(f, "vmpl")
            return ([("guest", g.name), ("gpa", hex(gpa)), ("size", "\(sz)"), ("validate", "\(v)"), ("vmpl", "\(vmpl)")],
                    { m in m.rmp!.pvalidate(g.context(gpa: gpa, vmpl: vmpl), size: sz, validate: v) })
        },
        snpStep("rmpadjust", "RMPADJUST: set a less privileged VMPL's permissions on a page",
                [("guest", "guest name"), ("gpa", "guest physical address"), ("size", "4K or 2M (default 4K)"),
                 ("vmpl", "target VMPL"), ("perms", "permission mask: 1 R, 2 W, 4 Xuser, 8 Xsuper, 0x10 SSS"),
                 ("vmsa", "set the VMSA bit (default false)"), ("from", "VMPL executing it (default 0)")]) { f, ctx throws(ScenarioError) in
            let (g, gpa) = try guestAddress(f, ctx)
            let sz = try size(f), target = try vmplField(f, "vmpl", required: true), from = try vmplField(f, "from")
            let perms = VMPLPermissions(rawValue: UInt8(try f.required("perms").number(in: 0...0x1f, what: "perms")))
            let vmsa = try f["vmsa"]?.bool() ?? false
            return ([("guest", g.name), ("gpa", hex(gpa)), ("size", "\(sz)"), ("vmpl", "\(target)"), ("perms", perms.description), ("vmsa", "\(vmsa)"), ("from", "\(from)")],
                    { m in m.rmp!.rmpadjust(g.context(gpa: gpa, vmpl: from), size: sz, targetVMPL: target, permissions: perms, vmsa: vmsa) })
        },
        snpStep("rmpquery", "RMPQUERY: a VMPL's permissions on a page",
                [("guest", "guest name"), ("gpa", "guest physical address"), ("vmpl", "VMPL to query"), ("from", "VMPL executing it (default 0)")]) { f, ctx throws(ScenarioError) in
            let (g, gpa) = try guestAddress(f, ctx)
            let target = try vmplField(f, "vmpl", required: true), from = try vmplField(f, "from")
            return ([("guest", g.name), ("gpa", hex(gpa)), ("vmpl", "\(target)"), ("from", "\(from)")],
                    { m in m.rmp!.rmpquery(g.context(gpa: gpa, vmpl: from), targetVMPL: target) })
        },
        snpStep("vmrun", "VMRUN: a vCPU runs with this VMSA page, which is now in use", [("spa", "the VMSA page")]) { f, ctx throws(ScenarioError) in
            let spa = try spaField(f, ctx)
            return ([("spa", hex(spa))], { m in m.rmp!.markRunning(spa: spa, true); return .ok })
        },
        snpStep("vmexit", "#VMEXIT: the vCPU using this VMSA page stops", [("spa", "the VMSA page")]) { f, ctx throws(ScenarioError) in
            let spa = try spaField(f, ctx)
            return ([("spa", hex(spa))], { m in m.rmp!.markRunning(spa: spa, false); return .ok })
        },
        hostStep("host-read", write: false), hostStep("host-write", write: true),
        rmpMakeStep(private: true), rmpMakeStep(private: false),
    ] + kvm + [
        snpStep("dma-write", "a device writes the page through the IOMMU", [("pa", "physical address")]) { f, ctx throws(ScenarioError) in
            let pa = try paField(f, ctx)
            return ([("pa", hex(pa))], { m in m.rmp!.dmaWrite(spa: pa) })
        },
        guestStep("guest-read", write: false), guestStep("guest-write", write: true),
    ]

    /// A step that needs the RMP (arch x86-snp) and counts its outcome's fault, if any.
    static func snpStep(
        _ name: String, _ summary: String, _ arguments: [(String, String)],
        _ body: @escaping @Sendable (Fields, StepContext) throws(ScenarioError) -> ([(String, String)], @Sendable (inout Machine) -> SNPOutcome)
    ) -> StepDefinition {
        snpKernelStep(name, summary, arguments) { f, ctx throws(ScenarioError) in
            let (shown, run) = try body(f, ctx)
            return (shown, { m in
                let outcome = run(&m)
                m.countFault(outcome)
                return outcome.description
            })
        }
    }

    static func hostStep(_ name: String, write: Bool) -> StepDefinition {
        snpKernelStep(
            name,
            write ? "the host kernel writes a page; an RMP or not-present fault ends as its context decides (oops, double fault, …)"
                : "the host kernel reads a page: RMP-checked only as a page-table walk; a private page still mapped reads as ciphertext",
            [("pa", "physical address"), ("context", "one of " + hostContexts.joined(separator: ", ") + " (default data)")]
        ) { f, ctx throws(ScenarioError) in
            let pa = try paField(f, ctx)
            let context = HostAccessContext(rawValue: try f["context"]?.choice(hostContexts, what: "context") ?? "data")!
            return ([("pa", hex(pa)), ("context", context.rawValue)], { m in
                let outcome = m.kernel.hostAccess(m.rmp!, pa: pa, write: write, context: context)
                if case .fault(let cause, _) = outcome, cause == "RMP" { m.faults.hostRMP += 1 }
                return outcome.description
            })
        }
    }

    /// rmp_make_private / rmp_make_shared: the host kernel's way to change the RMP, through
    /// the direct-map policy (Linux arch/x86/virt/svm/sev.c).
    static func rmpMakeStep(private makePrivate: Bool) -> StepDefinition {
        let arguments: [(String, String)] = makePrivate
            ? [("pa", "physical address"), ("gpa", "guest physical address (default 0)"), ("asid", "owner ASID"),
               ("size", "4K or 2M (default 4K)"), ("immutable", "default false")]
            : [("pa", "physical address"), ("size", "4K or 2M (default 4K)")]
        return snpKernelStep(makePrivate ? "rmp_make_private" : "rmp_make_shared",
                             makePrivate ? "Linux rmp_make_private: the direct-map policy, then RMPUPDATE to guest-owned"
                                 : "Linux rmp_make_shared: the direct-map policy, then RMPUPDATE back to the hypervisor",
                             arguments) { f, ctx throws(ScenarioError) in
            let pa = try paField(f, ctx)
            let sz = try size(f)
            let u = makePrivate
                ? RMPUpdate(gpa: try f["gpa"]?.number() ?? 0, assigned: true, size: sz, immutable: try f["immutable"]?.bool() ?? false,
                            asid: UInt32(try f.required("asid").number(in: 0...UInt64(RMP.maxASID), what: "asid")))
                : RMPUpdate(assigned: false, size: sz)
            var shown = [("pa", hex(pa)), ("size", "\(sz)")]
            if makePrivate { shown += [("gpa", hex(u.gpa)), ("asid", "\(u.asid)"), ("immutable", "\(u.immutable)")] }
            return (shown, { m in
                let (status, hw) = m.kernel.rmpUpdate(&m.rmp!, pfn: pa >> pageShift, u)
                return hw.map { $0 == .success ? status.description : "\(status) (\($0))" } ?? status.description
            })
        }
    }

    /// A host-kernel step on the SNP machine whose result is a kernel status.
    static func snpKernelStep(
        _ name: String, _ summary: String, _ arguments: [(String, String)],
        _ body: @escaping @Sendable (Fields, StepContext) throws(ScenarioError) -> ([(String, String)], @Sendable (inout Machine) -> String)
    ) -> StepDefinition {
        StepDefinition(name: name, summary: summary, arguments: arguments) { args, ctx throws(ScenarioError) in
            let fields = try args.mapping()
            try fields.only(arguments.map(\.0))
            guard ctx.architecture == .x86_snp else {
                throw args.error("\(name) needs the SEV-SNP machine: set 'arch: x86-snp' (this one is \(ctx.architecture.rawValue))")
            }
            let (shown, run) = try body(fields, ctx)
            return (shown, { m throws(HostKernelError) in
                let result = run(&m)
                m.operations += 1
                if result.hasPrefix("-E") { m.errors += 1 }
                return result
            })
        }
    }

    static func guestStep(_ name: String, write: Bool) -> StepDefinition {
        snpStep(name, "the guest \(write ? "writes" : "reads") a page, private (C=1) or shared (C=0)",
                [("guest", "guest name"), ("gpa", "guest physical address"), ("private", "C-bit set (default true)"), ("vmpl", "VMPL (default 0)")]) { f, ctx throws(ScenarioError) in
            let (g, gpa) = try guestAddress(f, ctx)
            let priv = try f["private"]?.bool() ?? true, vmpl = try vmplField(f, "vmpl")
            return ([("guest", g.name), ("gpa", hex(gpa)), ("private", "\(priv)"), ("vmpl", "\(vmpl)")],
                    { m in m.rmp!.guestAccess(g.context(gpa: gpa, vmpl: vmpl), write: write, encrypted: priv) })
        }
    }

    /// A system physical address inside RAM's reach (a page past RAM is a scenario mistake;
    /// misalignment is left for the hardware to answer).
    static func spaField(_ f: Fields, _ ctx: StepContext) throws(ScenarioError) -> UInt64 {
        let field = try f.required("spa")
        return try physical(field, ctx)
    }

    static func paField(_ f: Fields, _ ctx: StepContext) throws(ScenarioError) -> UInt64 {
        try physical(try f.required("pa"), ctx)
    }

    static func physical(_ field: Field, _ ctx: StepContext) throws(ScenarioError) -> UInt64 {
        let a = try field.number()
        let end = ctx.kernel.memory.endOfRAM
        guard a < end else { throw field.error("\(hex(a)) is past the end of RAM (\(hex(end)))") }
        return a
    }

    static func size(_ f: Fields) throws(ScenarioError) -> PageSize {
        guard let field = f["size"] else { return .size4K }
        return try field.choice(["4K", "2M"], what: "size") == "2M" ? .size2M : .size4K
    }

    static func vmplField(_ f: Fields, _ key: String, required: Bool = false) throws(ScenarioError) -> Int {
        guard let field = required ? try f.required(key) : f[key] else { return 0 }
        return Int(try field.number(in: 0...3, what: "VMPL"))
    }

    /// The named guest and a GPA inside its memory.
    static func guestAddress(_ f: Fields, _ ctx: StepContext) throws(ScenarioError) -> (GuestSpec, UInt64) {
        let g = try ctx.guest(f).spec
        let gpaField = try f.required("gpa")
        let gpa = try gpaField.number()
        guard gpa < g.memory else { throw gpaField.error("gpa \(hex(gpa)) is past \(g.name)'s \(ByteSize.format(g.memory)) of memory") }
        return (g, gpa)
    }
}

/// The KVM steps: launch, destroy, guest page-state changes and accesses through KVM.
extension Steps {
    static let kvm: [StepDefinition] = [
        kvmStep("launch", "SNP_LAUNCH_START/UPDATE/FINISH: context page, image pages populated via guest_memfd, one VMSA per vCPU",
                [("guest", "guest name"), ("image", "bytes of guest memory populated at launch (default 0)")]) { f, g, i throws(ScenarioError) in
            let image = try f["image"]?.number() ?? 0
            guard image <= g.memory, image & (pageBytes - 1) == 0 else {
                throw f["image"]!.error("image \(hex(image)) must be page-aligned and at most \(g.name)'s \(ByteSize.format(g.memory))")
            }
            return ([("image", hex(image))], { m in m.kvm!.launch(i, imagePages: image >> pageShift, kernel: &m.kernel, rmp: &m.rmp!).description })
        },
        kvmStep("destroy", "VM teardown: guest memory, VMSAs and the context page back to the hypervisor (a failed reclaim leaks)",
                [("guest", "guest name")]) { _, _, i throws(ScenarioError) in
            ([], { m in m.kvm!.destroy(i, kernel: &m.kernel, rmp: &m.rmp!).description })
        },
        kvmStep("psc", "a GHCB page-state change from the guest (no PVALIDATE): size bytes at gpa to shared or private",
                [("guest", "guest name"), ("gpa", "first guest physical address"), ("size", "bytes (default 4K)"),
                 ("to", "shared or private"), ("via", "ghcb (default) or msr (one 4K page)")]) { f, g, i throws(ScenarioError) in
            let gpaField = try f.required("gpa")
            let gpa = try gpaField.number()
            let size = try f["size"]?.number() ?? pageBytes
            guard gpa & (pageBytes - 1) == 0, size > 0, size & (pageBytes - 1) == 0, gpa + size <= g.memory else {
                throw gpaField.error("[\(hex(gpa))-\(hex(gpa + size))) must be whole pages inside \(g.name)'s \(ByteSize.format(g.memory))")
            }
            let toPrivate = try f.required("to").choice(["shared", "private"], what: "target state") == "private"
            let via = try f["via"]?.choice(["ghcb", "msr"], what: "protocol") ?? "ghcb"
            if via == "msr" && size != pageBytes { throw f["size"]!.error("the MSR protocol changes one 4K page; use via: ghcb") }
            let gfns = (gpa >> pageShift)..<((gpa + size) >> pageShift)
            return ([("gpa", hex(gpa)), ("size", hex(size)), ("to", toPrivate ? "private" : "shared"), ("via", via)], { m in
                if via == "msr" {
                    let msr = PSCMSRRequest(gfn: gfns.lowerBound, operation: toPrivate ? .makePrivate : .makeShared).msr
                    let response = m.kvm!.handlePSCMSR(i, msr: msr, kernel: &m.kernel, rmp: &m.rmp!)
                    return response == PSCMSRRequest.response(error: 0) ? "ok" : "response \(hex(response))"
                }
                return m.guestPSC(i, gfns: gfns, toPrivate: toPrivate)
            })
        },
        kvmStep("guest_set_memory_decrypted", "the SNP guest's set_memory_decrypted: PVALIDATE rescind, then PSC to shared",
                [("guest", "guest name"), ("gpa", "first guest physical address"), ("numpages", "pages (default 1)")]) { f, g, i throws(ScenarioError) in
            let gfns = try guestRange(f, g)
            return ([("gpa", hex(gfns.lowerBound << pageShift)), ("numpages", "\(gfns.count)")], { m in m.guestSetShared(i, gfns: gfns) })
        },
        kvmStep("guest_set_memory_encrypted", "the SNP guest's set_memory_encrypted: PSC to private, then PVALIDATE",
                [("guest", "guest name"), ("gpa", "first guest physical address"), ("numpages", "pages (default 1)")]) { f, g, i throws(ScenarioError) in
            let gfns = try guestRange(f, g)
            return ([("gpa", hex(gfns.lowerBound << pageShift)), ("numpages", "\(gfns.count)")], { m in m.guestSetPrivate(i, gfns: gfns) })
        },
        kvmStep("guest-access", "a guest access through KVM: gmem faults prepare pages, RMP #NPFs are handled, then the result",
                [("guest", "guest name"), ("gpa", "guest physical address"), ("write", "default false"), ("private", "default true")]) { f, g, i throws(ScenarioError) in
            let gpaField = try f.required("gpa")
            let gpa = try gpaField.number()
            guard gpa < g.memory else { throw gpaField.error("gpa \(hex(gpa)) is past \(g.name)'s \(ByteSize.format(g.memory)) of memory") }
            let write = try f["write"]?.bool() ?? false, priv = try f["private"]?.bool() ?? true
            return ([("gpa", hex(gpa)), ("write", "\(write)"), ("private", "\(priv)")], { m in
                let (outcome, path) = m.kvm!.guestOperation(i, gfn: gpa >> pageShift, private: priv, kernel: &m.kernel, rmp: &m.rmp!) { rmp, ctx in
                    rmp.guestAccess(ctx, write: write, encrypted: priv)
                }
                return path.isEmpty ? outcome : "\(outcome) (\(path.joined(separator: ", ")))"
            })
        },
        StepDefinition(name: "fail_snp_reclaim", summary: "fault injection: SNP_PAGE_RECLAIM fails, so teardown leaks the context page",
                       arguments: [("enabled", "true or false")]) { args, ctx throws(ScenarioError) in
            let fields = try args.mapping()
            try fields.only(["enabled"])
            guard ctx.architecture == .x86_snp else { throw args.error("fail_snp_reclaim needs 'arch: x86-snp'") }
            let on = try fields.required("enabled").bool()
            return ([("enabled", "\(on)")], { m throws(HostKernelError) in
                m.kvm!.failReclaim = on
                return "ok"
            })
        },
    ]

    static func guestRange(_ f: Fields, _ g: GuestSpec) throws(ScenarioError) -> Range<UInt64> {
        let gpaField = try f.required("gpa")
        let gpa = try gpaField.number()
        let n = try f["numpages"]?.number(in: 1...(1 << 30), what: "numpages") ?? 1
        guard gpa & (pageBytes - 1) == 0, gpa + n * pageBytes <= g.memory else {
            throw gpaField.error("\(hex(gpa)) + \(n) pages must be page-aligned and inside \(g.name)'s \(ByteSize.format(g.memory))")
        }
        return (gpa >> pageShift)..<((gpa >> pageShift) + n)
    }

    /// A KVM step on one guest of the SEV-SNP machine.
    static func kvmStep(
        _ name: String, _ summary: String, _ arguments: [(String, String)],
        _ body: @escaping @Sendable (Fields, GuestSpec, Int) throws(ScenarioError) -> ([(String, String)], @Sendable (inout Machine) -> String)
    ) -> StepDefinition {
        snpKernelStep(name, summary, arguments) { f, ctx throws(ScenarioError) in
            let (i, g) = try ctx.guest(f)
            let (shown, run) = try body(f, g, i)
            return ([("guest", g.name)] + shown, run)
        }
    }
}
