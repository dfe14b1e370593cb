import Hardware
import HostKernel
import PageTables

/// The TDX guest's requests of the VMM and the module, as closures the machine wires:
/// TDG.VP.VMCALL<MapGPA> (R12, R13 → R10, R11) and TDG.MEM.PAGE.ACCEPT at a level (0 4K,
/// 1 2M, 2 1G): true when the TDCALL completed with TDX_SUCCESS, whatever EPT-violation
/// exits it took on the way; any other status (PAGE_ALREADY_ACCEPTED included) is false.
public typealias TDXMapGPA = (_ r12: UInt64, _ r13: UInt64) -> (r10: UInt64, r11: UInt64)
public typealias TDXAccept = (_ gpa: UInt64, _ level: Int) -> Bool

extension GuestKernel {
    /// The shared bit of a GPAW-48 TD.
    public static let tdxSharedBit: UInt64 = 1 << 47

    /// tdx_map_gpa: MapGPA over [start, end), the shared bit set for a conversion to shared;
    /// a RETRY resumes from R11, and three RETRYs without progress give up.
    /// arch/x86/coco/tdx/tdx.c.
    static func tdxMapGPA(_ start: UInt64, _ end: UInt64, enc: Bool, _ mapGPA: TDXMapGPA) -> Bool {
        let bit = enc ? 0 : tdxSharedBit
        var s = start | bit, retries = 0
        let e = end | bit
        while retries < 3 {
            let (r10, r11) = mapGPA(s, e - s)
            if r10 != 1 { return r10 == 0 }  // not TDVMCALL_STATUS_RETRY
            if r11 < s || r11 >= e { return false }
            if r11 == s { retries += 1; continue }
            s = r11
            retries = 0
        }
        return false
    }

    /// tdx_accept_memory(start, end): page by page from the start, the largest size that is
    /// aligned and fits tried first (1G, then 2M, then 4K: try_accept_one); any failure at
    /// one size falls back to the next, and a failure at 4K fails the whole range.
    /// arch/x86/coco/tdx/tdx-shared.c.
    public static func tdxAcceptMemory(_ start: UInt64, _ end: UInt64, _ accept: TDXAccept) -> Bool {
        var s = start
        while s < end {
            var done = false
            for level in stride(from: 2, through: 0, by: -1) {
                let bytes: UInt64 = 1 << (12 + 9 * UInt64(level))
                guard s & (bytes - 1) == 0, end - s >= bytes, accept(s, level) else { continue }
                s += bytes
                done = true
                break
            }
            if !done { return false }
        }
        return true
    }

    /// set_memory_encrypted/decrypted in a TDX guest, in the order fixed in 2023: to private,
    /// enc_status_change_prepare runs tdx_enc_status_changed (MapGPA, then ACCEPT of each
    /// page, tdx_accept_memory) before the direct-map flip; to shared, the flip comes first and
    /// enc_status_change_finish does the MapGPA. A private mapping never points at a shared
    /// page. arch/x86/coco/tdx/tdx.c tdx_enc_status_change_prepare/finish.
    public mutating func tdxSetMemory(_ gfns: Range<UInt64>, encrypt: Bool, mapGPA: TDXMapGPA, accept: TDXAccept) -> any Outcome {
        let va = va(gfn: gfns.lowerBound), n = Int(gfns.count)
        let start = gfns.lowerBound << pageShift, end = gfns.upperBound << pageShift
        func hook(_ which: EncryptionHook, _ enc: Bool) -> Errno? {
            guard enc == (which == .prepare) else { return nil }  // prepare: to private; finish: to shared
            guard GuestKernel.tdxMapGPA(start, end, enc: enc, mapGPA) else { return .EIO }
            if enc && !GuestKernel.tdxAcceptMemory(start, end, accept) { return .EIO }
            return nil
        }
        do {
            return encrypt ? try kernel.setMemoryEncrypted(va, numpages: n) { w, _, _, e in hook(w, e) }
                : try kernel.setMemoryDecrypted(va, numpages: n) { w, _, _, e in hook(w, e) }
        } catch {
            return KernelStatus.error(.EINVAL)
        }
    }
}
