import Hardware
import PageTables

/// A host-kernel memory operation by its Linux name, with its arguments: what `--apply`
/// and scenario steps call.
public struct KernelOperation: Hashable, Sendable, CustomStringConvertible {
    /// The operations a kernel of `isa` has, each with its argument names and a summary.
    public static func catalogue(_ isa: KernelISA) -> [(name: String, arguments: String, summary: String)] {
        isa == .arm64 ? arm64Catalogue : catalogue
    }

    /// arm64's operations. Linux arch/arm64/mm/pageattr.c, asm/tlbflush.h.
    public static let arm64Catalogue: [(name: String, arguments: String, summary: String)] = [
        ("set_memory_ro", "ADDR NUMPAGES", "change_memory_common: read-only; only inside a vmalloc() area (-EINVAL elsewhere)"),
        ("set_memory_rw", "ADDR NUMPAGES", "change_memory_common: writable; only inside a vmalloc() area"),
        ("set_memory_nx", "ADDR NUMPAGES", "change_memory_common: PXN; only inside a vmalloc() area"),
        ("set_memory_x", "ADDR NUMPAGES", "change_memory_common: clear PXN; only inside a vmalloc() area"),
        ("set_memory_valid", "ADDR NUMPAGES ENABLE", "__change_memory_common: set or clear PTE_VALID, then flush; -EINVAL over a block (6.12), split first with bbml2-split"),
        ("set_direct_map_invalid_noflush", "ADDR", "clear PTE_VALID on one linear-map page, no flush; nothing unless can_set_direct_map()"),
        ("set_direct_map_default_noflush", "ADDR", "set PTE_VALID and write on one linear-map page, no flush; nothing unless can_set_direct_map()"),
        ("vmap", "PA NUMPAGES", "map physical pages at the next vmalloc address (4K PTEs)"),
        ("flush_tlb_kernel_range", "ADDR NUMPAGES", "TLBI VAALE1IS per page below 2M (MAX_DVM_OPS pages), else TLBI VMALLE1IS"),
        ("flush_tlb_all", "", "TLBI VMALLE1IS: every CPU's TLB, global entries included"),
    ]

    /// x86-64's operations.
    public static let catalogue: [(name: String, arguments: String, summary: String)] = [
        ("set_memory_4k", "ADDR NUMPAGES", "split the range to 4K leaves and mark them never to collapse"),
        ("set_memory_np", "ADDR NUMPAGES", "clear _PAGE_PRESENT"),
        ("set_memory_p", "ADDR NUMPAGES", "set _PAGE_PRESENT"),
        ("set_memory_ro", "ADDR NUMPAGES", "clear _PAGE_RW"),
        ("set_memory_rw", "ADDR NUMPAGES", "set _PAGE_RW"),
        ("set_memory_nx", "ADDR NUMPAGES", "set _PAGE_NX"),
        ("set_memory_x", "ADDR NUMPAGES", "clear _PAGE_NX"),
        ("set_memory_rox", "ADDR NUMPAGES", "read-only and executable, then collapse (CPA_COLLAPSE)"),
        ("set_memory_encrypted", "ADDR NUMPAGES", "set the C-bit (flush, prepare hook, PTE change, flush, finish hook)"),
        ("set_memory_decrypted", "ADDR NUMPAGES", "clear the C-bit (flush, prepare hook, PTE change, flush, finish hook)"),
        ("set_direct_map_invalid_noflush", "ADDR", "clear PRESENT and RW on one direct-map page, no flush"),
        ("set_direct_map_default_noflush", "ADDR", "set PRESENT and RW on one direct-map page, no flush"),
        ("vmap", "PA NUMPAGES", "map physical pages at the next vmalloc address (4K PTEs)"),
        ("flush_tlb_kernel_range", "ADDR NUMPAGES", "invalidate the range on every CPU: page by page up to the ceiling, else everything"),
        ("flush_tlb_all", "", "invalidate every CPU's TLB, global entries included"),
    ]

    public let name: String
    /// The address (direct-map or vmalloc virtual; physical for vmap).
    public let address: UInt64
    public let numpages: Int
    /// set_memory_valid's `enable`.
    public let enable: Bool

    public init(name: String, address: UInt64, numpages: Int, enable: Bool = true) {
        self.name = name
        self.address = address
        self.numpages = numpages
        self.enable = enable
    }

    public var description: String {
        switch (Self.catalogue + Self.arm64Catalogue).first(where: { $0.name == name })?.arguments {
        case "": name
        case "ADDR": "\(name) \(hex(address))"
        case "ADDR NUMPAGES ENABLE": "\(name) \(hex(address)) \(numpages) \(enable ? 1 : 0)"
        default: "\(name) \(hex(address)) \(numpages)"
        }
    }

    /// Reads `NAME ADDR [NUMPAGES]`. ADDR is a number (hex, decimal or a size) or `pa:N`, a
    /// physical address to be reached through the direct map (`layout.pageOffset + N`).
    public static func parse(_ text: String, layout: KernelLayout) throws(HostKernelError) -> KernelOperation {
        let words = text.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard let name = words.first, let entry = catalogue.first(where: { $0.name == name }) else {
            throw HostKernelError("unknown operation '\(words.first ?? "")'; valid operations: "
                + catalogue.map(\.name).joined(separator: ", "))
        }
        let expected = entry.arguments.split(separator: " ").count
        guard words.count - 1 == expected else {
            throw HostKernelError("\(name) takes \(expected) argument\(expected == 1 ? "" : "s") (\(entry.arguments)), got \(words.count - 1)")
        }
        if expected == 0 { return KernelOperation(name: name, address: 0, numpages: 0) }
        var addressText = words[1]
        var base: UInt64 = 0
        if addressText.hasPrefix("pa:") {
            addressText.removeFirst(3)
            if name != "vmap" { base = layout.pageOffset }
        }
        guard let a = ByteSize.parse(addressText), a <= UInt64.max - base else {
            throw HostKernelError("\(name): '\(words[1])' is not an address (hex like 0xffff888040000000, or pa:0x40000000)")
        }
        var pages = 1
        if expected == 2 {
            guard let n = ByteSize.parse(words[2]), n >= 1, n <= 1 << 40 else {
                throw HostKernelError("\(name): NUMPAGES '\(words[2])' must be a number from 1 to 2^40")
            }
            pages = Int(n)
        }
        return KernelOperation(name: name, address: base + a, numpages: pages)
    }

    /// Runs the operation; vmap answers with the address it chose.
    public func apply(to kernel: inout Kernel) throws(HostKernelError) -> any Outcome {
        if kernel.config.isa == .arm64 { return try applyArm64(to: &kernel) }
        let status: KernelStatus
        switch name {
        case "set_memory_4k": status = try kernel.setMemory4K(address, numpages: numpages)
        case "set_memory_np": status = try kernel.setMemoryNP(address, numpages: numpages)
        case "set_memory_p": status = try kernel.setMemoryP(address, numpages: numpages)
        case "set_memory_ro": status = try kernel.setMemoryRO(address, numpages: numpages)
        case "set_memory_rw": status = try kernel.setMemoryRW(address, numpages: numpages)
        case "set_memory_nx": status = try kernel.setMemoryNX(address, numpages: numpages)
        case "set_memory_x": status = try kernel.setMemoryX(address, numpages: numpages)
        case "set_memory_rox": status = try kernel.setMemoryROX(address, numpages: numpages)
        case "set_memory_encrypted": status = try kernel.setMemoryEncrypted(address, numpages: numpages)
        case "set_memory_decrypted": status = try kernel.setMemoryDecrypted(address, numpages: numpages)
        case "set_direct_map_invalid_noflush": status = try kernel.setDirectMapInvalidNoflush(address)
        case "set_direct_map_default_noflush": status = try kernel.setDirectMapDefaultNoflush(address)
        case "vmap": return ValueOutcome(hex(try kernel.vmap(PhysAddr(address), pages: numpages).rawValue))
        case "flush_tlb_kernel_range":
            try kernel.validate(address: address, numpages: numpages, function: name)
            kernel.flushTLBKernelRange(address, pages: numpages)
            status = .ok
        case "flush_tlb_all":
            kernel.flushTLBAll()
            status = .ok
        default: throw HostKernelError("unknown operation '\(name)'")
        }
        return status
    }
}

extension KernelOperation {
    /// Runs an arm64 operation (`arm64Catalogue`).
    func applyArm64(to kernel: inout Kernel) throws(HostKernelError) -> any Outcome {
        switch name {
        case "vmap": return ValueOutcome(hex(try kernel.vmap(PhysAddr(address), pages: numpages).rawValue))
        case "flush_tlb_all":
            kernel.flushTLBAll()
            return KernelStatus.ok
        default: break
        }
        try kernel.validate(address: address, numpages: numpages, function: name)
        switch name {
        case "set_memory_ro", "set_memory_rw", "set_memory_nx", "set_memory_x": return kernel.arm64ChangeMemoryCommon(address, name)
        case "set_memory_valid":
            return kernel.arm64ChangeRange(address, pages: numpages, set: enable ? .present : [], clear: enable ? [] : .present, flush: true)
        case "set_direct_map_invalid_noflush": return kernel.arm64SetDirectMapNoflush(address, valid: false)
        case "set_direct_map_default_noflush": return kernel.arm64SetDirectMapNoflush(address, valid: true)
        case "flush_tlb_kernel_range":
            kernel.flushTLBKernelRange(address, pages: numpages)
            return KernelStatus.ok
        default: throw HostKernelError("\(name) is not an arm64 operation; valid: " + Self.arm64Catalogue.map(\.name).joined(separator: ", "))
        }
    }
}
