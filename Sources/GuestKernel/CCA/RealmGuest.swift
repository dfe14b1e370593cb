import Hardware
import HostKernel
import PageTables

/// A realm guest's RSI_IPA_STATE_SET as its kernel makes it (the SMC to the RMM, and when
/// the RMM exits to the host, the host's answer on the next REC entry): what the realm reads
/// back, or nil when the call never returned to it (KVM_RUN failed and the vCPU did not run
/// again).
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

extension GuestKernel {
    /// realm_set_memory_encrypted/decrypted → __set_memory_enc_dec over `numpages` from `va`,
    /// in the kernel's `guest.cca-enc-order`: linear-map addresses only (a vmalloc address per
    /// `guest.cca-vmalloc`), the PTEs
    /// broken (VALID cleared, PROT_NS_SHARED toggled in the same write), flushed, the RIPAS
    /// changed with RSI_CHANGE_DESTROYED (RAM to encrypt, EMPTY to decrypt), the PTEs valid
    /// again. A failure leaves the PTEs as they are, WARNs "Failed to {en,de}crypt memory, N
    /// pages will be leaked" and is -EINVAL. arch/arm64/mm/pageattr.c, arch/arm64/mm/mem_encrypt.c.
    public mutating func realmSetMemory(_ va: UInt64, numpages n: Int, encrypt: Bool, _ rsi: RSIIPAStateSet) -> any Outcome {
        let order = kernel.config.realmEncOrder, vmalloc = kernel.config.realmVmalloc
        func leaked(_ r: any Outcome) -> any Outcome {
            AnnotatedOutcome(r, notes: ["WARN: Failed to \(encrypt ? "en" : "de")crypt memory, \(n) pages will be leaked"])
        }
        guard va & (pageBytes - 1) == 0 else { return AnnotatedOutcome(OK(), notes: ["WARN_ON: unaligned address, nothing done"]) }
        if kernel.isLinearMapAddress(va) {
            let pa = kernel.pa(VirtAddr(va)).rawValue
            if let failure = realmEncDec(va, pa, n, encrypt: encrypt, order: order, rsi) { return leaked(failure) }
            return OK()
        }
        guard vmalloc == .perPage, kernel.isVmalloc(va) else { return leaked(KernelStatus.error(.EINVAL)) }
        for k in 0..<UInt64(n) {
            guard let pa = kernel.vmallocToPhys(va + k * pageBytes) else { return leaked(KernelStatus.error(.EINVAL)) }
            if let failure = realmEncDec(va + k * pageBytes, alias: kernel.va(PhysAddr(pa)).rawValue, pa, 1, encrypt: encrypt, order: order, rsi) {
                return leaked(failure)
            }
        }
        return OK()
    }

    /// The conversion of `n` pages at physical `pa`, mapped at `va` and at `alias` if given.
    mutating func realmEncDec(_ va: UInt64, alias: UInt64? = nil, _ pa: UInt64, _ n: Int, encrypt: Bool, order: RealmEncOrder, _ rsi: RSIIPAStateSet) -> (any Outcome)? {
        let ns: Attributes = encrypt ? [] : .shared, notNS: Attributes = encrypt ? .shared : []
        let ripas: RIPAS = encrypt ? .ram : .empty
        func change(set: Attributes, clear: Attributes) -> (any Outcome)? {
            let s = kernel.changeMemoryCommon(va, pages: n, set: set, clear: clear)
            if s != .ok { return s }
            guard let alias else { return nil }
            let t = kernel.changeMemoryCommon(alias, pages: n, set: set, clear: clear)
            return t == .ok ? nil : t
        }
        switch order {
        case .invalidateFirst:
            if let f = change(set: ns, clear: notNS.union(.present)) { return f }
            if let f = GuestKernel.rsiSetMemoryRange(pa, pa + UInt64(n) * pageBytes, ripas, flags: 1, rsi) { return f == .invalid ? KernelStatus.error(.EINVAL) : f }
            return change(set: .present, clear: [])
        case .inPlace:
            if let f = GuestKernel.rsiSetMemoryRange(pa, pa + UInt64(n) * pageBytes, ripas, flags: 1, rsi) { return f == .invalid ? KernelStatus.error(.EINVAL) : f }
            return change(set: ns, clear: notNS)
        }
    }
}
