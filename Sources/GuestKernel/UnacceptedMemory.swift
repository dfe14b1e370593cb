import Hardware
import HostKernel
import PageTables

/// The EFI unaccepted-memory table as Linux keeps it: one bit per `unitSize` (2M) unit of
/// guest-physical memory from `physBase`, set while the unit is unaccepted.
/// drivers/firmware/efi/unaccepted_memory.c (v6.12), struct efi_unaccepted_memory.
public struct UnacceptedMemory: Hashable, Sendable {
    public let physBase: UInt64
    public let unitSize: UInt64
    /// The units the bitmap describes (the memory in units, rounded up).
    public let units: UInt64
    var bitmap: [UInt64]
    /// Units still unaccepted.
    public private(set) var unacceptedUnits: UInt64
    /// arch_accept_memory calls, one per run of set bits.
    public private(set) var archCalls: UInt64 = 0

    /// The table for `bytes` of memory from `physBase`, the firmware having accepted
    /// [physBase, physBase + accepted) (rounded up to whole units).
    public init(physBase: UInt64 = 0, bytes: UInt64, unitSize: UInt64 = 2 << 20, accepted: UInt64) {
        self.physBase = physBase
        self.unitSize = unitSize
        units = (bytes + unitSize - 1) / unitSize
        bitmap = Array(repeating: 0, count: Int((units + 63) / 64))
        unacceptedUnits = 0
        let acc = min(accepted, bytes)
        for u in min((acc + unitSize - 1) / unitSize, units)..<units {
            bitmap[Int(u / 64)] |= 1 << (u % 64)
            unacceptedUnits += 1
        }
    }

    /// Whether unit `u` is still unaccepted.
    public func isUnaccepted(unit u: UInt64) -> Bool { u < units && bitmap[Int(u / 64)] & (1 << (u % 64)) != 0 }

    /// Whether the page at `pa` is still unaccepted.
    public func isUnaccepted(_ pa: UInt64) -> Bool { pa >= physBase && isUnaccepted(unit: (pa - physBase) / unitSize) }

    /// The units [start, end) in bitmap terms that accept_memory and
    /// range_contains_unaccepted_memory look at: clamped to physBase; extended by one unit
    /// when the end is unit-aligned (the guard against load_unaligned_zeropad running into
    /// an unaccepted page, whose access a TDX guest cannot recover from); clamped to the
    /// bitmap. Nil when the range ends below physBase.
    func unitRange(_ start: UInt64, _ size: UInt64) -> Range<UInt64>? {
        // The sums saturate: past 2^64 is past the bitmap, where the clamp ends the range.
        let (end, wrapped) = start.addingReportingOverflow(size)
        var s = start, e = wrapped ? UInt64.max : end
        if s < physBase { s = physBase }
        if e < physBase { return nil }
        s -= physBase
        e -= physBase
        if e % unitSize == 0 { e = e.addingReportingOverflow(unitSize).overflow ? UInt64.max : e + unitSize }
        e = min(e, units * unitSize)
        let first = s / unitSize, last = (e + unitSize - 1) / unitSize
        return first < last ? first..<last : nil
    }

    /// range_contains_unaccepted_memory(start, size), with accept_memory's guard.
    public func containsUnaccepted(_ start: UInt64, _ size: UInt64) -> Bool {
        guard let r = unitRange(start, size) else { return false }
        return r.contains { isUnaccepted(unit: $0) }
    }

    /// accept_memory(start, size): for each run of set bits in the guarded range,
    /// arch_accept_memory(phys_start, phys_end), then the bits cleared. False when the
    /// architecture failed (Linux panics: "TDX: Failed to accept memory").
    public mutating func accept(_ start: UInt64, _ size: UInt64, arch: (UInt64, UInt64) -> Bool) -> Bool {
        guard let r = unitRange(start, size) else { return true }
        var u = r.lowerBound
        while u < r.upperBound {
            guard isUnaccepted(unit: u) else { u += 1; continue }
            var end = u + 1
            while end < r.upperBound && isUnaccepted(unit: end) { end += 1 }
            archCalls += 1
            guard arch(physBase + u * unitSize, physBase + end * unitSize) else { return false }
            for k in u..<end { bitmap[Int(k / 64)] &= ~(1 << (k % 64)) }
            unacceptedUnits -= end - u
            u = end
        }
        return true
    }

}

/// The guest's page allocator as far as acceptance goes: accepted free pages, and the
/// zone's list of unaccepted MAX_ORDER blocks, taken lowest address first.
/// mm/page_alloc.c (v6.12) cond_accept_memory, try_to_accept_memory_one, __accept_page.
public struct GuestAllocator: Hashable, Sendable {
    public var table: UnacceptedMemory
    /// Accepted pages in the free lists, not yet allocated.
    public private(set) var freeAccepted: UInt64
    /// Pages allocated so far.
    public private(set) var allocated: UInt64 = 0
    /// MAX_ORDER blocks taken off the unaccepted list and accepted.
    public private(set) var blocksAccepted: UInt64 = 0
    /// The next block on the zone's unaccepted list, and the end of the list (block numbers).
    public private(set) var nextBlock: UInt64
    let endBlock: UInt64
    let bytes: UInt64

    /// MAX_PAGE_ORDER 10 on x86-64: 4 MiB blocks.
    public static let maxOrderBytes: UInt64 = 4 << 20

    /// At boot, every MAX_ORDER block that page_contains_unaccepted (with the guard: a block
    /// ending where unaccepted memory starts counts) goes on the zone's list
    /// (__free_unaccepted); the rest is free.
    public init(table: UnacceptedMemory, bytes: UInt64) {
        self.table = table
        self.bytes = bytes
        endBlock = bytes / Self.maxOrderBytes  // whole MAX_ORDER blocks; a partial tail is accepted at boot
        var b: UInt64 = 0
        while b < endBlock && !table.containsUnaccepted(table.physBase + b * Self.maxOrderBytes, Self.maxOrderBytes) { b += 1 }
        nextBlock = b
        // Free at boot: the blocks before the list (the tail is added once accepted).
        freeAccepted = min(b * Self.maxOrderBytes, endBlock * Self.maxOrderBytes) >> pageShift
        if endBlock * Self.maxOrderBytes < bytes && !table.containsUnaccepted(table.physBase + endBlock * Self.maxOrderBytes, bytes - endBlock * Self.maxOrderBytes) {
            freeAccepted += (bytes - endBlock * Self.maxOrderBytes) >> pageShift
        }
    }

    /// Pages the zone still holds unaccepted (NR_UNACCEPTED).
    public var unacceptedPages: UInt64 { (endBlock - nextBlock) * (Self.maxOrderBytes >> pageShift) }

    /// Allocates `pages`: while the free pages fall short, the first block of the list is
    /// accepted (__accept_page: accept_memory over the block, which the guard extends by a
    /// unit, so the next block is partly accepted before it is taken) and freed. The model
    /// has no watermarks: it accepts only what the request needs. False when memory runs
    /// out or the architecture fails to accept.
    public mutating func allocate(_ pages: UInt64, arch: (UInt64, UInt64) -> Bool) -> Bool {
        while freeAccepted < pages {
            guard nextBlock < endBlock else { return false }
            let block = nextBlock * Self.maxOrderBytes
            guard table.accept(table.physBase + block, Self.maxOrderBytes, arch: arch) else { return false }
            freeAccepted += Self.maxOrderBytes >> pageShift
            nextBlock += 1
            blocksAccepted += 1
        }
        freeAccepted -= pages
        allocated += pages
        return true
    }

    /// The memory past the last whole MAX_ORDER block: too small for the zone's list, so
    /// it is accepted at boot (deferred_free_pages accepts chunks below MAX_PAGE_ORDER).
    public mutating func acceptTail(arch: (UInt64, UInt64) -> Bool) -> Bool {
        let tail = endBlock * Self.maxOrderBytes
        guard tail < bytes, table.containsUnaccepted(table.physBase + tail, bytes - tail) else { return true }
        guard table.accept(table.physBase + tail, bytes - tail, arch: arch) else { return false }
        freeAccepted += (bytes - tail) >> pageShift
        return true
    }

    /// accept_memory=eager: every listed block accepted at boot.
    public mutating func acceptAll(arch: (UInt64, UInt64) -> Bool) -> Bool {
        while nextBlock < endBlock {
            let block = nextBlock * Self.maxOrderBytes
            guard table.accept(table.physBase + block, Self.maxOrderBytes, arch: arch) else { return false }
            freeAccepted += Self.maxOrderBytes >> pageShift
            nextBlock += 1
            blocksAccepted += 1
        }
        return true
    }
}

extension GuestKernel {
    /// Boot with unaccepted memory: the firmware accepted [0, `firmwareAccepted`) and
    /// described the rest in the EFI table; the page allocator lists the blocks that
    /// contain unaccepted memory. With `accept_memory=eager` every block is accepted now.
    /// False when `arch` failed (the kernel panics).
    public mutating func bootAcceptance(firmwareAccepted: UInt64, arch: (UInt64, UInt64) -> Bool) -> Bool {
        let bytes = kernel.memory.endOfRAM
        var a = GuestAllocator(table: UnacceptedMemory(bytes: bytes, accepted: firmwareAccepted), bytes: bytes)
        let ok = a.acceptTail(arch: arch) && (kernel.config.acceptMemory == .eager ? a.acceptAll(arch: arch) : true)
        acceptance = a
        return ok
    }

    /// accept_memory(start, size) on the guest's table; true without a table (all memory
    /// accepted).
    public mutating func acceptMemory(_ start: UInt64, _ size: UInt64, arch: (UInt64, UInt64) -> Bool) -> Bool {
        guard var a = acceptance else { return true }
        acceptance = nil
        defer { acceptance = a }
        return a.table.accept(start, size, arch: arch)
    }

    /// `pages` allocated from the guest's page allocator, accepting blocks as it needs.
    public mutating func allocatePages(_ pages: UInt64, arch: (UInt64, UInt64) -> Bool) -> Bool {
        guard var a = acceptance else { return true }
        acceptance = nil
        defer { acceptance = a }
        return a.allocate(pages, arch: arch)
    }
}
