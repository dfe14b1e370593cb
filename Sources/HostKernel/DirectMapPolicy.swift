import Hardware
import PageTables
import Synchronization

/// What the host does to its direct map when pages change owner (given to a guest or the
/// firmware, or given back): the choice the SNP threads argue about (seed 001). The hooks are
/// neutral: the architecture's own code (rmp_make_private on SEV-SNP) calls them around the
/// ownership change, and the host's fault path asks `splitsOnFault`. Each policy is a named
/// type behind this protocol; `DirectMapPolicyKind` names them for scenarios.
public protocol DirectMapPolicy: Sendable {
    init()
    /// The name scenarios use (`host.directmap-policy`).
    static var name: String { get }
    /// One line on what it does and where it comes from.
    static var summary: String { get }
    /// Runs before `size` at `pfn` changes owner; an error stops the change (-EFAULT).
    func beforeOwnerChange(_ kernel: inout Kernel, pfn: UInt64, size: PageSize, toGuest: Bool) -> Errno?
    /// Runs after a successful change, with the ownership table as it is now.
    func afterOwnerChange(_ kernel: inout Kernel, ownership: some HostOwnership, pfn: UInt64, size: PageSize, toGuest: Bool)
    /// Whether the #PF handler splits a large kernel mapping that took an ownership fault.
    var splitsOnFault: Bool { get }
}

extension DirectMapPolicy {
    public func beforeOwnerChange(_ kernel: inout Kernel, pfn: UInt64, size: PageSize, toGuest: Bool) -> Errno? { nil }
    public func afterOwnerChange(_ kernel: inout Kernel, ownership: some HostOwnership, pfn: UInt64, size: PageSize, toGuest: Bool) {}
    public var splitsOnFault: Bool { false }
}

/// `none`: the direct map is left alone, to show what goes wrong.
public struct NoAdjustment: DirectMapPolicy {
    public static let name = "none"
    public static let summary = "leave the direct map alone (shows the failure)"
    public init() {}
}

/// `split-on-assign`: merged Linux. Before a 4K RMPUPDATE the covering direct-map leaf is
/// split to 4K with set_memory_4k; a 2M update splits nothing ("even accesses from 1GB
/// mappings will be treated as 2MB accesses"); never undone. Linux 661b1c6169e2,
/// arch/x86/virt/svm/sev.c adjust_direct_map (v6.11).
public struct SplitOnAssign: DirectMapPolicy {
    public static let name = "split-on-assign"
    public static let summary = "merged Linux (adjust_direct_map): split the leaf to 4K before a 4K RMPUPDATE; never undone"
    public init() {}

    public func beforeOwnerChange(_ kernel: inout Kernel, pfn: UInt64, size: PageSize, toGuest: Bool) -> Errno? {
        // pfn_valid first; a 2M request needs an aligned pfn and a valid pfn + 511, and never
        // splits (each failure -EINVAL, which rmpupdate turns into -EFAULT).
        if !kernel.memory.pfnValid(pfn) { return .EINVAL }
        if size == .size2M { return pfn & 511 == 0 && kernel.memory.pfnValid(pfn + 511) ? nil : .EINVAL }
        let va = kernel.va(PFN(pfn).physAddr)
        // lookup_address then `pte_none` or PG_LEVEL_4K returns early: a large leaf is split
        // even when not present (set_memory_np keeps it non-none).
        guard kernel.pageTable.largeLeaf(va) != nil else { return nil }
        let status = (try? kernel.setMemory4K(va.rawValue, numpages: 1)) ?? .error(.EFAULT)
        guard case .error(let e) = status else { return nil }
        kernel.log("Failed to split direct map for PFN \(hex(pfn)), ret: -\(e.rawValue)")  // pr_err in adjust_direct_map
        return .EFAULT
    }
}

/// `proactive-4k`: the 2021 RFC. set_memory_4k on every page added to or removed from the
/// RMP, whatever the RMP page size. Singh, "[RFC Part2 PATCH 04/30] x86/mm: split the
/// physmap when adding the page in RMP table" (seed 001).
public struct Proactive4K: DirectMapPolicy {
    public static let name = "proactive-4k"
    public static let summary = "2021 RFC: set_memory_4k on every page the RMP update touches, whatever its size"
    public init() {}

    public func beforeOwnerChange(_ kernel: inout Kernel, pfn: UInt64, size: PageSize, toGuest: Bool) -> Errno? {
        let va = kernel.va(PFN(pfn).physAddr).rawValue
        return (try? kernel.setMemory4K(va, numpages: Int(size.pages))) == .ok ? nil : .EFAULT
    }
}

/// `unmap-private`: RFC v1-v10. Assigned pages leave the direct map
/// (set_direct_map_invalid_noflush per 4K, then a flush) and come back when unassigned
/// (set_direct_map_default_noflush). Linux SNP host RFC invalidate_direct_map /
/// restore_direct_map.
public struct UnmapPrivate: DirectMapPolicy {
    public static let name = "unmap-private"
    public static let summary = "RFC v1-v10: remove assigned pages from the direct map, restore them when unassigned"
    public init() {}

    public func beforeOwnerChange(_ kernel: inout Kernel, pfn: UInt64, size: PageSize, toGuest: Bool) -> Errno? {
        guard toGuest else { return nil }
        for p in pfn..<pfn + size.pages {
            guard (try? kernel.setDirectMapInvalidNoflush(kernel.va(PFN(p).physAddr).rawValue)) == .ok else { return .EFAULT }
        }
        kernel.flushTLBAll()
        return nil
    }

    public func afterOwnerChange(_ kernel: inout Kernel, ownership: some HostOwnership, pfn: UInt64, size: PageSize, toGuest: Bool) {
        guard !toGuest else { return }
        for p in pfn..<pfn + size.pages {
            _ = try? kernel.setDirectMapDefaultNoflush(kernel.va(PFN(p).physAddr).rawValue)
        }
    }
}

/// `split-on-fault`: nothing up front; the #PF handler splits a large kernel mapping that
/// took an RMP fault and retries, where that is safe. The idea the thread rejects: "you
/// can't _easily_ do the 2M->4k kernel mapping demotion in a page fault handler" (Hansen),
/// "We are certainly toast if this hits the stack" (Lutomirski).
public struct SplitOnFault: DirectMapPolicy {
    public static let name = "split-on-fault"
    public static let summary = "split a large kernel mapping in the #PF handler after an RMP fault, where safe (rejected in the thread)"
    public init() {}
    public var splitsOnFault: Bool { true }
}

/// `coalesce`: split-on-assign, plus re-merging the 2M (and 1G) leaf once its whole region
/// is hypervisor-owned again. Hypothetical: the splits are made without _PAGE_KERNEL_4K so
/// they may collapse, as CPA_COLLAPSE would (Borislav Petkov in seed 001: "Dunno how useful
/// it would be if we also do coalescing of 4K pages").
public struct Coalesce: DirectMapPolicy {
    public static let name = "coalesce"
    public static let summary = "split-on-assign, then re-merge a 2M/1G leaf once its whole region is hypervisor-owned again"
    public init() {}

    public func beforeOwnerChange(_ kernel: inout Kernel, pfn: UInt64, size: PageSize, toGuest: Bool) -> Errno? {
        guard size == .size4K else { return nil }
        return kernel.splitDirectMap(pfn: pfn) ? nil : .EFAULT
    }

    /// Re-merges the 2M region once no page of it is assigned; the same walk tries the 1G
    /// leaf above it, which is safe because RMP checks treat a 1G mapping as 2M.
    public func afterOwnerChange(_ kernel: inout Kernel, ownership: some HostOwnership, pfn: UInt64, size: PageSize, toGuest: Bool) {
        guard !toGuest, !ownership.regionHasGuestPages(pfn: pfn & ~511) else { return }
        kernel.collapseDirectMap(pfn: pfn & ~511, size: .size2M)
    }
}

/// `pooled`: firmware, VMSA and other SNP metadata pages come from a pool split to 4K once
/// at boot; guest memory gets no adjustment. Singh in seed 001: "we can probably create SNP
/// buffer pool. All the firmware and VMSA pages should come from this pool." The pool
/// itself is KVM's (Hypervisor layer); this type only declines to split.
public struct Pooled: DirectMapPolicy {
    public static let name = "pooled"
    public static let summary = "firmware and VMSA pages from a pool split to 4K at boot; guest memory is not adjusted"
    public init() {}
}

/// The policies by name, in the order `list policies` shows them.
public struct DirectMapPolicyKind: Hashable, Sendable, CustomStringConvertible {
    /// The name scenarios use.
    public let rawValue: String
    public let summary: String
    let make: @Sendable () -> any DirectMapPolicy

    public static let none = builtIn(NoAdjustment.self)
    public static let splitOnAssign = builtIn(SplitOnAssign.self)
    public static let proactive4K = builtIn(Proactive4K.self)
    public static let unmapPrivate = builtIn(UnmapPrivate.self)
    public static let splitOnFault = builtIn(SplitOnFault.self)
    public static let pooled = builtIn(Pooled.self)
    public static let coalesce = builtIn(Coalesce.self)

    static func builtIn<P: DirectMapPolicy>(_ type: P.Type) -> DirectMapPolicyKind {
        DirectMapPolicyKind(rawValue: P.name, summary: P.summary) { P() }
    }

    init(rawValue: String, summary: String, make: @escaping @Sendable () -> any DirectMapPolicy) {
        self.rawValue = rawValue
        self.summary = summary
        self.make = make
    }

    /// The registered policy of that name.
    public init?(rawValue: String) {
        guard let k = Self.allCases.first(where: { $0.rawValue == rawValue }) else { return nil }
        self = k
    }

    /// A policy instance.
    public var policy: any DirectMapPolicy { make() }
    public var description: String { rawValue }

    public static func == (a: Self, b: Self) -> Bool { a.rawValue == b.rawValue }
    public func hash(into h: inout Hasher) { h.combine(rawValue) }

    /// The policies cocomem models.
    public static let builtIn: [DirectMapPolicyKind] = [.none, .splitOnAssign, .proactive4K, .unmapPrivate, .splitOnFault, .pooled, .coalesce]
    static let registry = Mutex<[DirectMapPolicyKind]>([])

    /// Those an embedding program registered, in order.
    public static var registered: [DirectMapPolicyKind] { registry.withLock { $0 } }

    /// Every policy: the built-in ones, then those registered.
    public static var allCases: [DirectMapPolicyKind] { builtIn + registered }

    /// Registers a policy of the embedding program's own under `P.name`, so scenarios and
    /// `host.directmap-policy` can choose it without a fork. False when the name is taken.
    @discardableResult
    public static func register<P: DirectMapPolicy>(_ type: P.Type) -> Bool {
        registry.withLock { list in
            guard !(builtIn + list).contains(where: { $0.rawValue == P.name }) else { return false }
            list.append(builtIn(type))
            return true
        }
    }
}
