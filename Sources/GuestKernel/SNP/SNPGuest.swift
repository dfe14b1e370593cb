import Hardware
import HostKernel
import PageTables

/// What one PVALIDATE the guest executes came to, as the machine ran it (through KVM's
/// gmem and #NPF handling).
public struct PvalidateResult: Sendable {
    /// What it came to when it did not simply succeed (kept only then: the common case
    /// allocates nothing).
    public let failure: (any Outcome)?
    /// FAIL_SIZEMISMATCH: a 2M PVALIDATE over an RMP entry that is 4K.
    public let sizeMismatch: Bool
    /// Stored, so the common case never looks into the existential.
    public let succeeded: Bool
    public var outcome: any Outcome { failure ?? OK() }

    public init(failure: (any Outcome)?, sizeMismatch: Bool = false) {
        self.failure = failure
        self.sizeMismatch = sizeMismatch
        self.succeeded = failure == nil
    }

    /// Built where it is used (a stored static would be copied out through its accessor).
    @inlinable public static var success: PvalidateResult { PvalidateResult(failure: nil) }
}

/// A page-state change the hypervisor refused: SW_EXITINFO2 as the guest reads it.
public struct PSCError: Outcome, Hashable {
    public let exitInfo2: UInt64
    public init(exitInfo2: UInt64) { self.exitInfo2 = exitInfo2 }
    public var kind: OutcomeKind { .error }
    public var description: String { "PSC error " + hex(exitInfo2) }
}

/// The guest's instruction and exit, supplied by the machine: PVALIDATE on the guest's vCPU,
/// and VMGEXIT with a GHCB page-state-change request (its SW_EXITINFO2 comes back).
public typealias SNPPvalidate = (_ gfn: UInt64, _ size: PageSize, _ validate: Bool) -> PvalidateResult
/// The guest writes its request into the GHCB's shared buffer (`write`); the hypervisor
/// handles it there, writing its progress back into the buffer.
public typealias SNPVMGEXIT = (_ write: (inout PSCRequest) -> Void) -> UInt64

/// The SEV-SNP guest's side of conversions (arch/x86/coco/sev/core.c, arch/x86/mm/
/// mem_encrypt_amd.c): set_memory_decrypted's prepare hook rescinds validation (PVALIDATE,
/// 2M for 2M-aligned runs of at least 2M, 4K otherwise and on FAIL_SIZEMISMATCH) and then
/// asks for the change with a GHCB page-state change; set_memory_encrypted's finish hook asks
/// first and validates after. In Linux a failure terminates the guest (sev_es_terminate);
/// the model returns the failing outcome instead.
extension GuestKernel {
    /// PVALIDATE `gfns`, 2M where it can, falling back to 4K on FAIL_SIZEMISMATCH
    /// (pvalidate_pages). Also accept_memory's loop.
    public static func snpPvalidate(_ gfns: Range<UInt64>, validate: Bool, pvalidate: SNPPvalidate) -> OKOr {
        var gfn = gfns.lowerBound
        while gfn < gfns.upperBound {
            let big = gfn & 511 == 0 && gfn + 512 <= gfns.upperBound
            let r = pvalidate(gfn, big ? .size2M : .size4K, validate)
            if big && r.sizeMismatch {
                for g in gfn..<gfn + 512 {
                    let small = pvalidate(g, .size4K, validate)
                    if !small.succeeded { return .other(small.outcome) }
                }
            } else if !r.succeeded {
                return .other(r.outcome)
            }
            gfn += big ? 512 : 1
        }
        return .ok
    }

    /// GHCB page-state changes for `gfns`, 2M entries where aligned, at most 64 entries a
    /// request (VMGEXIT_PSC_MAX_ENTRY). set_pages_state / vmgexit_psc.
    public static func snpPageStateChange(_ gfns: Range<UInt64>, toPrivate: Bool, vmgexit: SNPVMGEXIT) -> PSCError? {
        var gfn = gfns.lowerBound
        while gfn < gfns.upperBound {
            // The request's pages, decided before the exit whether or not the buffer is written.
            let first = gfn
            var entries = 0
            while entries < 64 && gfn < gfns.upperBound {
                gfn += pscEntryIsLarge(gfn, gfns) ? 512 : 1
                entries += 1
            }
            let code = vmgexit { request in
                request.curEntry = 0
                request.endEntry = entries - 1
                // Over what the last request left, so a buffer of the same length stays as it is.
                if request.entries.count > entries { request.entries.removeLast(request.entries.count - entries) }
                var g = first, k = 0
                while g < gfn {
                    let big = pscEntryIsLarge(g, gfns)
                    let e = PSCEntry(gfn: g, operation: toPrivate ? 1 : 2, size2M: big)
                    if k < request.entries.count { request.entries[k] = e } else { request.entries.append(e) }
                    g += big ? 512 : 1
                    k += 1
                }
            }
            if code != 0 { return PSCError(exitInfo2: code) }
        }
        return nil
    }

    /// Whether the request's entry at `gfn` is a 2M one: 2M-aligned with the whole 2M inside.
    @inline(__always) static func pscEntryIsLarge(_ gfn: UInt64, _ gfns: Range<UInt64>) -> Bool {
        gfn & 511 == 0 && gfn + 512 <= gfns.upperBound
    }

    /// set_memory_decrypted (`encrypt` false) or set_memory_encrypted of `gfns` in an SNP
    /// guest: for each run not yet in the target state, change_page_attr on the guest's
    /// direct map with the SNP hooks (amd_enc_status_change_prepare → snp_set_memory_shared:
    /// rescind, then PSC to shared; amd_enc_status_change_finish → snp_set_memory_private:
    /// PSC to private, then validate).
    /// One page flipped to the other state (set_memory_decrypted of a private page,
    /// set_memory_encrypted of a shared one): the page's state read once.
    public mutating func snpFlip(_ gfn: UInt64, pvalidate: SNPPvalidate, vmgexit: SNPVMGEXIT) -> OKOr {
        snpConvert(gfn..<gfn + 1, encrypt: !isEncrypted(gfn: gfn), pvalidate: pvalidate, vmgexit: vmgexit)
    }

    public mutating func snpSetMemory(_ gfns: Range<UInt64>, encrypt: Bool, pvalidate: SNPPvalidate, vmgexit: SNPVMGEXIT) -> OKOr {
        // One page (the common case) needs no list of runs.
        if gfns.count == 1 {
            guard isEncrypted(gfn: gfns.lowerBound) != encrypt else { return .ok }
            return snpConvert(gfns, encrypt: encrypt, pvalidate: pvalidate, vmgexit: vmgexit)
        }
        for run in runs(gfns, encrypted: !encrypt) {
            let r = snpConvert(run, encrypt: encrypt, pvalidate: pvalidate, vmgexit: vmgexit)
            if !r.isOK { return r }
        }
        return .ok
    }

    /// change_page_attr over one run not yet in the target state, with the SNP hooks: `.ok`,
    /// or the failure.
    mutating func snpConvert(_ run: Range<UInt64>, encrypt: Bool, pvalidate: SNPPvalidate, vmgexit: SNPVMGEXIT) -> OKOr {
        var failure = OKOr.ok
        let status: KernelStatus
        do {
            // The hooks as a closure literal: not escaping, so what they capture stays on the stack.
            status = try kernel.setMemoryEncDec(va(gfn: run.lowerBound), numpages: run.count, encrypt: encrypt) { which, _, _, enc in
                switch (which, enc) {
                case (.prepare, false):
                    failure = Self.snpPvalidate(run, validate: false, pvalidate: pvalidate)
                    if failure.isOK, let e = Self.snpPageStateChange(run, toPrivate: false, vmgexit: vmgexit) { failure = .other(e) }
                case (.finish, true):
                    if let e = Self.snpPageStateChange(run, toPrivate: true, vmgexit: vmgexit) { failure = .other(e) }
                    else { failure = Self.snpPvalidate(run, validate: true, pvalidate: pvalidate) }
                default: break
                }
                return failure.isOK ? nil : .EIO
            }
        } catch {
            return .other(KernelStatus.error(.EINVAL))  // the range is inside the guest's memory by construction
        }
        if !failure.isOK { return failure }
        return status == .ok ? .ok : .other(status)
    }
}
