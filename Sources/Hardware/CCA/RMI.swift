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

/// An RMI command's status with the output registers the command returns on success
/// (RTT_DESTROY's X1 and X2, DATA_DESTROY's, RTT_INIT_RIPAS's and RTT_SET_RIPAS's X1 …),
/// printed after the status: `RMI_SUCCESS (top 0x40200000)`. A failure prints its status
/// alone; its outputs (RTT_DESTROY's and DATA_DESTROY's X2) stay readable. TF-RMM
/// runtime/core/handler.c (the output registers of each command).
public struct RMIResult: Outcome, Hashable {
    public let status: RMIStatus
    /// Up to two output registers, held inline (no array per call).
    let first: Output?, second: Output?
    public struct Output: Hashable, Sendable {
        public let name: StaticString
        public let value: UInt64
        public init(_ name: StaticString, _ value: UInt64) {
            self.name = name
            self.value = value
        }
        public static func == (a: Output, b: Output) -> Bool { a.name.hasSameText(as: b.name) && a.value == b.value }
        public func hash(into h: inout Hasher) {
            name.hashText(into: &h)
            h.combine(value)
        }
    }
    public init(_ status: RMIStatus, _ first: Output? = nil, _ second: Output? = nil) {
        self.status = status
        self.first = first
        self.second = second
    }
    /// The outputs, named as the specification names them (`rtt`, `top`, `pa` …).
    public init(_ status: RMIStatus, _ outputs: [Output]) {
        self.init(status, outputs.first, outputs.dropFirst().first)
    }
    public var outputs: [Output] { [first, second].compactMap { $0 } }
    /// The output called `name`, if the command returned it.
    public subscript(_ name: StaticString) -> UInt64? {
        if let f = first, f.name.hasSameText(as: name) { return f.value }
        if let s = second, s.name.hasSameText(as: name) { return s.value }
        return nil
    }
    public var kind: OutcomeKind { status.kind }
    public var description: String {
        status != .success || first == nil ? status.description
            : "\(status) (" + outputs.map { "\($0.name) \(hex($0.value))" }.joined(separator: ", ") + ")"
    }
}

/// An RSI command's status as the realm reads it in X0. TF-RMM (tf-rmm-v0.6.0)
/// lib/smc/include/smc-rsi.h.
public enum RSIStatus: UInt64, Sendable, Hashable, CustomStringConvertible {
    case success = 0, errorInput = 1, errorState = 2, incomplete = 3
    public var description: String { ["RSI_SUCCESS", "RSI_ERROR_INPUT", "RSI_ERROR_STATE", "RSI_INCOMPLETE"][Int(rawValue)] }
}

/// The host's answer to a RIPAS change (RMI_REC_ENTER flags bit 4: 0 accept, 1 reject), and
/// what the realm reads in X2 (RSI_ACCEPT 0, RSI_REJECT 1). smc-rmi.h, smc-rsi.h.
public enum RIPASResponse: UInt64, CaseIterable, Sendable, Hashable, CustomStringConvertible {
    case accept = 0, reject = 1
    public var description: String { self == .accept ? "RSI_ACCEPT" : "RSI_REJECT" }
}

/// What the realm reads after an RSI call: X0 and the outputs the call returns
/// (RSI_IPA_STATE_GET's top and RIPAS; RSI_IPA_STATE_SET's new base and response, given on
/// the REC entry after its exit).
public struct RSIResult: Outcome, Hashable {
    public let status: RSIStatus
    public let outputs: [RMIResult.Output]
    public let response: RIPASResponse?
    public let ripas: RIPAS?
    public init(_ status: RSIStatus, _ outputs: [RMIResult.Output] = [], ripas: RIPAS? = nil, response: RIPASResponse? = nil) {
        self.status = status
        self.outputs = outputs
        self.ripas = ripas
        self.response = response
    }
    public var kind: OutcomeKind { status == .success ? .success : .status }
    public var description: String {
        var parts = outputs.map { "\($0.name) \(hex($0.value))" }
        if let ripas { parts.append("RIPAS \(ripas)") }
        if let response { parts.append("\(response)") }
        return status != .success || parts.isEmpty ? status.description : "\(status) (" + parts.joined(separator: ", ") + ")"
    }
}

/// Why a REC left the realm for the host (RMI_EXIT_*, smc-rmi.h), as far as the model's
/// realms exit: a RIPAS change request (RSI_IPA_STATE_SET) with its range and value.
public struct RECExit: Outcome, Hashable {
    public let base: UInt64, top: UInt64
    public let ripas: RIPAS
    public init(ripasChange base: UInt64, top: UInt64, ripas: RIPAS) {
        self.base = base
        self.top = top
        self.ripas = ripas
    }
    public var kind: OutcomeKind { .fault }
    public var description: String { "RMI_EXIT_RIPAS_CHANGE [\(hex(base))-\(hex(top))) RIPAS \(ripas)" }
}

/// The RMM's granule states (RMM 1.0 §A2.2; TF-RMM lib/granule/include/granule_types.h):
/// every 4K granule of DRAM starts NS; RMI_GRANULE_DELEGATE makes it DELEGATED, and the
/// realm commands make a DELEGATED granule an RD, a REC, a REC's auxiliary granule, a DATA
/// granule or an RTT, and give it back.
public enum GranuleState: UInt8, CaseIterable, Hashable, Sendable, CustomStringConvertible {
    case ns, delegated, rd, rec, recAux, data, rtt
    public var description: String { ["NS", "DELEGATED", "RD", "REC", "REC_AUX", "DATA", "RTT"][Int(rawValue)] }
}
