import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// What a realm guest's kernel counted.
public struct RealmGuestStats: Hashable, Sendable {
    /// load_unaligned_zeropad reads whose translation fault in the next page was fixed up.
    public var zeropadFixups: UInt64 = 0
    /// Synchronous external aborts in the guest kernel (do_sea: no fixup, the kernel dies).
    public var kernelSEAs: UInt64 = 0
    /// Pages set_memory_{en,de}crypted gave up on ("pages will be leaked").
    public var leakedPages: UInt64 = 0
    /// RSI_IPA_STATE_SET calls the realms made.
    public var rsiCalls: UInt64 = 0
}

/// The realm guest's kernel on the CCA platform: its boot, its set_memory_* through RSI, KVM
/// and the RMM, its accesses through its own linear map and stage 2, load_unaligned_zeropad.
/// docs/cca.md.
extension CCAPlatform {
    /// The realm's RSI_IPA_STATE_SET on vCPU `vcpu` of guest `i`: the RMM's own refusal, or
    /// its exit handled by KVM and the VMM and the answer on the next REC entry.
    mutating func rsiCall(_ i: Int, vcpu: Int, _ b: UInt64, _ t: UInt64, _ r: RIPAS, _ f: UInt64) -> RSIResult? {
        guard let rec = kvmREC(i, vcpu: vcpu) else { return nil }
        guestStats.rsiCalls += 1
        let answer = rmm.rsiIPAStateSet(rec: rec, base: b, top: t, ripas: r, flags: f)
        guard let exit = answer as? RECExit else { return answer as? RSIResult }
        // RTTs for the range's unaligned edges and any block split on the way: a few per GiB.
        return withKVM(i, need: 16 + Int((t &- b) >> 30) * 4) { k, fw in k.ripasExit(&fw, vcpu: vcpu, exit).1 } ?? nil
    }

    /// set_memory_* in realm guest `i`'s kernel (its linear-map address of the pages): the
    /// realm's __set_memory_enc_dec under the guest's `guest.cca-enc-order` and
    /// `guest.cca-vmalloc`, its RSI calls through KVM.
    static func realmSetMemory(_ m: inout Machine, guest i: Int, va: UInt64, numpages: Int, encrypt: Bool) -> any Outcome {
        m.withPlatform(CCAPlatform.self) { p, m in
            guard p.running(i) != nil else { return RealmNotRunning(reason: "KVM has not launched it") }
            let r = m.guestKernels[i].realmSetMemory(va, numpages: numpages, encrypt: encrypt) {
                p.rsiCall(i, vcpu: 0, $0, $1, $2, $3)
            }
            if r.kind != .success { p.guestStats.leakedPages += UInt64(numpages) }
            return r
        }
    }

    /// The realm kernel's boot (arm64_rsi_setup_memory): RIPAS RAM over all its memory with
    /// RSI_NO_CHANGE_DESTROYED; a failure is its panic.
    mutating func bootRealmKernel(_ i: Int, memory: UInt64) -> any Outcome {
        GuestKernel.rsiSetMemoryRange(0, memory, .ram, flags: 0) { rsiCall(i, vcpu: 0, $0, $1, $2, $3) } == nil
            ? OK() : RealmGuestPanic.ripasSetup
    }

    /// The realm kernel's read of the page at `va` on vCPU `vcpu`: its own translation (a
    /// not-valid PTE is a translation fault), then stage 2 at the IPA its PTE gives (the
    /// NS-shared bit selects the unprotected alias): RIPAS EMPTY is the SEA the RMM injects,
    /// anything unmapped exits to KVM, which maps it.
    mutating func realmKernelRead(_ m: inout Machine, _ i: Int, va: UInt64, vcpu: Int) -> (translated: Bool, outcome: any Outcome) {
        guard let e = m.guestKernels[i].translate(va: va, vcpu: vcpu) else { return (false, OK()) }
        guard let topBit = kvmTopBit(i) else { return (true, RealmNotRunning(reason: "KVM has not launched it")) }
        let gpa = e.pa | (va & (pageBytes - 1))
        return (true, realmAccess(i, ipa: gpa | (e.attributes.contains(.shared) ? topBit : 0)))
    }

    /// Realm guest `guest`'s kernel reads the page at `gpa` through its linear map on vCPU 0
    /// (KVM maps it if it must): the bench's touch after a conversion.
    public static func realmKernelTouch(_ m: inout Machine, guest i: Int, gpa: UInt64) -> any Outcome {
        m.withPlatform(CCAPlatform.self) { p, m in
            let (translated, r) = p.realmKernelRead(&m, i, va: m.guestKernels[i].va(gfn: gpa >> pageShift), vcpu: 0)
            return translated ? r : GuestPageFault()
        }
    }

    /// load_unaligned_zeropad in realm guest `i`'s kernel: an 8-byte load at `va`; when it
    /// runs into the next page, that page is read too. A translation fault there (the PTE
    /// invalid, or a vmalloc guard page) is fixed up by ex_handler_load_unaligned_zeropad
    /// (the bytes past the page read as zero); a synchronous external abort (a valid PTE to
    /// RIPAS EMPTY) goes to do_sea, which never tries a fixup: the kernel dies. Without
    /// CONFIG_DCACHE_WORD_ACCESS the kernel reads byte by byte and never crosses.
    /// arch/arm64/include/asm/word-at-a-time.h, arch/arm64/mm/extable.c, arch/arm64/mm/fault.c.
    mutating func zeropad(_ m: inout Machine, _ i: Int, va: UInt64, vcpu: Int) -> any Outcome {
        let wordAccess = m.guestKernels[i].kernel.config.dcacheWordAccess
        var pages = [va & ~(pageBytes - 1)]
        let next = (va & ~7) &+ 8
        if wordAccess, va & 7 != 0, next & (pageBytes - 1) == 0 { pages.append(next) }
        for (n, page) in pages.enumerated() {
            let (translated, r) = realmKernelRead(&m, i, va: page, vcpu: vcpu)
            if !translated {
                if n == 0 { return RealmGuestPanic.kernelFault(va: page) }
                guestStats.zeropadFixups += 1
                return ZeropadFixedUp(exception: "translation fault", handler: "ex_handler_load_unaligned_zeropad")
            }
            if case .sea? = r as? KVMRealmOutcome {
                guestStats.kernelSEAs += 1
                return RealmGuestPanic.sea(va: page)
            }
            if r.kind != .success { return r }
        }
        return wordAccess ? OK() : AnnotatedOutcome(OK(), notes: ["no CONFIG_DCACHE_WORD_ACCESS: read byte by byte, never past the page"])
    }

    /// The explorer's set_memory_decrypted of one page in a realm guest: the actions of
    /// `order`, one page of the linear map. Each runs in guest `i`'s kernel on the CCA
    /// platform.
    static func decryptActions(guest i: Int, gfn: UInt64, order: RealmEncOrder) -> [ThreadAction] {
        func pte(_ label: String, set: Attributes, clear: Attributes) -> ThreadAction {
            ThreadAction(label) { m in (m.guestKernels[i].writePTE(gfn: gfn, set: set, clear: clear), false) }
        }
        let flush = ThreadAction("flush_tlb_kernel_range") { m in
            m.guestKernels[i].flush(gfn: gfn)
            return (OK(), false)
        }
        let rsi = ThreadAction("rsi_set_memory_range_shared: RSI_IPA_STATE_SET EMPTY (the exit, KVM, REC_ENTER)") { m in
            let gpa = gfn << pageShift
            let failure: RealmRIPASFailure? = m.withPlatform(CCAPlatform.self) { p, _ in
                GuestKernel.rsiSetMemoryRange(gpa, gpa + pageBytes, .empty, flags: 1) { b, t, r, f in p.rsiCall(i, vcpu: 0, b, t, r, f) }
            }
            if let failure { return (failure, true) }
            return (OK(), false)
        }
        switch order {
        case .invalidateFirst:
            return [pte("__change_memory_common: PTE invalid, NS-shared bit set", set: .shared, clear: .present), flush, rsi,
                    pte("__change_memory_common: PTE valid", set: .present, clear: [])]
        case .inPlace:
            return [rsi, pte("the NS-shared bit set in the valid PTE", set: .shared, clear: []), flush]
        }
    }

    static let guestThreadRoutines: [ThreadRoutineDefinition] = [
        ThreadRoutineDefinition(
            "set_memory_decrypted",
            "one page of a realm's linear map made shared, one action per step of __set_memory_enc_dec in the chosen order",
            [Parameter("guest", .guest, required: true, "the realm"), Parameter("gpa", .address(), required: true, "the page (guest physical, page-aligned)"),
             Parameter("order", .choice(RealmEncOrder.allCases.map(\.rawValue)), default: RealmEncOrder.invalidateFirst.rawValue,
                       "invalidate-first (as merged) or in-place (RIPAS first, the PTE valid)")]
        ) { a, _ throws(ScenarioError) in
            let g = a.guest!.spec, i = a.guest!.index, gpa = a.number("gpa")
            guard gpa & (pageBytes - 1) == 0, gpa < g.memory else {
                throw a.field("gpa").error("gpa \(hex(gpa)) must be page-aligned and inside \(g.name)'s \(ByteSize.format(g.memory))")
            }
            return decryptActions(guest: i, gfn: gpa >> pageShift, order: RealmEncOrder(rawValue: a.text("order")!)!)
        },
    ]

    /// set_memory_encrypted/decrypted in a realm's kernel (the arm64 host kernel has no such
    /// operation outside a realm): `gpa` through the linear map, or `addr` a virtual address
    /// of the realm's kernel (a vmalloc address, which `guest.cca-vmalloc` decides).
    static func setMemoryStep(_ name: String, encrypt: Bool) -> StepDefinition {
        StepDefinition(name, "the realm's \(name): __set_memory_enc_dec in the order guest.cca-enc-order gives, RSI_IPA_STATE_SET to \(encrypt ? "RAM" : "EMPTY") through KVM", [
            Parameter("guest", .guest, required: true, "the realm"),
            Parameter("gpa", .address(), "the first page's guest physical address, reached through the linear map"),
            Parameter("addr", .address(), "or a virtual address of the realm's kernel (vmalloc: guest.cca-vmalloc)"),
            Parameter("numpages", .count(1...(1 << 40)), default: "1", "pages to change"),
        ]) { a, _ throws(ScenarioError) in
            guard a.has("gpa") != a.has("addr") else { throw a.fields.owner.error("give 'gpa' or 'addr' (one of them)") }
            return try Steps.guestCPAStep(name, &a, guest: a.guest!.index, spec: a.guest!.spec, numpages: Int(a.number("numpages")))
        }
    }

    /// A user access through a PTE a realm driver's remap_pfn_range wrote: the PTE keeps the
    /// pgprot of the mmap (pgprot_decrypted sets the NS-shared bit), whatever set_memory_*
    /// did to the linear map since; the IPA it reaches meets stage 2 as a kernel access
    /// does, and an SEA in user mode is SIGBUS (do_sea → arm64_notify_die).
    mutating func userRead(_ i: Int, va: UInt64) -> any Outcome {
        guard let pte = userPTEs[i][va & ~(pageBytes - 1)] else { return RealmUserAccess.sigsegv }
        guard let k = kvm[i] else { return RealmNotRunning(reason: "KVM has not launched it") }
        let r = realmAccess(i, ipa: pte.gpa | (pte.shared ? k.topBit : 0))
        if case .sea? = r as? KVMRealmOutcome { return RealmUserAccess.sigbus }
        return r
    }

    static let guestSteps: [StepDefinition] = [
        setMemoryStep("set_memory_encrypted", encrypt: true), setMemoryStep("set_memory_decrypted", encrypt: false),
        Steps.platformStep(CCAPlatform.self, "remap_pfn_range", "a realm driver maps a page of its memory to user space with its pgprot (decrypted: the NS-shared bit set): the user PTE as written", [
            Parameter("guest", .guest, required: true, "the realm"),
            Parameter("addr", .address(), required: true, "the user virtual address"),
            Parameter("gpa", .address(), required: true, "the page's guest physical address"),
            Parameter("prot", .choice(["decrypted", "encrypted"]), default: "decrypted", "pgprot_decrypted (shared) or pgprot_encrypted (protected)"),
        ]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index, g = a.guest!.spec, va = a.number("addr") & ~(pageBytes - 1), gpa = a.number("gpa") & ~(pageBytes - 1)
            guard gpa < g.memory else { throw a.field("gpa").error("gpa \(hex(gpa)) is past \(g.name)'s \(ByteSize.format(g.memory))") }
            let shared = a.text("prot") == "decrypted"
            return { p, _ in
                p.userPTEs[i][va] = (gpa, shared)
                return ValueOutcome("pte \(hex(gpa))\(shared ? " [NS]" : "")")
            }
        },
        Steps.platformStep(CCAPlatform.self, "realm-user-read", "a realm's user process reads through a remap_pfn_range mapping: the IPA its PTE gives meets stage 2 (SIGBUS for an SEA, SIGSEGV where nothing is mapped)", [
            Parameter("guest", .guest, required: true, "the realm"),
            Parameter("addr", .address(), required: true, "the user virtual address"),
        ]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index, va = a.number("addr")
            return { p, _ in p.userRead(i, va: va) }
        },
        StepDefinition("guest-vmap", "vmap() in a realm's kernel: pages of its memory mapped in its vmalloc space (with a guard page after); the result is the address", [
            Parameter("guest", .guest, required: true, "the realm"),
            Parameter("gpa", .address(), required: true, "the first page's guest physical address"),
            Parameter("numpages", .count(1...(1 << 20)), default: "1", "pages"),
        ]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index, g = a.guest!.spec, gpa = a.number("gpa"), n = Int(a.number("numpages"))
            guard gpa & (pageBytes - 1) == 0, gpa < g.memory, UInt64(n) <= (g.memory - gpa) >> pageShift else {
                throw a.field("gpa").error("\(hex(gpa)) + \(n) pages must be page-aligned and inside \(g.name)'s \(ByteSize.format(g.memory))")
            }
            return { m throws(HostKernelError) in
                let va = try m.guestKernels[i].vmap(gpa: gpa, pages: n)
                m.counters.operations += 1
                return ValueOutcome(hex(va))
            }
        },
        Steps.platformStep(CCAPlatform.self, "load_unaligned_zeropad", "the realm kernel reads 8 bytes that may cross into the next page: a translation fault there is fixed up, a synchronous external abort is not", [
            Parameter("guest", .guest, required: true, "the realm"),
            Parameter("gpa", .address(), "the word's guest physical address, read through the linear map"),
            Parameter("addr", .address(), "or the word's virtual address in the realm's kernel (a vmalloc address, say)"),
            Parameter("cpu", .count(0...511), default: "0", "the vCPU"),
        ]) { a, _ throws(ScenarioError) in
            let i = a.guest!.index, g = a.guest!.spec, vcpu = Int(a.number("cpu"))
            guard vcpu < g.vcpus else { throw a.field("cpu").error("vCPU \(vcpu) is past \(g.name)'s \(g.vcpus) vCPUs (valid: 0 to \(g.vcpus - 1))") }
            guard a.has("gpa") != a.has("addr") else { throw a.fields.owner.error("give 'gpa' or 'addr' (one of them)") }
            if a.has("gpa"), a.number("gpa") >= g.memory { throw a.field("gpa").error("gpa \(hex(a.number("gpa"))) is past \(g.name)'s \(ByteSize.format(g.memory))") }
            let gpa = a[number: "gpa"], addr = a[number: "addr"]
            return { p, m in p.zeropad(&m, i, va: addr ?? m.guestKernels[i].va(gfn: gpa! >> pageShift) + (gpa! & (pageBytes - 1)), vcpu: vcpu) }
        },
    ]
}

/// How a realm user process's access ended, when it did not.
public enum RealmUserAccess: Outcome, Hashable {
    case sigbus, sigsegv
    public var kind: OutcomeKind { .fault }
    public var description: String {
        self == .sigbus ? "SIGBUS (BUS_OBJERR: synchronous external abort in user mode, do_sea)" : "SIGSEGV (no mapping)"
    }
}

/// A realm guest kernel's death.
public enum RealmGuestPanic: Outcome, Hashable {
    case ripasSetup
    case sea(va: UInt64)
    case kernelFault(va: UInt64)
    public var kind: OutcomeKind { .fault }
    public var description: String {
        switch self {
        case .ripasSetup: "guest panic: Failed to set memory range to protected"
        case .sea(let va): "guest oops: synchronous external abort at \(hex(va)) (do_sea: no fixup for a kernel SEA)"
        case .kernelFault(let va): "guest oops: translation fault at \(hex(va)) on the word's own page (no fixup)"
        }
    }
}
