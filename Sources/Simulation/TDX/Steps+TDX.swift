import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// The TDX module's calls as steps, under the specification's names lowercased with dots,
/// operands named after the module's register ABI: `td` (a guest) for the TDR, `gpa` and
/// `level` for RCX, `pa` for the target page, `source` for PAGE.ADD's source, `sept_page`
/// for a new S-EPT page. docs/tdx.md.
extension TDXPlatform {
    static let td = Parameter("td", .guest, required: true, "the TD (a guest of the scenario)")
    static let gpa = Parameter("gpa", .address(), required: true, "the guest physical address (RCX's GPA)")
    static let level = Parameter("level", .choice(["4K", "2M", "1G"]), default: "4K", "RCX's level")
    static let blockLevel = Parameter("level", .choice(["4K", "2M", "1G", "512G"]), default: "4K", "RCX's level")
    static let pa = Parameter("pa", .address(), "the target page (default: the TD's own memory at gpa)")
    static let septPage = Parameter("sept_page", .address(), "the new S-EPT page (default: the next free metadata page)")

    static func levelNumber(_ a: StepArguments) -> Int { ["4K": 0, "2M": 1, "1G": 2, "512G": 3][a.text("level") ?? "4K"] ?? 0 }

    /// A step on the TDX platform: the TD's index and TDR given to `body`.
    static func call(_ name: String, _ summary: String, _ arguments: [Parameter],
                     _ body: @escaping @Sendable (StepArguments) -> @Sendable (inout TDXPlatform, inout Machine, Int, UInt64) -> any Outcome) -> StepDefinition {
        Steps.platformStep(TDXPlatform.self, name, summary, [td] + arguments) { a, _ throws(ScenarioError) in
            let i = a.guest!.index, run = body(a)
            return { p, m in run(&p, &m, i, p.tdrs[i] ?? 0) }
        }
    }

    /// A step of the TD's own kernel, run through `guestCalls` (its ACCEPTs reach the module).
    static func guestKernelStep(_ name: String, _ summary: String, _ arguments: [Parameter],
                                _ body: @escaping @Sendable (StepArguments) -> @Sendable (inout GuestKernel, TDXAccept) -> any Outcome) -> StepDefinition {
        StepDefinition(name, summary, [td] + arguments) { a, _ throws(ScenarioError) in
            let i = a.guest!.index, run = body(a)
            return { m throws(HostKernelError) in
                let r = TDXPlatform.guestCalls(&m, guest: i) { g, _, accept in run(&g, accept) }
                m.count(r)
                return r
            }
        }
    }

    /// The page a step names, or the TD's own memory at gpa (its placement in host memory).
    static func targetPage(_ a: StepArguments, _ m: Machine, _ i: Int) -> UInt64 {
        a[number: "pa"] ?? (m.guests[i].placement &+ a.number("gpa"))  // the module checks the GPA
    }

    static let steps: [StepDefinition] = [
        call("tdh.mng.create", "TDH.MNG.CREATE: a TDR page (the next free metadata page) and an HKID for the TD", []) { _ in
            { p, m, i, _ in
                if p.hasTD(i) { return KernelStatus.error(.EINVAL) }
                let tdr = p.allocMeta()
                let s = p.module.mngCreate(tdr: tdr)
                if s == .success { p.created(i, tdr: tdr, m.guests[i]) }
                return s
            }
        },
        call("tdh.mng.key.config", "TDH.MNG.KEY.CONFIG: the TD's key programmed", []) { _ in { p, _, _, tdr in p.module.mngKeyConfig(tdr: tdr) } },
        call("tdh.mng.addcx", "TDH.MNG.ADDCX: one TDCS page (the next free metadata page)", []) { _ in
            { p, m, _, tdr in p.module.mngAddCX(tdr: tdr, page: p.allocMeta()) }
        },
        call("tdh.mng.init", "TDH.MNG.INIT: op state INITIALIZED, TD epoch 1 (needs six TDCS pages)", []) { _ in { p, _, _, tdr in p.module.mngInit(tdr: tdr) } },
        call("tdh.vp.create", "TDH.VP.CREATE (with ADDCX and INIT): a vCPU on a TDVPR page", []) { _ in
            { p, m, _, tdr in p.module.vpCreate(tdr: tdr, tdvpr: p.allocMeta()) }
        },
        call("tdh.mr.finalize", "TDH.MR.FINALIZE: op state RUNNABLE; PAGE.ADD is OP_STATE_INCORRECT from now on", []) { _ in
            { p, _, _, tdr in p.module.mrFinalize(tdr: tdr) }
        },
        call("tdh.vp.enter", "TDH.VP.ENTER: the vCPU runs in the TD's current TLB epoch until tdh.vp.exit",
             [Parameter("vcpu", .count(0...511), default: "0", "the vCPU")]) { a in
            let v = Int(a.number("vcpu"))
            return { p, _, _, tdr in p.module.vpEnter(tdr: tdr, vcpu: v) }
        },
        call("tdh.vp.exit", "a TD exit: the vCPU leaves its epoch", [Parameter("vcpu", .count(0...511), default: "0", "the vCPU")]) { a in
            let v = Int(a.number("vcpu"))
            return { p, _, _, tdr in
                p.module.vpExit(tdr: tdr, vcpu: v)
                return OK()
            }
        },
        call("tdh.mng.key.freeid", "TDH.MNG.VPFLUSHDONE then TDH.MNG.KEY.FREEID: the key released, the TD in TD_TEARDOWN (its pages reclaimable)", []) { _ in
            { p, _, _, tdr in p.module.teardown(tdr: tdr) }
        },
        call("launch", "the TD built as KVM does (tdx_td_init, tdx_vcpu_init): MNG.CREATE, KEY.CONFIG, six ADDCX, MNG.INIT, a VP.CREATE per vCPU; stops at the first failure", []) { _ in
            { p, m, i, _ in p.launch(i, m.guests[i]) }
        },
        call("tdh.mem.page.add", "TDH.MEM.PAGE.ADD: a 4K page copied from source and measured, before TDH.MR.FINALIZE",
             [gpa, pa, Parameter("source", .address(), default: "0x600000", "the source page (shared memory)")]) { a in
            let gpaValue = a.number("gpa"), source = a.number("source")
            return { p, m, i, tdr in
                let target = targetPage(a, m, i)
                let r = p.module.pageAdd(tdr: tdr, gpa: gpaValue, target: target, source: source)
                if r == .status(.success) { p.tdWrote(target >> pageShift) }
                return r
            }
        },
        call("tdh.mr.extend", "TDH.MR.EXTEND: 256 bytes of a MAPPED page measured into MRTD, before TDH.MR.FINALIZE",
             [Parameter("gpa", .address(), required: true, "the chunk's guest physical address (256-byte aligned)")]) { a in
            let gpaValue = a.number("gpa")
            return { p, _, _, tdr in p.module.mrExtend(tdr: tdr, gpa: gpaValue) }
        },
        call("kvm_tdx_init_mem_region", "KVM_TDX_INIT_MEM_REGION: per page, S-EPT levels linked, TDH.MEM.PAGE.ADD from source, and with measure a TDH.MR.EXTEND per 256 bytes",
             [gpa, Parameter("numpages", .count(1...(1 << 30)), default: "1", "4K pages"),
              Parameter("source", .address(), default: "0x600000", "the first source page (shared memory)"),
              Parameter("measure", .bool, default: "true", "KVM_TDX_MEASURE_MEMORY_REGION")]) { a in
            let g = a.number("gpa"), n = a.number("numpages"), source = a.number("source"), measure = a.bool("measure")
            return { p, m, i, _ in
                let pages = min(n, m.guests[i].memory >> pageShift)  // KVM refuses more before any SEAMCALL
                return p.withKVM(i) { p, k, spare in
                    while spare.count < 5 + Int(pages >> 9) { spare.append(p.allocMeta()) }  // a PT page per 2M, and the levels above
                    return k.initMemRegion(gpa: g, pages: n, source: source, measure: measure, module: &p.module, spare: &spare)
                } ?? KernelStatus.error(.EINVAL)
            }
        },
        call("tdh.mem.sept.add", "TDH.MEM.SEPT.ADD: a new S-EPT page under the FREE entry at level (2M and up)",
             [gpa, blockLevel, septPage]) { a in
            let gpaValue = a.number("gpa"), level = levelNumber(a), given = a[number: "sept_page"]
            return { p, m, _, tdr in p.module.septAdd(tdr: tdr, gpa: gpaValue, level: level, page: given ?? p.allocMeta()) }
        },
        call("tdh.mem.page.aug", "TDH.MEM.PAGE.AUG: a free page (4K or 2M) added PENDING for the TD to accept", [gpa, level, pa]) { a in
            let gpaValue = a.number("gpa"), level = levelNumber(a)
            return { p, m, i, tdr in p.module.pageAug(tdr: tdr, gpa: gpaValue, level: level, page: targetPage(a, m, i)) }
        },
        call("tdh.mem.range.block", "TDH.MEM.RANGE.BLOCK: the entry blocked, its BEPOCH the TD's epoch; blocked already is GPA_RANGE_ALREADY_BLOCKED", [gpa, blockLevel]) { a in
            let gpaValue = a.number("gpa"), level = levelNumber(a)
            return { p, _, _, tdr in p.module.rangeBlock(tdr: tdr, gpa: gpaValue, level: level) }
        },
        call("tdh.mem.track", "TDH.MEM.TRACK: the TD's TLB epoch advances (PREVIOUS_TLB_EPOCH_BUSY while a vCPU runs in the previous one)", []) { _ in
            { p, _, _, tdr in p.module.track(tdr: tdr) }
        },
        call("tdh.mem.page.remove", "TDH.MEM.PAGE.REMOVE: a leaf's page back to the host (blocked and tracked first on a running TD)", [gpa, level]) { a in
            let gpaValue = a.number("gpa"), level = levelNumber(a)
            return { p, _, _, tdr in p.module.pageRemove(tdr: tdr, gpa: gpaValue, level: level) }
        },
        call("tdh.mem.range.unblock", "TDH.MEM.RANGE.UNBLOCK: a blocked entry back to MAPPED, PENDING or NL_MAPPED once tracked", [gpa, blockLevel]) { a in
            let gpaValue = a.number("gpa"), level = levelNumber(a)
            return { p, _, _, tdr in p.module.rangeUnblock(tdr: tdr, gpa: gpaValue, level: level) }
        },
        call("tdh.mem.page.promote", "TDH.MEM.PAGE.PROMOTE: 512 uniform children merged into one large leaf", [gpa, level]) { a in
            let gpaValue = a.number("gpa"), level = levelNumber(a)
            return { p, _, _, tdr in p.module.pagePromote(tdr: tdr, gpa: gpaValue, level: level) }
        },
        call("tdh.mem.page.demote", "TDH.MEM.PAGE.DEMOTE: a large leaf split into 512 children on a new S-EPT page", [gpa, level, septPage]) { a in
            let gpaValue = a.number("gpa"), level = levelNumber(a), given = a[number: "sept_page"]
            return { p, m, _, tdr in p.module.pageDemote(tdr: tdr, gpa: gpaValue, level: level, page: given ?? p.allocMeta()) }
        },
        call("tdh.mem.sept.remove", "TDH.MEM.SEPT.REMOVE: an S-EPT page whose entries are all FREE freed", [gpa, blockLevel]) { a in
            let gpaValue = a.number("gpa"), level = levelNumber(a)
            return { p, _, _, tdr in p.module.septRemove(tdr: tdr, gpa: gpaValue, level: level) }
        },
        call("tdg.mem.page.accept", "TDG.MEM.PAGE.ACCEPT from the TD: a PENDING page zeroed and MAPPED (its lines TD-owned)", [gpa, level]) { a in
            let gpaValue = a.number("gpa"), level = levelNumber(a)
            return { p, _, _, tdr in
                let r = p.module.accept(tdr: tdr, gpa: gpaValue, level: level)
                if r == .status(.success) { p.accepted(level: level) }
                return r
            }
        },
        Steps.platformStep(TDXPlatform.self, "tdh.phymem.page.reclaim", "TDH.PHYMEM.PAGE.RECLAIM: a page of a TD in teardown back to PT_NDA",
                           [Parameter("pa", .address(), required: true, "the page")]) { a, _ throws(ScenarioError) in
            let pa = a.number("pa")
            return { p, _ in p.module.phymemPageReclaim(pa: pa) }
        },
        Steps.platformStep(TDXPlatform.self, "tdh.phymem.page.wbinvd", "TDH.PHYMEM.PAGE.WBINVD: a reclaimed page's lines written back under its old KeyID",
                           [Parameter("pa", .address(), required: true, "the page")]) { a, _ throws(ScenarioError) in
            let pa = a.number("pa")
            return { p, _ in p.module.phymemPageWbinvd(pa: pa) }
        },
        call("tdg.vp.vmcall.mapgpa", "TDG.VP.VMCALL<MapGPA> (R12 GPA with the shared bit for shared, R13 size): KVM's checks, 2M chunks to the VMM, which converts each (shared: private leaves zapped); R10 and R11 as the TD reads them",
             [Parameter("gpa", .address(), required: true, "the GPA without the shared bit"),
              Parameter("size", .address(), required: true, "bytes"),
              Parameter("shared", .bool, default: "false", "convert to shared (R12 carries the shared bit)"),
              Parameter("pending-events", .bool, default: "false", "an interrupt is pending: KVM returns RETRY after the first chunk")]) { a in
            let g = a.number("gpa") | (a.bool("shared") ? KVMTDX.sharedBit : 0), size = a.number("size"), events = a.bool("pending-events")
            return { p, _, i, _ in
                p.withKVM(i) { p, k, spare in
                    p.topUp(&spare, forMapGPA: size, hugepages: k.hugepages)
                    return k.mapGPA(gpa: g, size: size, module: &p.module, pendingEvents: events, spare: &spare)
                } ?? TDVMCallResult(r10: TDVMCallResult.subfuncUnsupported, r11: g)
            }
        },
        call("ept-violation", "the TD touches a private GPA KVM has not mapped: tdx_handle_ept_violation links the S-EPT levels and AUGs the 4K page (KVM_EXIT_MEMORY_FAULT if the attribute is shared)", [gpa]) { a in
            let g = a.number("gpa")
            return { p, _, i, _ in
                p.withKVM(i) { p, k, spare -> any Outcome in
                    spare = (0..<3).map { _ in p.allocMeta() }.reversed()  // at most three S-EPT levels to link
                    return k.privateFault(gpa: g, module: &p.module, spare: &spare)
                } ?? TDXStatus(.pageMetadataIncorrect, 2)
            }
        },
        guestAccess("guest-read", write: false), guestAccess("guest-write", write: true),
        call("destroy", "KVM_DESTROY_VM: every private leaf zapped, the HKID released (VP.FLUSH, VPFLUSHDONE, CACHE.WB, KEY.FREEID), then RECLAIM of the vCPU, S-EPT, TDCS pages and the TDR (WBINVD too); a failed reclaim leaks the page", []) { _ in
            { p, m, i, _ in
                let r = p.destroy(i)
                m.rebootGuestKernel(i)
                return r
            }
        },
        guestKernelStep("accept_memory", "the TD kernel's accept_memory(start, size): the guard unit added when the end is 2M-aligned, then tdx_accept_memory (1G, 2M, 4K) over each run of unaccepted units",
                        [Parameter("gpa", .address(), required: true, "start"), Parameter("size", .address(), required: true, "bytes")]) { a in
            let start = a.number("gpa"), size = a.number("size")
            return { g, accept in g.acceptMemory(start, size) { GuestKernel.tdxAcceptMemory($0, $1, accept) } ? OK() as any Outcome : TDXGuestPanic.acceptFailed }
        },
        guestKernelStep("guest-alloc", "the TD kernel's page allocator hands out pages, accepting 4 MiB blocks of unaccepted memory as it runs short (lazy acceptance)",
                        [Parameter("pages", .count(1...(1 << 40)), required: true, "4K pages")]) { a in
            let pages = a.number("pages")
            return { g, accept in g.allocatePages(pages) { GuestKernel.tdxAcceptMemory($0, $1, accept) } ? OK() as any Outcome : TDXGuestPanic.outOfMemory }
        },
        call("load_unaligned_zeropad", "the TD kernel reads 8 bytes through its direct map that may cross into the next page: an MMIO #VE there is refused by handle_mmio and fixed up; a private page not accepted kills the VM",
             [Parameter("gpa", .address(), required: true, "the word's guest physical address")]) { a in
            let g = a.number("gpa")
            return { p, m, i, _ in p.zeropad(&m, i, gpa: g) }
        },
        Steps.platformStep(TDXPlatform.self, "dma-write", "a device writes a page by DMA: a partial write with no TD KeyID (poisons a TD-owned line on erratum CPUs)",
                           [Parameter("pa", .physical, required: true, "the page")]) { a, _ throws(ScenarioError) in
            let pfn = a.number("pa") >> pageShift
            return { p, _ in p.memoryAccess(pfn: pfn, write: true, partial: true) }
        },
    ]

    /// The TD's own access to a private page through the S-EPT: an EPT-violation exit if the
    /// entry is not MAPPED; a line without the TD-owner bit or poisoned is a machine check
    /// delivered to the module, and the TD is marked FATAL (base spec §16.5).
    static func guestAccess(_ name: String, write: Bool) -> StepDefinition {
        call(name, "the TD \(write ? "writes" : "reads") a private page: an EPT-violation exit if not MAPPED; #MC and TD FATAL if its lines lost the TD-owner bit or were poisoned", [gpa]) { a in
            let gpaValue = a.number("gpa")
            return { p, _, _, tdr in p.tdAccess(tdr, gpa: gpaValue, write: write) }
        }
    }

    /// TD `tdr`'s access to `gpa` through the S-EPT, as `guestAccess` describes it.
    mutating func tdAccess(_ tdr: UInt64, gpa gpaValue: UInt64, write: Bool) -> any Outcome {
        guard let t = module.tdIndex(tdr) else { return TDXStatus(.operandInvalid, 1) }
        if module.tds[t].fatal { return TDXGuestAccess.fatal }
        let w = module.walk(td: t, gpaValue, to: 0)
        guard w.state == .mapped || (write ? false : w.state.guestAccessibleLeaf), let hpa = TDXTD.hpa(w.entry) else {
            return TDXResult.eptViolationExit(requested: 0, level: w.level, state: w.state)
        }
        let pfn = (hpa + (gpaValue & ((1 << (12 + 9 * UInt64(w.level))) - 1))) >> pageShift
        if poisoned.contains(pfn) || !owned.contains(pfn) {
            poisoned.insert(pfn)
            stats.tdMachineChecks += 1
            module.markFatal(tdr: tdr)
            return TDXGuestAccess.machineCheck
        }
        owned.insert(pfn)
        return OK()
    }

    /// load_unaligned_zeropad in TD `i`'s kernel: the word's own page read, then, when the
    /// unaligned word runs into the next page, that page. An MMIO #VE there (no memslot:
    /// KVM's MMIO SPTE has suppress-VE clear) is refused by handle_mmio because the access
    /// crosses a page (-EFAULT), and ve_raise_fault's fixup_exception runs
    /// ex_handler_zeropad with the #VE's GLA, the next page's start: fixed up. Anything
    /// else ends as the page's access does. arch/x86/coco/tdx/tdx.c handle_mmio,
    /// arch/x86/kernel/traps.c exc_virtualization_exception, arch/x86/mm/extable.c.
    mutating func zeropad(_ m: inout Machine, _ i: Int, gpa: UInt64) -> any Outcome {
        let r0 = tdKernelRead(&m, i, gpa: gpa & ~(pageBytes - 1), split: false)
        guard r0.kind == .success else { return r0 }
        let (next, past) = (gpa & ~7).addingReportingOverflow(8)
        guard gpa & 7 != 0, !past, next & (pageBytes - 1) == 0 else { return r0 }
        let r1 = tdKernelRead(&m, i, gpa: next, split: true)
        if r1 as? TDXGuestAccess == .mmioVE(split: true) {
            stats.zeropadFixups += 1
            return ZeropadFixedUp(exception: "#VE")
        }
        return r1
    }

    /// The TD kernel's read of the page at `gpa` through its direct map, private or shared
    /// as its PTE says (the shared bit): past the guest's memory, an MMIO #VE (emulated by
    /// handle_mmio unless the access splits pages); a private or shared access against the
    /// other attribute, KVM_EXIT_MEMORY_FAULT; a private page KVM must first add (AUG) or
    /// one still PENDING, the TD's access before accepting, after which KVM kills the VM
    /// (tdx_is_sept_violation_unexpected_pending: "Guest access before accepting"); a
    /// MAPPED page, the memory-integrity check of `guestAccess`.
    mutating func tdKernelRead(_ m: inout Machine, _ i: Int, gpa: UInt64, split: Bool) -> any Outcome {
        guard let attributePrivate = kvm[i]?.isPrivate(gpa >> pageShift), let tdr = tdrs[i], let t = module.tdIndex(tdr) else {
            return TDXStatus(.operandInvalid, 1)
        }
        if dead[i] { return KernelStatus.error(.EIO) }
        guard gpa < m.guests[i].memory else { return TDXGuestAccess.mmioVE(split: split) }
        let privateMapping = m.guestKernels[i].isEncrypted(gfn: gpa >> pageShift)
        guard privateMapping == attributePrivate else { return KVMTDXExit.memoryFault(gpa: gpa, toPrivate: privateMapping) }
        guard privateMapping else { return OK() }
        var w = module.walk(td: t, gpa, to: 0)
        if w.state == .free || w.state == .removed {
            _ = withKVM(i) { p, k, spare in
                p.topUp(&spare, hugepages: k.hugepages)
                return k.privateFault(gpa: gpa, module: &p.module, spare: &spare)
            }
            w = module.walk(td: t, gpa, to: 0)
        }
        if w.state == .pending {
            stats.vmDead += 1
            dead[i] = true
            return TDXGuestAccess.accessBeforeAccept(gpa: gpa)
        }
        return tdAccess(tdr, gpa: gpa, write: false)
    }

    public static let definition = ArchitectureDefinition(
        name: "x86-tdx",
        summary: "Intel TDX host: the TDX module (Secure EPT, PAMT, SEAMCALLs, ACCEPT), TDs, the TD-owner bit and the partial-write erratum",
        guestIDs: 1...UInt64(UInt16.max),
        steps: steps,
        workloads: Workloads.tdx,
        policySlots: [
            PolicySlot(section: .host, key: "tdx-pamt", summary: "how the host gives the TDX module its PAMT",
                       policies: TDXPAMTMode.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: TDXPAMTMode.static.rawValue,
                       apply: { name, t in t.host.tdxPAMT = TDXPAMTMode(rawValue: name)! }),
            PolicySlot(section: .machine, key: "tdx-erratum", summary: "X86_BUG_TDX_PW_MCE (Sapphire and Emerald Rapids): a partial write to TD memory poisons the line",
                       policies: [("false", "later CPUs: a partial write clears the TD-owner bit like any other"), ("true", "SPR/EMR: a partial write (MOVNTI, UC, DMA) poisons the line at once")],
                       defaultPolicy: "false", apply: { name, t in t.host.tdxErratum = name == "true" }),
            PolicySlot(section: .host, key: "tdx-page-reset", summary: "when the host resets a page a TD released (MOVDIR64B with its own KeyID) before reusing it",
                       policies: TDXPageReset.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: TDXPageReset.always.rawValue,
                       apply: { name, t in t.host.tdxPageReset = TDXPageReset(rawValue: name)! }),
            PolicySlot(section: .kvm, key: "tdx-hugepages", summary: "how KVM maps TD private memory",
                       policies: [("off", "mainline: 4K only"), ("on", "the TDX huge-page series (unmerged): 2M where the range allows, split (DEMOTE) on a 4K accept or a partial conversion, never merged")],
                       defaultPolicy: "off", apply: { name, t in t.host.tdxHugepages = name == "on" }),
            PolicySlot(section: .guest, key: "accept-memory", summary: "when a TD guest's kernel accepts the memory its firmware left unaccepted",
                       policies: AcceptMemoryMode.allCases.map { ($0.rawValue, $0.summary) }, defaultPolicy: AcceptMemoryMode.lazy.rawValue,
                       apply: { name, t in t.guest.acceptMemory = AcceptMemoryMode(rawValue: name)! }),
        ],
        invariants: [
            Invariant(name: "tdx-private-mapping", layer: "GuestKernel",
                      summary: "no TD kernel maps a page private (no shared bit) whose attribute KVM holds shared: a private mapping to a shared page is a guest shutdown (arch/x86/coco/tdx/tdx.c tdx_early_init)") { m throws(InvariantViolation) in
                guard let p = m.platform as? TDXPlatform else { return }
                for (i, k) in p.kvm.enumerated() {
                    guard let k, let gfn = k.sharedGFNs.filter({ m.guestKernels[i].isEncrypted(gfn: $0) }).min() else { continue }
                    throw InvariantViolation("tdx-private-mapping", "\(m.guests[i].name): gfn \(hex(gfn)) is shared in KVM, but the TD's direct map maps it private")
                }
            },
        ],
        metrics: metricList.map(\.info),
        threadRoutines: HostThreadRoutines.x86,
        makePlatform: { kernel, guests in TDXPlatform(kernel: &kernel, guests: guests) },
        guestKernelConfig: { $0.ccSharedBit = true })
}

/// A TD's access that did not complete.
public enum TDXGuestAccess: Outcome, Hashable {
    case machineCheck, fatal
    /// An EPT-violation #VE on a shared GPA with no memslot (MMIO); `split` when the access
    /// crosses a page, which handle_mmio refuses.
    case mmioVE(split: Bool)
    /// The TD touched a private page before accepting it: KVM marks the VM dead.
    case accessBeforeAccept(gpa: UInt64)
    public var kind: OutcomeKind {
        switch self {
        case .mmioVE(split: false): .success
        default: .fault
        }
    }
    public var description: String {
        switch self {
        case .machineCheck: "#MC in the TD: poison consumed, the TD is FATAL"
        case .fatal: "the TD is FATAL: TDH.VP.ENTER fails"
        case .mmioVE(split: false): "ok (#VE: MMIO emulated by handle_mmio)"
        case .mmioVE(split: true): "#VE: handle_mmio refuses a page-crossing access (-EFAULT), no fixup"
        case .accessBeforeAccept(let gpa): "KVM: Guest access before accepting \(hex(gpa)): the VM is dead"
        }
    }
}
