import Hardware
import HostKernel
import PageTables

/// A realm guest's RSI_IPA_STATE_SET as its kernel makes it (the SMC to the RMM, and when
/// the RMM exits to the host, the host's answer on the next REC entry): what the realm reads
/// back, or nil when the call never returned to it (the host failed KVM_RUN).
public typealias RSIIPAStateSet = (_ base: UInt64, _ top: UInt64, _ ripas: RIPAS, _ flags: UInt64) -> RSIResult?

/// How a realm's rsi_set_memory_range ended when it did not succeed.
public enum RealmRIPASFailure: Outcome, Hashable {
    /// The call failed, the host rejected it, or the top it returned is out of range: -EINVAL.
    case invalid
    /// The host accepted without progress: the kernel would issue the same call forever.
    case livelock(base: UInt64)
    public var kind: OutcomeKind { self == .invalid ? .error : .fault }
    public var description: String {
        switch self {
        case .invalid: "-EINVAL"
        case .livelock(let b): "the realm retries RSI_IPA_STATE_SET at \(hex(b)) forever: the host accepts without progress"
        }
    }
}

extension GuestKernel {
    /// rsi_set_memory_range(start, end, state, flags): RSI_IPA_STATE_SET from `start` on,
    /// continuing from the top each call returns; an error status, a REJECT (rsi_set_addr_range_state's
    /// -EPERM) or a top outside [start, end] is -EINVAL. No retry cap: an accepted call that
    /// made no progress is issued again, forever (reported here as a livelock).
    /// arch/arm64/include/asm/rsi.h (Linux 6.18).
    public static func rsiSetMemoryRange(_ start: UInt64, _ end: UInt64, _ ripas: RIPAS, flags: UInt64, _ call: RSIIPAStateSet) -> RealmRIPASFailure? {
        var s = start
        while s != end {
            guard let r = call(s, end, ripas, flags), r.status == .success, r.response != .reject,
                  let top = r.outputs.first?.value, top >= s, top <= end else { return .invalid }
            if top == s { return .livelock(base: s) }
            s = top
        }
        return nil
    }
}
