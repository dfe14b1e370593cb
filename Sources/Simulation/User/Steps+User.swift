import Hardware
import HostKernel
import PageTables

/// User mappings on an x86 kernel (the host's, or a guest's with `guest:`): mmap and its
/// kin, faults and inserts, huge-page splits, GUP, pins, kmap, writeback and DMA, each
/// under its Linux name. docs/user-mappings.md.
public enum UserSteps {
    static let process = Parameter("process", .name, required: true, "the process (declared under processes:)")
    static let guest = Parameter("guest", .guest, "the process runs in this guest's kernel (declared with its guest)")
    static let addr = Parameter("addr", .address(), required: true, "a user virtual address")
    static let len = Parameter("len", .address(), required: true, "bytes (rounded up to pages)")
    static let numpages = Parameter("numpages", .count(1...(1 << 24)), default: "1", "pages")
    static let pa = Parameter("pa", .address(0...maxPhys), required: true, "the physical address of the frame (RAM, or device memory past it; below 2^52)")
    /// Physical addresses below x86's 52-bit MAXPHYADDR.
    static let maxPhys: UInt64 = (1 << 52) - 1
    static let ramPage = Parameter("pa", .physical, required: true, "the physical address of a page of RAM")

    public static let all: [StepDefinition] = [
        mmap, munmap, mprotect, madvise, fork, mapVdso, userAccess("user-read", write: false), userAccess("user-write", write: true), userPTE,
        insert(.pfnProt), insert(.pfn), insert(.mixed), insert(.mixedProt), insertPMD, splitHugePMD,
        gup("get_user_pages", pin: false), gup("pin_user_pages", pin: true), unpinUserPage, putPage, followPage, kmap, writeback, swapOut, dmaWrite,
    ]

    /// The process a step names, checked against `processes:` in the kernel `guest:` chooses.
    static func processArgument(_ a: StepArguments, _ ctx: StepContext) throws(ScenarioError) -> (guest: Int?, name: String) {
        let name = a.text("process")!
        let g = a.guest?.index
        guard ctx.processes.contains(where: { $0.name == name && $0.guest == g }) else {
            let here = ctx.processes.filter { $0.guest == g }.map(\.name)
            let whereText = g.map { "guest \(ctx.guests[$0].name)" } ?? "the host"
            throw a.field("process").error("unknown process '\(name)' in \(whereText)"
                + (here.isEmpty ? "; declare it under processes:" : Suggest.hint(name, in: here, listedBy: "the scenario's processes:")))
        }
        return (g, name)
    }

    /// A prot written `PROT_READ|PROT_WRITE` (the schema checked its tokens); `decrypted`
    /// and `encrypted` appear only in an insert's prot.
    static func protArgument(_ a: StepArguments) -> UserProt {
        if case .success(let p) = UserProt.parse(a.text("prot")!) { return p }
        return UserProt()
    }

    /// A user step: the arguments read, then `body` run on the process's kernel and index
    /// with the platform as the user-mapping code sees it, counted.
    static func step(_ name: String, _ summary: String, _ arguments: [Parameter],
                     _ prepare: @escaping @Sendable (inout StepArguments, StepContext) throws(ScenarioError) -> @Sendable (inout Kernel, Int, inout PlatformAccessibility) -> any Outcome) -> StepDefinition {
        StepDefinition(name, summary, [process, guest] + arguments) { a, ctx throws(ScenarioError) in
            let (g, pname) = try processArgument(a, ctx)
            let body = try prepare(&a, ctx)
            return { m throws(HostKernelError) in
                let r = m.withUserAccess(guest: g, process: pname, body)
                m.count(r)
                return r
            }
        }
    }

    static let protTokens = Array(UserProt.tokens.prefix(4))
    /// A step on a page the kernel holds (no process): the host's kernel, or `guest:`'s.
    static func pageStep(_ name: String, _ summary: String, _ arguments: [Parameter],
                         _ prepare: @escaping @Sendable (inout StepArguments, StepContext) throws(ScenarioError) -> @Sendable (inout Kernel, inout PlatformAccessibility) -> any Outcome) -> StepDefinition {
        StepDefinition(name, summary, [guest] + arguments) { a, ctx throws(ScenarioError) in
            let g = a.guest?.index
            let body = try prepare(&a, ctx)
            return { m throws(HostKernelError) in
                let r = m.withPageAccess(guest: g, body)
                m.count(r)
                return r
            }
        }
    }

    static let mmapFlags = ["MAP_PRIVATE", "MAP_SHARED", "MAP_ANONYMOUS", "MAP_FIXED", "MAP_FIXED_NOREPLACE"]

    /// mmap (do_mmap): the address (a hint without MAP_FIXED), the length, PROT_*, MAP_*, and
    /// what it maps.
    static let mmap = step("mmap", "a mapping: anonymous, a file, or a driver's (TTM buffer object, coherent DMA buffer, device BAR, a guest's RAM); prints its address or the errno",
                           [Parameter("addr", .address(), default: "0", "the address: a hint, or exact with MAP_FIXED / MAP_FIXED_NOREPLACE"), len,
                            Parameter("prot", .flags(protTokens), default: "PROT_READ|PROT_WRITE", "the PROT_* bits, or PROT_NONE"),
                            Parameter("flags", .flags(mmapFlags), default: "MAP_PRIVATE", "MAP_PRIVATE or MAP_SHARED, with MAP_FIXED or MAP_FIXED_NOREPLACE"),
                            Parameter("backing", .choice(["anon", "file", "ttm", "dma-coherent", "pfnmap", "guest-memory"]), default: "anon", "what it maps"),
                            Parameter("file", .name, "backing file: the page-cache file's name (files of one name are one file)"),
                            Parameter("vram", .count(0...(1 << 24)), default: "0", "backing ttm: the buffer object's first pages in VRAM (iomem); the rest are system pages"),
                            Parameter("decrypted", .bool, default: "false", "backing dma-coherent: force_dma_unencrypted (an SEV guest's devices): the buffer is decrypted"),
                            Parameter("device", .address(0...maxPhys), "backing pfnmap: the BAR's physical address (default: past RAM; below 2^52)"),
                            Parameter("memory-of", .name, "backing guest-memory: the guest whose RAM this maps (the VMM's memslot)"),
                            Parameter("huge", .bool, default: "false", "madvise(MADV_HUGEPAGE) for anon and file; a driver that maps huge PMDs for ttm and pfnmap")]) { a, ctx throws(ScenarioError) in
        let prot = protArgument(a)
        let flagsText = a.text("flags")!
        var shared = false, fixed = MapFixed.hint
        for t in flagTokens(flagsText) {
            switch t {
            case "MAP_PRIVATE", "MAP_ANONYMOUS": break
            case "MAP_SHARED": shared = true
            case "MAP_FIXED": fixed = fixed == .noreplace ? .noreplace : .fixed
            case "MAP_FIXED_NOREPLACE": fixed = .noreplace
            default: break  // the schema refused anything else
            }
        }
        let backingName = a.text("backing")!
        func only(_ key: String, _ with: String) throws(ScenarioError) {
            if a.has(key) && backingName != with { throw a.field(key).error("'\(key)' goes with 'backing: \(with)'") }
        }
        try only("file", "file"); try only("vram", "ttm"); try only("decrypted", "dma-coherent"); try only("device", "pfnmap"); try only("memory-of", "guest-memory")
        let backing: MmapBacking
        switch backingName {
        case "file":
            guard a.has("file") else { throw a.fields.owner.error("'backing: file' needs 'file:' (the file's name)") }
            backing = .file(name: a.text("file")!)
        case "ttm": backing = .ttm(vram: Int(a.number("vram")))
        case "dma-coherent": backing = .dmaCoherent(decrypted: a.bool("decrypted"))
        case "pfnmap": backing = .pfnmap(pa: a[number: "device"] ?? ctx.kernel.user.iomemBase)
        case "guest-memory":
            guard ctx.architecture.name == "x86-sev" else { throw a.field("backing").error("'backing: guest-memory' maps an SEV guest's RAM in its VMM: 'arch: x86-sev'") }
            guard a.has("memory-of") else { throw a.fields.owner.error("'backing: guest-memory' needs 'memory-of:' (the guest)") }
            guard a.guest == nil else { throw a.field("guest").error("a guest's RAM is mapped by the host's VMM, not inside a guest") }
            let gname = a.text("memory-of")!
            guard let gi = ctx.guests.firstIndex(where: { $0.name == gname }) else {
                throw a.field("memory-of").error("unknown guest '\(gname)'" + (ctx.guests.isEmpty ? "; this scenario defines no guests" : Suggest.hint(gname, in: ctx.guests.map(\.name), listedBy: "the scenario's guests:")))
            }
            backing = .guestMemory(guest: gi, pa: ctx.guests[gi].placement, size: ctx.guests[gi].memory)
        default: backing = .anonymous
        }
        let request = MmapRequest(addr: a.number("addr"), len: a.number("len"), prot: prot, shared: shared, fixed: fixed, backing: backing, huge: a.bool("huge"))
        return { k, pi, _ in k.userMmap(process: pi, request) }
    }

    static let munmap = step("munmap", "unmaps a range: VMAs split at its ends, pages zapped (a huge PMD partly inside split first); an unmapped range is not an error", [addr, len]) { a, _ throws(ScenarioError) in
        let start = a.number("addr"), length = a.number("len")
        return { k, pi, acc in
            let guests = k.user.guestMemoryIn(process: pi, start: start, len: length)
            let r = k.user.munmap(process: pi, addr: start, len: length)
            // The MMU notifier reaches KVM for what was unmapped.
            if r == .ok { for g in guests { acc.platform.guestMemoryReclaimed(guest: g.guest, pfns: g.pfns) } }
            return r
        }
    }

    static let mprotect = step("mprotect", "changes a range's protection: vma_set_page_prot (pgprot_modify), then pte_modify/pmd_modify of each entry; _PAGE_CHG_MASK decides whether the encryption bit survives",
                               [addr, len, Parameter("prot", .flags(protTokens), required: true, "the PROT_* bits, or PROT_NONE")]) { a, _ throws(ScenarioError) in
        let prot = protArgument(a), start = a.number("addr"), length = a.number("len")
        return { k, pi, _ in k.user.mprotect(process: pi, addr: start, len: length, prot: prot) }
    }

    static let madvise = step("madvise", "MADV_DONTNEED zaps the range's pages (the VMAs stay); MADV_HUGEPAGE / MADV_NOHUGEPAGE set or clear VM_HUGEPAGE",
                              [addr, len, Parameter("advice", .choice(["MADV_DONTNEED", "MADV_HUGEPAGE", "MADV_NOHUGEPAGE"]), required: true, "the advice")]) { a, _ throws(ScenarioError) in
        let start = a.number("addr"), length = a.number("len"), advice = a.text("advice")!
        return { k, pi, acc in
            if advice == "MADV_DONTNEED" {
                let guests = k.user.guestMemoryIn(process: pi, start: start, len: length)
                let r = k.user.madviseDontneed(process: pi, addr: start, len: length)
                if r == .ok { for g in guests { acc.platform.guestMemoryReclaimed(guest: g.guest, pfns: g.pfns) } }
                return r
            }
            return k.user.madviseHugepage(process: pi, addr: start, len: length, on: advice == "MADV_HUGEPAGE")
        }
    }

    static let fork = step("fork", "the process forks: the child (a declared process, its mm replaced) gets a copy of every VMA; private anonymous pages are shared read-only until a write copies them",
                           [Parameter("child", .name, required: true, "the child process (declared under processes:, in the same kernel)")]) { a, ctx throws(ScenarioError) in
        let child = a.text("child")!, g = a.guest?.index
        guard ctx.processes.contains(where: { $0.name == child && $0.guest == g }) else {
            throw a.field("child").error("unknown process '\(child)': declare it under processes: (in the same kernel as the parent)")
        }
        guard child != a.text("process")! else { throw a.field("child").error("a process cannot fork into itself") }
        return { k, pi, _ in
            k.user.fork(process: pi, child: child)
            return OK()
        }
    }

    static let mapVdso = step("map_vdso", "exec's [vvar] mapping (VM_PFNMAP, four pages); in a guest of x86-sev the kvmclock page is decrypted and vvar_fault inserts it with pgprot_decrypted", []) { a, ctx throws(ScenarioError) in
        let pvclock = a.guest != nil && ctx.architecture.name == "x86-sev"
        return { k, pi, _ in k.mapVvar(process: pi, pvclock: pvclock) }
    }

    /// A process's own load or store: the fault (if any), then the access through its PTE.
    static func userAccess(_ name: String, write: Bool) -> StepDefinition {
        step(name, "the process \(write ? "writes" : "reads") a byte at addr: handle_mm_fault where needed (COW, a driver's fault handler), then the access; prints ok, SIGSEGV or SIGBUS", [addr]) { a, _ throws(ScenarioError) in
            let va = a.number("addr")
            return { k, pi, acc in
                let r = k.user.handleFault(process: pi, addr: va, write: write, inaccessible: acc.isInaccessible)
                k.user.deliverEvents(&acc)  // the fault's new page and swap-in come before the access
                guard r == .handled, let (pfn, _) = k.user.mappedFrame(process: pi, addr: va) else { return r }
                k.user.noteUserAccess(pfn: pfn, acc)
                return acc.platform.userAccess(&k, pfn: pfn, write: write) ?? r
            }
        }
    }

    static let userPTE = step("user-pte", "prints the user entry mapping addr: its level, raw x86 value (A set as protection_map sets it) and attributes; or none", [addr]) { a, _ throws(ScenarioError) in
        let va = a.number("addr")
        return { k, pi, _ in
            guard va < UserMM.taskSize else { return UserPTEOutcome(level: 1, entry: .none) }  // no user entry up there
            let e = k.user.processes[pi].pageTable.entry(holding: VirtAddr(va))
            return UserPTEOutcome(level: e.level, entry: e.entry)
        }
    }

    /// A driver's call of an insert helper at addr, as its fault handler would make it.
    static func insert(_ kind: PFNInsert) -> StepDefinition {
        var args = [addr, pa]
        if kind.takesProt {
            args.append(Parameter("prot", .flags(UserProt.tokens), default: "PROT_READ|PROT_WRITE", "the prot the driver passes: vm_page_prot's PROT_* bits, with decrypted or encrypted (pgprot_decrypted / pgprot_encrypted)"))
        }
        let summary = kind.takesProt ? "a driver inserts a frame with its own prot (VM_FAULT_NOPAGE, SIGBUS, or the BUG_ON it trips)"
            : "a driver inserts a frame with vm_page_prot (VM_FAULT_NOPAGE, SIGBUS, or the BUG_ON it trips)"
        return step(kind.rawValue, summary + (kind == .mixedProt ? "; Linux 5.6 to 6.3 only" : ""), args) { a, _ throws(ScenarioError) in
            let va = a.number("addr"), pfn = a.number("pa") >> pageShift
            let prot = kind.takesProt ? protArgument(a) : nil
            return { k, pi, _ in
                var attrs: Attributes
                if let prot, let vi = k.user.processes[pi].vmaIndex(va) {
                    // The driver builds its prot from vm_page_prot (as vvar and TTM do) and the PROT_* it names.
                    attrs = PgProt.vmGetPageProt(prot.vmFlags.union(k.user.processes[pi].vmas[vi].flags.intersection(.shared)), memEncrypt: k.user.memEncrypt)
                    attrs.memoryType = k.user.processes[pi].vmas[vi].pageProt.memoryType
                    if let d = prot.decrypted { if d { attrs.remove(.encrypted) } else { attrs.insert(.encrypted) } }
                } else {
                    attrs = k.user.processes[pi].vmaIndex(va).map { k.user.processes[pi].vmas[$0].pageProt } ?? []
                }
                return k.user.insert(kind, process: pi, addr: va, pfn: pfn, prot: attrs)
            }
        }
    }

    static let insertPMD = step("vmf_insert_pfn_pmd", "a driver inserts a 2M frame run as one huge special PMD with vm_page_prot (VM_PFNMAP, not COW; addr and pa 2M-aligned)", [addr, pa]) { a, _ throws(ScenarioError) in
        let va = a.number("addr"), pfn = a.number("pa") >> pageShift
        return { k, pi, _ in k.user.insertPMD(process: pi, addr: va, pfn: pfn) }
    }

    static let splitHugePMD = step("split_huge_pmd", "splits the huge PMD mapping addr (__split_huge_pmd_locked): anonymous THP rebuilt from vm_page_prot, anything else zapped to refault", [addr]) { a, _ throws(ScenarioError) in
        let va = a.number("addr")
        return { k, pi, _ in
            guard let leaf = k.user.processes[pi].pageTable.lookup(VirtAddr(va)), leaf.size == .size2M else { return ValueOutcome("no huge PMD") }
            k.user.splitHugePMD(pi, va)
            return OK()
        }
    }

    static func gup(_ name: String, pin: Bool) -> StepDefinition {
        step(name, pin ? "FOLL_PIN on each page (GUP_PIN_COUNTING_BIAS), faulting in as needed; arch_make_folio_accessible on 4K entries under gup-and-writeback; prints the pages pinned or the errno"
                 : "FOLL_GET on each page (one reference), faulting in as needed; no accessibility hook; prints the pages taken or the errno",
             [addr, numpages, Parameter("flags", .flags(["0", "FOLL_WRITE", "FOLL_LONGTERM"]), default: "0", "FOLL_WRITE and FOLL_LONGTERM, or 0")]) { a, _ throws(ScenarioError) in
            var flags = GUPFlags(pin: pin)
            for t in flagTokens(a.text("flags")!) {
                switch t {
                case "0": break
                case "FOLL_WRITE": flags.write = true
                case "FOLL_LONGTERM": flags.longterm = true
                default: break  // the schema refused anything else
                }
            }
            let va = a.number("addr"), n = Int(a.number("numpages")), gupFlags = flags
            return { k, pi, acc in k.user.getUserPages(process: pi, addr: va, pages: n, flags: gupFlags, &acc) }
        }
    }

    static let unpinUserPage = pageStep("unpin_user_page", "drops a FOLL_PIN (the last reference frees the page); -EINVAL if the frame holds no pin", [ramPage]) { a, _ throws(ScenarioError) in
        let pfn = a.number("pa") >> pageShift
        return { k, _ in k.user.unpinUserPage(pfn: pfn) }
    }

    static let putPage = pageStep("put_page", "drops a FOLL_GET reference", [ramPage]) { a, _ throws(ScenarioError) in
        let pfn = a.number("pa") >> pageShift
        return { k, _ in k.user.putPage(pfn: pfn) }
    }

    static let followPage = step("follow_page", "a pte_page() walker (KSM, migration, pagemap): the page a present entry maps, no reference, no fault; 'no page' where vm_normal_page gives none", [addr]) { a, _ throws(ScenarioError) in
        let va = a.number("addr")
        return { k, pi, acc in
            k.user.followPage(process: pi, addr: va, acc).map { ValueOutcome("page pfn \(hex($0))") as any Outcome } ?? ValueOutcome("no page")
        }
    }

    static let kmap = pageStep("kmap", "the kernel reaches a page through its own mapping (kmap_local_page: the direct map on x86-64; it cannot fail) and reads or writes it",
                           [ramPage, Parameter("access", .choice(["read", "write"]), default: "read", "what the kernel does with it")]) { a, _ throws(ScenarioError) in
        let p = a.number("pa"), write = a.text("access") == "write"
        return { k, acc in
            k.user.kmap(pfn: p >> pageShift, acc)
            let r = acc.platform.hostAccess(&k, pa: p & ~(pageBytes - 1), write: write, context: .data, cpu: 0, kind: .cached)
            acc.platform.noteAccess(pfn: p >> pageShift, write: write, device: false)
            return r
        }
    }

    static let writeback = step("writeback", "writes back the page mapped at addr (a dirty file page, or an anonymous page on its way to swap): __folio_start_writeback with the design's hook, the device's read, the folio clean",
                                [addr]) { a, _ throws(ScenarioError) in
        let va = a.number("addr")
        return { k, pi, acc in
            guard let (pfn, dirty) = k.user.mappedFrame(process: pi, addr: va) else { return ValueOutcome("no page") }
            // folio_clear_dirty_for_io's folio_mkclean comes before __folio_start_writeback.
            if k.user.wouldWriteBack(pfn: pfn, dirtyPTE: dirty, acc) {
                k.user.mkclean(process: pi, addr: va)
                k.user.deliverEvents(&acc)
            }
            let r = k.user.writeback(pfn: pfn, dirtyPTE: dirty, &acc)
            if r != .clean && r != .unevictable {
                if case .bug = r {} else { acc.platform.noteAccess(pfn: pfn, write: false, device: true) }
            }
            return r
        }
    }

    static let swapOut = step("swap-out", "reclaim of the private anonymous page at addr (shrink_folio_list): a large folio split, the swap cache, try_to_unmap (a pinned page is kept; s390 exports a protected mm's page as its PTE is cleared), pageout with the design's writeback hook, the folio freed; prints the slot or why it was kept",
                              [addr]) { a, _ throws(ScenarioError) in
        let va = a.number("addr")
        return { k, pi, acc in k.user.swapOut(process: pi, addr: va, &acc) }
    }

    static let dmaWrite = pageStep("dma-write", "a device writes a page by DMA through the IOMMU (a pinned page's I/O): no CPU access, no encryption key", [pa]) { a, _ throws(ScenarioError) in
        let pfn = a.number("pa") >> pageShift
        return { k, acc in
            k.user.dma(pfn: pfn, acc)
            acc.platform.noteAccess(pfn: pfn, write: true, device: true)
            return OK()
        }
    }
}

extension Machine {
    /// Runs a page step's body on the host's kernel (with the platform) or a guest's.
    mutating func withPageAccess(guest g: Int?, _ body: (inout Kernel, inout PlatformAccessibility) -> any Outcome) -> any Outcome {
        if let g {
            var acc = PlatformAccessibility(platform: NoPlatform())
            return guestKernels[g].withKernel { body(&$0, &acc) }
        }
        var acc = PlatformAccessibility(platform: platform)
        platform = NoPlatform()
        defer { platform = acc.platform }
        let r = body(&kernel, &acc)
        kernel.user.deliverEvents(&acc)
        return r
    }

    /// Runs a user step's body on the process's kernel, with the platform as the
    /// user-mapping code sees it (taken out of the machine for the call).
    mutating func withUserAccess(guest g: Int?, process name: String, _ body: (inout Kernel, Int, inout PlatformAccessibility) -> any Outcome) -> any Outcome {
        // A guest's own processes meet no host platform: their pages are the guest's.
        var acc = PlatformAccessibility(platform: g == nil ? platform : NoPlatform())
        if g == nil { platform = NoPlatform() }
        defer { if g == nil { platform = acc.platform } }
        return withUserKernel(guest: g, process: name) { k, pi in
            let r = body(&k, pi, &acc)
            k.user.deliverEvents(&acc)
            return r
        }
    }
}
