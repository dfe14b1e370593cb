import Hardware
import HostKernel
import PageTables

extension KVM where Backend == SNPBackend {
    /// A page-state change's conversion of `gfns`, counted.
    mutating func pscConvert(_ i: Int, gfns: Range<UInt64>, toPrivate: Bool, kernel: inout Kernel, rmp: inout RMP) {
        convert(i, gfns: gfns, toPrivate: toPrivate, kernel: &kernel, hw: &rmp)
        backend.stats.pscPages += UInt64(gfns.count)
    }

    /// The GHCB MSR protocol's page-state change (snp_handle_vmgexit_msr_protocol): one 4K
    /// page; the response MSR value. A bad operation gets GHCB_MSR_PSC_RESP_ERROR.
    public mutating func handlePSCMSR(_ i: Int, msr: UInt64, kernel: inout Kernel, rmp: inout RMP) -> UInt64 {
        guard let parsed = PSCMSRRequest.parse(msr) else { return msr }  // not a PSC request: left as-is
        switch parsed {
        case .failure(let e): return e.response
        case .success(let r):
            guard r.gfn < vms[i].config.pages else { return PSCMSRRequest.errorResponse }
            backend.stats.pscRequests += 1
            pscConvert(i, gfns: r.gfn..<r.gfn + 1, toPrivate: r.operation == .makePrivate, kernel: &kernel, rmp: &rmp)
            return PSCMSRRequest.response(error: 0)
        }
    }

    /// The GHCB NAE page-state change (snp_begin_psc / snp_complete_one_psc): INVALID_HDR for
    /// end_entry ≥ 253; then range by range, each entry checked as the search for the next
    /// range reaches it (INVALID_ENTRY stops there, ranges before it stay done); a partly done
    /// 2M entry continues as 4K; following entries with the same operation and size that
    /// continue the range join it; PSMASH and UNSMASH entries complete as no-ops; done
    /// entries get cur_page = their pages and cur_entry moves past them. Returns SW_EXITINFO2
    /// and the request as the guest sees it.
    public mutating func handlePSC(_ i: Int, _ request: PSCRequest, kernel: inout Kernel, rmp: inout RMP) -> (exitInfo2: UInt64, request: PSCRequest) {
        var req = request
        let code = handlePSC(i, &req, kernel: &kernel, rmp: &rmp)
        return (code, req)
    }

    /// The same, on the guest's buffer in place (the GHCB's shared buffer, which KVM writes
    /// cur_entry and each cur_page back into): SW_EXITINFO2.
    public mutating func handlePSC(_ i: Int, _ req: inout PSCRequest, kernel: inout Kernel, rmp: inout RMP) -> UInt64 {
        if req.endEntry >= PSCRequest.maxEntries { return PSCRequest.errorInvalidHeader }
        backend.stats.pscRequests += 1
        while true {
            // Find the next entry with pages left, checking each on the way.
            var e = PSCEntry(raw: 0)
            while req.curEntry <= req.endEntry {
                e = req.entry(req.curEntry)
                guard e.isValid else { return PSCRequest.errorInvalidEntry }
                if e.curPage < e.pages { break }
                req.curEntry += 1
            }
            if req.curEntry > req.endEntry { return 0 }
            var first = e.gfn + UInt64(e.curPage)
            var end = e.gfn + UInt64(e.pages)
            let op = e.operation
            var last = req.curEntry
            while last + 1 <= req.endEntry {
                let n = req.entry(last + 1)
                guard n.operation == op && n.size2M == e.size2M && n.curPage == 0 && n.gfn == end else { break }
                end = n.gfn + UInt64(n.pages)
                last += 1
            }
            if op == PSCOperation.makePrivate.rawValue || op == PSCOperation.makeShared.rawValue {
                first = min(first, vms[i].config.pages)
                end = min(end, vms[i].config.pages)
                guard first < end else { return PSCRequest.errorGeneric }
                pscConvert(i, gfns: first..<end, toPrivate: op == PSCOperation.makePrivate.rawValue, kernel: &kernel, rmp: &rmp)
            }
            var k = req.curEntry
            while k <= last && k < req.entries.count {  // unwritten slots stay zero
                let done = req.entries[k]
                req.entries[k] = PSCEntry(gfn: done.gfn, operation: done.operation, size2M: done.size2M, curPage: UInt16(done.pages))
                k += 1
            }
            req.curEntry = last + 1
        }
    }
}
