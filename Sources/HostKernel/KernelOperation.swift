import Hardware
import PageTables

/// A host-kernel memory operation by its Linux name, with its arguments: what `--apply`
/// and scenario steps call.
public struct KernelOperation: Hashable, Sendable, CustomStringConvertible {
    /// The operations that exist, each with its argument names and a one-line summary.
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

    public init(name: String, address: UInt64, numpages: Int) {
        self.name = name
        self.address = address
        self.numpages = numpages
    }

    public var description: String {
        switch Self.catalogue.first(where: { $0.name == name })?.arguments {
        case "": name
        case "ADDR": "\(name) \(hex(address))"
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
