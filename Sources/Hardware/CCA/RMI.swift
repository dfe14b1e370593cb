import PageTables

/// An RMI command's status as the RMM returns it in X0: the status in bits [7:0], an index
/// above it (the RTT level for RMI_ERROR_RTT). TF-RMM (tf-rmm-v0.6.0) lib/smc/include/smc-rmi.h,
/// lib/common/include/status.h pack_return_code. Prints `RMI_SUCCESS`, `RMI_ERROR_INPUT`,
/// `RMI_ERROR_RTT(2)`.
public struct RMIStatus: Hashable, Sendable, Outcome {
    public let status: UInt8
    public let index: UInt8
    public init(_ status: UInt8, index: UInt8 = 0) {
        self.status = status
        self.index = index
    }

    public static let success = RMIStatus(0), errorInput = RMIStatus(1), errorRealm = RMIStatus(2), errorRec = RMIStatus(3)
    /// (level −1 with LPA2 packs as 0xff: pack_return_code takes an unsigned char.)
    public static func errorRTT(level: Int) -> RMIStatus { RMIStatus(4, index: UInt8(truncatingIfNeeded: level)) }

    /// X0 as the host reads it: `status | index << 8`.
    public var rawValue: UInt64 { UInt64(index) << 8 | UInt64(status) }
    static let names = ["RMI_SUCCESS", "RMI_ERROR_INPUT", "RMI_ERROR_REALM", "RMI_ERROR_REC", "RMI_ERROR_RTT",
                        "RMI_ERROR_DEVICE", "RMI_ERROR_NOT_SUPPORTED", "RMI_ERROR_RTT_AUX"]

    public var kind: OutcomeKind { status == 0 ? .success : .status }
    public var description: String {
        let name = Int(status) < Self.names.count ? Self.names[Int(status)] : "RMI_ERROR \(status)"
        return status == 4 ? "\(name)(\(index))" : name
    }
}

/// The RMM panicked (TF-RMM calls panic(): the Realm world is gone).
public struct RMMPanic: Hashable, Sendable, Outcome {
    public let reason: String
    public var kind: OutcomeKind { .fault }
    public var description: String { "RMM panic: \(reason)" }
}

/// The RMM's granule states (RMM 1.0 §A2.2), as far as part 1 of the model needs them:
/// every 4K granule of DRAM starts NS (UNDELEGATED); RMI_GRANULE_DELEGATE makes it
/// DELEGATED. TF-RMM lib/granule.
public enum GranuleState: Hashable, Sendable { case ns, delegated }

/// The RMM's view of DRAM and the two granule commands that move a granule between the
/// host and the Realm world through EL3 (the GPT). TF-RMM tf-rmm-v0.6.0
/// runtime/rmi/granule.c, lib/granule/src/granule.c find_lock_granule.
public struct RMMGranules: Sendable {
    /// The DRAM banks the RMM was told about (plat_granule_addr_to_idx).
    public let dram: [Range<UInt64>]
    /// Granules (by frame number) the RMM holds DELEGATED; every other DRAM granule is NS.
    public internal(set) var delegated: Set<UInt64> = []

    public init(dram: [Range<UInt64>]) { self.dram = dram }

    /// The granule's state, nil outside DRAM (plat_granule_addr_to_idx finds no bank).
    public func state(_ pa: UInt64) -> GranuleState? {
        guard dram.contains(where: { $0.contains(pa) }) else { return nil }
        return delegated.contains(pa >> pageShift) ? .delegated : .ns
    }

    /// RMI_GRANULE_DELEGATE: find_lock_granule(addr, NS) (aligned, in DRAM, NS, else
    /// RMI_ERROR_INPUT), then EL3's GTSI delegate (a refusal, -EINVAL or -EPERM from the GPT,
    /// is RMI_ERROR_INPUT), then DELEGATED.
    public mutating func delegate(_ pa: UInt64, gpt: inout GPT) -> RMIStatus {
        guard pa & (pageBytes - 1) == 0, state(pa) == .ns else { return .errorInput }
        guard gpt.delegate(pa, caller: .realm) == nil else { return .errorInput }
        delegated.insert(pa >> pageShift)
        return .success
    }

    /// RMI_GRANULE_UNDELEGATE: find_lock_granule(addr, DELEGATED) (else RMI_ERROR_INPUT),
    /// then EL3's GTSI undelegate; a refusal there is the RMM's panic, not an error to the
    /// host ("Granule undelegate call failed").
    public mutating func undelegate(_ pa: UInt64, gpt: inout GPT) -> any Outcome {
        guard pa & (pageBytes - 1) == 0, state(pa) == .delegated else { return RMIStatus.errorInput }
        if let e = gpt.undelegate(pa, caller: .realm) { return RMMPanic(reason: "Granule \(hex(pa)) undelegate call failed (\(e))") }
        delegated.remove(pa >> pageShift)
        return RMIStatus.success
    }
}
