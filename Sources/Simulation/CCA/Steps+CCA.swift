import Hardware
import HostKernel
import PageTables

/// The RMM's commands as steps, under the specification's names lowercased: the host's RMI
/// calls (`rmi_realm_create` …) and the realm's RSI calls (`rsi_ipa_state_set` …). Realm
/// calls take `realm:` (a guest of the scenario), `ipa:`, `level:` as the RMM counts levels
/// (0–3) and, where the command takes a granule, `pa:`; a granule left out is one of the
/// host's, delegated first as KVM does. docs/cca.md.
extension CCAPlatform {
    static let realm = Parameter("realm", .guest, required: true, "the realm (a guest of the scenario)")
    static let ipa = Parameter("ipa", .address(), required: true, "the IPA (the top IPA bit set: unprotected)")
    static let level = Parameter("level", .count(0...3), required: true, "the RTT level, as the RMM counts (0: 512G entries … 3: 4K)")
    static let top = Parameter("top", .address(), "the end of the range (default: ipa + 4K)")
    static let recIndex = Parameter("rec", .count(0...1023), default: "0", "the REC, by the order the realm's RECs were created")

    /// A realm command: the guest's index and its RD (0 before RMI_REALM_CREATE, which the
    /// RMM answers with RMI_ERROR_INPUT).
    static func realmCall(_ name: String, _ summary: String, _ arguments: [Parameter],
                          _ body: @escaping @Sendable (StepArguments) -> @Sendable (inout CCAPlatform, Machine, Int, UInt64) -> any Outcome) -> StepDefinition {
        Steps.platformStep(CCAPlatform.self, name, summary, [realm] + arguments) { a, _ throws(ScenarioError) in
            let i = a.guest!.index, run = body(a)
            return { p, m in run(&p, m, i, p.rd[i] ?? 0) }
        }
    }

    /// The REC `index` of guest `i`, or 0 (not a REC: the RMM's RMI_ERROR_INPUT).
    func rec(_ i: Int, _ index: Int) -> UInt64 { index < recs[i].count ? recs[i][index] : 0 }

    /// The range's end: `top`, or one granule past `ipa`.
    static func top(_ a: StepArguments) -> UInt64 { a[number: "top"] ?? a.number("ipa") &+ pageBytes }

    /// The granule the step names, or one of the host's delegated for it; 0 when RAM is out.
    mutating func granule(_ a: StepArguments, _ name: String = "pa") -> UInt64 {
        a[number: name] ?? delegatedGranules() ?? 0
    }

    /// The realm's own memory behind `ipa` (the guest's placement; the top bit ignored).
    func memory(_ m: Machine, _ i: Int, _ ipa: UInt64, _ rd: UInt64) -> UInt64 {
        let bit = rmm.realm(rd)?.unprotectedBit ?? 0
        return m.guests[i].placement &+ (ipa & ~bit)
    }

    static let realmSteps: [StepDefinition] = [
        realmCall("rmi_realm_create", "RMI_REALM_CREATE: an RD and its start-level RTTs (given, or the host's delegated first) for the realm's IPA width, start level and VMID", [
            Parameter("pa", .address(), "the RD granule (default: one of the host's, delegated first)"),
            Parameter("rtt", .address(), "rtt_base, the first start-level RTT (default: the host's, as many as rtt_num_start, delegated first)"),
            Parameter("ipa_bits", .count(0...64), "s2sz (default: 40, or what the realm's memory needs in the lower half)"),
            Parameter("rtt_level_start", .count(0...3), "the start level (default: KVM's, as few levels as ipa_bits allows)"),
            Parameter("rtt_num_start", .count(0...64), "concatenated start tables (default: what the start level needs)"),
            Parameter("vmid", .count(0...65535), "the VMID (default: the guest's asid)"),
        ]) { a in
            { p, m, i, _ in
                let g = m.guests[i], s2sz = Int(a[number: "ipa_bits"] ?? UInt64(CCAPlatform.ipaBits(memory: g.memory)))
                var params = RealmParams.kvm(s2sz: s2sz, vmid: a[number: "vmid"] ?? UInt64(g.asid))
                if let sl = a[number: "rtt_level_start"] { params.rttLevelStart = Int(sl) }
                if let n = a[number: "rtt_num_start"] { params.rttNumStart = Int(n) }
                let rd = p.granule(a), rtt = a[number: "rtt"] ?? p.delegatedGranules(max(1, min(params.rttNumStart, 16))) ?? 0
                let s = p.rmm.realmCreate(rd: rd, rttBase: rtt, params)
                if s == .success {
                    p.rd[i] = rd
                    p.recs[i] = []
                }
                return s
            }
        },
        realmCall("rmi_realm_activate", "RMI_REALM_ACTIVATE: a NEW realm ACTIVE (no more DATA_CREATE, RTT_INIT_RIPAS or REC_CREATE)", []) { _ in
            { p, _, _, rd in p.rmm.realmActivate(rd: rd) }
        },
        realmCall("rmi_realm_destroy", "RMI_REALM_DESTROY: the RD and start tables DELEGATED again once no REC and no live start-table entry is left", []) { _ in
            { p, _, i, rd in
                let s = p.rmm.realmDestroy(rd: rd)
                if s == .success { p.rd[i] = nil }
                return s
            }
        },
        realmCall("rmi_rec_create", "RMI_REC_CREATE: a REC with its auxiliary granules, the realm's next MPIDR", [
            Parameter("pa", .address(), "the REC granule (default: one of the host's, delegated first)"),
            Parameter("mpidr", .address(), "the MPIDR (default: the realm's next REC index)"),
            Parameter("runnable", .bool, default: "true", "flags.RUNNABLE"),
            Parameter("aux", .count(0...64), default: "16", "auxiliary granules given (the RMM wants rd.num_rec_aux, 16)"),
        ]) { a in
            { p, _, i, rd in
                let rec = p.granule(a), n = Int(a.number("aux"))
                let aux = (0..<n).map { _ in p.delegatedGranules() ?? 0 }
                let next = p.rmm.realm(rd)?.recCount ?? 0
                let s = p.rmm.recCreate(rd: rd, rec: rec, mpidr: a[number: "mpidr"] ?? RMM.mpidr(index: next), runnable: a.bool("runnable"), aux: aux)
                if s == .success { p.recs[i].append(rec) }
                return s
            }
        },
        realmCall("rmi_rec_destroy", "RMI_REC_DESTROY: the REC and its auxiliary granules DELEGATED again", [recIndex]) { a in
            let k = Int(a.number("rec"))
            return { p, _, i, _ in p.rmm.recDestroy(rec: p.rec(i, k)) }
        },
        realmCall("rmi_rec_enter", "RMI_REC_ENTER: the realm runs on the REC until its next exit; the answer to its RIPAS change is delivered here", [
            recIndex, Parameter("response", .choice(RIPASResponse.allCases.map { $0 == .accept ? "accept" : "reject" }), default: "accept",
                                "the host's answer to a pending RIPAS change (flags.RIPAS_RESPONSE)"),
        ]) { a in
            let k = Int(a.number("rec")), response: RIPASResponse = a.text("response") == "reject" ? .reject : .accept
            return { p, _, i, _ in
                let (s, delivered) = p.rmm.recEnter(rec: p.rec(i, k), response: response)
                guard let delivered else { return s }
                return AnnotatedOutcome(s, notes: ["the realm reads \(delivered)"])
            }
        },
        realmCall("rmi_rtt_create", "RMI_RTT_CREATE: a new RTT at level under the entry at level − 1, which it unfolds", [
            ipa, level, Parameter("pa", .address(), "the RTT granule (default: one of the host's, delegated first)"),
        ]) { a in
            let ipa = a.number("ipa"), level = Int(a.number("level"))
            return { p, _, _, rd in p.rmm.rttCreate(rd: rd, rtt: p.granule(a), ipa: ipa, level: level) }
        },
        realmCall("rmi_rtt_destroy", "RMI_RTT_DESTROY: an RTT with no live entry removed; its parent entry DESTROYED (protected) or NS", [ipa, level]) { a in
            let ipa = a.number("ipa"), level = Int(a.number("level"))
            return { p, _, _, rd in p.rmm.rttDestroy(rd: rd, ipa: ipa, level: level) }
        },
        realmCall("rmi_rtt_fold", "RMI_RTT_FOLD: a homogeneous RTT folded into its parent entry", [ipa, level]) { a in
            let ipa = a.number("ipa"), level = Int(a.number("level"))
            return { p, _, _, rd in p.rmm.rttFold(rd: rd, ipa: ipa, level: level) }
        },
        realmCall("rmi_rtt_init_ripas", "RMI_RTT_INIT_RIPAS: UNASSIGNED_EMPTY entries of a NEW realm made RAM, within one RTT", [ipa, top]) { a in
            let base = a.number("ipa"), top = top(a)
            return { p, _, _, rd in p.rmm.rttInitRIPAS(rd: rd, base: base, top: top) }
        },
        realmCall("rmi_rtt_set_ripas", "RMI_RTT_SET_RIPAS: the REC's pending RIPAS change applied, within one RTT, from where it got to", [recIndex, ipa, top]) { a in
            let k = Int(a.number("rec")), base = a.number("ipa"), top = top(a)
            return { p, _, i, rd in p.rmm.rttSetRIPAS(rd: rd, rec: p.rec(i, k), base: base, top: top) }
        },
        realmCall("rmi_rtt_read_entry", "RMI_RTT_READ_ENTRY: the RTT entry at level (or where the walk stops): level, state, descriptor, RIPAS", [ipa, level]) { a in
            let ipa = a.number("ipa"), level = Int(a.number("level"))
            return { p, _, _, rd in p.rmm.rttReadEntry(rd: rd, ipa: ipa, level: level) }
        },
        realmCall("rmi_data_create", "RMI_DATA_CREATE: a DELEGATED granule filled from an NS source and mapped ASSIGNED_RAM at ipa (NEW realms only)", [
            ipa, Parameter("pa", .address(), "the data granule (default: the realm's memory at ipa, delegated first)"),
            Parameter("src", .address(), "the NS source granule (default: the first granule of RAM)"),
        ]) { a in
            let ipa = a.number("ipa")
            return { p, m, i, rd in
                let data = a[number: "pa"] ?? p.memory(m, i, ipa, rd)
                if a[number: "pa"] == nil { _ = p.firmware.granuleDelegate(data) }
                return p.rmm.dataCreate(rd: rd, data: data, ipa: ipa, src: a[number: "src"] ?? (p.ram.first?.lowerBound ?? 0))
            }
        },
        realmCall("rmi_data_create_unknown", "RMI_DATA_CREATE_UNKNOWN: a DELEGATED granule mapped at ipa with the entry's RIPAS, contents unknown (zero)", [
            ipa, Parameter("pa", .address(), "the data granule (default: the realm's memory at ipa, delegated first)"),
        ]) { a in
            let ipa = a.number("ipa")
            return { p, m, i, rd in
                let data = a[number: "pa"] ?? p.memory(m, i, ipa, rd)
                if a[number: "pa"] == nil { _ = p.firmware.granuleDelegate(data) }
                return p.rmm.dataCreate(rd: rd, data: data, ipa: ipa, src: nil)
            }
        },
        realmCall("rmi_data_destroy", "RMI_DATA_DESTROY: a protected ASSIGNED entry unassigned (RAM becomes DESTROYED), its granule DELEGATED", [ipa]) { a in
            let ipa = a.number("ipa")
            return { p, _, _, rd in p.rmm.dataDestroy(rd: rd, ipa: ipa) }
        },
        realmCall("rmi_rtt_map_unprotected", "RMI_RTT_MAP_UNPROTECTED: host memory mapped ASSIGNED_NS at an unprotected ipa", [
            ipa, level, Parameter("pa", .address(), "the host memory the descriptor maps (default: the realm's memory at ipa without its top bit)"),
        ]) { a in
            let ipa = a.number("ipa"), level = Int(a.number("level"))
            return { p, m, i, rd in p.rmm.rttMapUnprotected(rd: rd, ipa: ipa, level: level, pa: a[number: "pa"] ?? p.memory(m, i, ipa, rd)) }
        },
        realmCall("rmi_rtt_unmap_unprotected", "RMI_RTT_UNMAP_UNPROTECTED: an ASSIGNED_NS entry back to UNASSIGNED_NS", [ipa, level]) { a in
            let ipa = a.number("ipa"), level = Int(a.number("level"))
            return { p, _, _, rd in p.rmm.rttUnmapUnprotected(rd: rd, ipa: ipa, level: level) }
        },
        realmCall("rsi_ipa_state_set", "RSI_IPA_STATE_SET from the realm on a REC: a RIPAS change request, which exits to the host (RMI_EXIT_RIPAS_CHANGE)", [
            recIndex, ipa, top, Parameter("ripas", .choice(RIPAS.allCases.map { "\($0)".lowercased() }), default: "ram", "the RIPAS asked for"),
            Parameter("flags", .count(0...UInt64(UInt32.max)), default: "0", "X4: 1 is RSI_CHANGE_DESTROYED, anything else RSI_NO_CHANGE_DESTROYED"),
        ]) { a in
            let k = Int(a.number("rec")), base = a.number("ipa"), top = top(a), flags = a.number("flags")
            let ripas = RIPAS.allCases.first { "\($0)".lowercased() == a.text("ripas") }!
            return { p, _, i, _ in
                let rec = p.rec(i, k)
                if let notRunning = p.notRunning(rec) { return notRunning }
                return p.rmm.rsiIPAStateSet(rec: rec, base: base, top: top, ripas: ripas, flags: flags)
            }
        },
        realmCall("rsi_ipa_state_get", "RSI_IPA_STATE_GET from the realm: the RIPAS at ipa and how far it runs (to top at most)", [recIndex, ipa, top]) { a in
            let k = Int(a.number("rec")), base = a.number("ipa"), top = top(a)
            return { p, _, i, _ in
                let rec = p.rec(i, k)
                if let notRunning = p.notRunning(rec) { return notRunning }
                return p.rmm.rsiIPAStateGet(rec: rec, base: base, end: top)
            }
        },
    ]

    /// Why the realm cannot be making a call on `rec` (it runs only on a runnable REC of an
    /// ACTIVE realm, and not while it waits for the host's answer to a RIPAS change), or nil.
    func notRunning(_ rec: UInt64) -> (any Outcome)? {
        guard let c = rmm.recs[rec], let r = rmm.realm(c.rd) else { return RealmNotRunning(reason: "no such REC") }
        if r.state != .active { return RealmNotRunning(reason: "the realm is \(r.state)") }
        if !c.runnable { return RealmNotRunning(reason: "the REC is not runnable") }
        if c.awaitingRIPASResponse { return RealmNotRunning(reason: "the REC waits for rmi_rec_enter to answer its RIPAS change") }
        return nil
    }

    /// KVM's IPA width for a realm of `memory` bytes: 40 bits (KVM's default), more when the
    /// protected half must hold more.
    static func ipaBits(memory: UInt64) -> Int {
        var bits = 40
        while bits < 48 && (1 << UInt64(bits - 1)) < memory { bits += 1 }
        return bits
    }
}

/// A realm call the model cannot make: the realm is not running on that REC.
public struct RealmNotRunning: Outcome, Hashable {
    public let reason: String
    public var kind: OutcomeKind { .error }
    public var description: String { "realm not running: \(reason)" }
}
