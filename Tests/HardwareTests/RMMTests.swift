import PageTables
import Testing
@testable import Hardware
import Expectations

/// The RMM's realm, REC, RTT, DATA and RIPAS commands (TF-RMM tf-rmm-v0.6.0
/// runtime/rmi/realm.c, rec.c, rtt.c, run.c; runtime/rsi/memory.c): each failure in the
/// order the RMM checks it, with its exact status, and the states each success leaves.
struct RMMTests {
    static let dram: Range<UInt64> = 0x8000_0000..<0x1_0000_0000

    /// A GPT and an RMM over 2 GiB of DRAM, and granules handed out from 0x80100000 up.
    struct Fixture {
        var gpt = GPT(ram: [RMMTests.dram])
        var rmm = RMM(dram: [RMMTests.dram])
        var next: UInt64 = 0x8010_0000
        var rd: UInt64 = 0

        /// The next granule, delegated.
        mutating func delegated() -> UInt64 {
            defer { next += pageBytes }
            expectEqual(rmm.delegate(next, gpt: &gpt), .success)
            return next
        }
        /// The next granule, left NS.
        mutating func ns() -> UInt64 {
            defer { next += pageBytes }
            return next
        }

        /// A realm of `s2sz` bits with KVM's geometry (40: start level 1, two start tables).
        init(s2sz: Int = 40, vmid: UInt64 = 1) {
            rd = delegated()
            let p = RealmParams.kvm(s2sz: s2sz, vmid: vmid)
            let rtt = next
            for _ in 0..<p.rttNumStart { _ = delegated() }
            expectEqual(rmm.realmCreate(rd: rd, rttBase: rtt, p), .success)
        }

        var realm: Realm { rmm.realms[rd]! }

        /// The 512 entries of the level-`level` RTT holding `ipa`, as TF-RMM's tests read a
        /// whole table.
        func wholeTable(_ ipa: UInt64, level: Int) -> [RTTEntry] {
            let span = RMM.mapSize(level - 1), base = ipa & ~(span - 1)
            return (0..<UInt64(512)).map { entry(base + $0 * RMM.mapSize(level), level) ?? .table(-1) }
        }

        /// The refcounts and live counts the realm keeps as entries change equal those counted
        /// afresh from every RTT.
        func countsHold() -> Bool {
            realm.rttGranule.keys.allSatisfy { t in
                realm.refcount(table: t) == RMM.countedRefcount(realm.rtt, table: t)
                    && realm.liveEntries(table: t) == (0..<entriesPerTable).filter { RTTEntry(realm.rtt.entry(table: t, index: $0)).isLive }.count
            }
        }
        func entry(_ ipa: UInt64, _ level: Int) -> RTTEntry? { realm.entry(ipa, level: level) }

        /// 512 DATA granules from the 2M-aligned `pa` on, delegated and mapped at `ipa` onward
        /// (with `src` the contents copied in; nil: DATA_CREATE_UNKNOWN).
        mutating func dataBlock(pa: UInt64, ipa: UInt64, src: UInt64?) {
            for i in 0..<UInt64(512) {
                expectEqual(rmm.delegate(pa + i * pageBytes, gpt: &gpt), .success)
                expectEqual(rmm.dataCreate(rd: rd, data: pa + i * pageBytes, ipa: ipa + i * pageBytes, src: src), .success)
            }
        }

        mutating func create(_ ipa: UInt64, _ level: Int) -> RMIStatus { rmm.rttCreate(rd: rd, rtt: delegated(), ipa: ipa, level: level) }
        /// RTTs down to level 3 for `ipa`.
        mutating func tables(_ ipa: UInt64) {
            for l in realm.startLevel + 1...3 where create(ipa & ~(RMM.mapSize(l - 1) - 1), l) != .success { Issue.record("RTT_CREATE \(l)") }
        }
        mutating func rec(runnable: Bool = true) -> UInt64 {
            let rec = delegated(), aux = (0..<16).map { _ in delegated() }
            expectEqual(rmm.recCreate(rd: rd, rec: rec, mpidr: RMM.mpidr(index: realm.recCount), runnable: runnable, aux: aux), .success)
            return rec
        }
    }

    // MARK: Realms

    /// validate_ipa_bits_and_sl without LPA2, every width and start level: sl 0 takes 40–48,
    /// sl 1 32–43, sl 2 32–34, sl 3 nothing; and s2_num_root_rtts.
    @Test func ipaWidthsAndStartLevels() {
        for s2sz in 28...52 {
            for sl in -1...4 {
                let expected = switch sl {
                case 0: (40...48).contains(s2sz)
                case 1: (32...43).contains(s2sz)
                case 2: (32...34).contains(s2sz)
                default: false
                }
                expectEqual(RMM.validIPABits(s2sz: s2sz, sl: sl), expected, "s2sz \(s2sz) sl \(sl)")
            }
        }
        expectEqual([40, 41, 42, 43].map { RMM.numRootRTTs(s2sz: $0, sl: 1) }, [2, 4, 8, 16])
        expectEqual([32, 33, 34].map { RMM.numRootRTTs(s2sz: $0, sl: 2) }, [4, 8, 16])
        expectEqual(RMM.numRootRTTs(s2sz: 48, sl: 0), 1)
        expectEqual(RMM.numRootRTTs(s2sz: 39, sl: 1), 1)
        expectEqual(RealmParams.kvm(s2sz: 40, vmid: 0), RealmParams(s2sz: 40, rttLevelStart: 1, rttNumStart: 2, vmid: 0))
        expectEqual(RealmParams.kvm(s2sz: 48, vmid: 0), RealmParams(s2sz: 48, rttLevelStart: 0, rttNumStart: 1, vmid: 0))
        expectEqual(RealmParams.kvm(s2sz: 33, vmid: 0), RealmParams(s2sz: 33, rttLevelStart: 2, rttNumStart: 8, vmid: 0))
    }

    @Test func realmCreateFailures() {
        var f = Fixture()
        let rd = f.delegated(), rtt = f.next
        _ = f.delegated(); _ = f.delegated()
        func create(_ p: RealmParams, rd: UInt64 = rd, rtt: UInt64 = rtt) -> RMIStatus { f.rmm.realmCreate(rd: rd, rttBase: rtt, p) }
        let ok = RealmParams.kvm(s2sz: 40, vmid: 2)
        var p = ok
        p.s2sz = 31
        expectEqual(create(p), .errorInput)  // below 32 bits
        p.s2sz = 49
        expectEqual(create(p), .errorInput)  // above the PA size
        p = ok; p.rttLevelStart = 2
        expectEqual(create(p), .errorInput)  // sl 2 cannot reach 40 bits
        p = ok; p.rttNumStart = 1
        expectEqual(create(p), .errorInput)  // 40 bits at sl 1 need 2 start tables
        p = ok; p.hashAlgorithm = 2
        expectEqual(create(p), .errorInput)
        p = ok; p.vmid = 256
        expectEqual(create(p), .errorInput)  // 8-bit VMIDs
        p = ok; p.vmid = 1
        expectEqual(create(p), .errorInput)  // VMID 1 is the fixture realm's
        expectEqual(create(ok, rd: rtt + pageBytes), .errorInput)  // rd inside the start tables
        expectEqual(create(ok, rd: f.ns()), .errorInput)  // rd not DELEGATED
        expectEqual(create(ok, rtt: rtt + pageBytes), .errorInput)  // the second start table not DELEGATED
        expectEqual(f.rmm.state(rd), .delegated)
        expectEqual(f.rmm.state(rtt), .delegated)
        expectEqual(f.rmm.realms.count, 1)
        expectEqual(create(ok), .success)
        expectEqual(f.rmm.state(rd), .rd)
        expectEqual(f.rmm.state(rtt), .rtt)
        expectEqual(f.rmm.state(rtt + pageBytes), .rtt)
        // The start tables: UNASSIGNED_EMPTY in the PAR (the lower 2^39), UNASSIGNED_NS above.
        let r = f.rmm.realms[rd]!
        expectEqual(r.entry(0, level: 1), .unassigned(.empty))
        expectEqual(r.entry((1 << 39) - (1 << 30), level: 1), .unassigned(.empty))
        expectEqual(r.entry(1 << 39, level: 1), .unassignedNS)
        expectEqual(r.entry((1 << 40) - (1 << 30), level: 1), .unassignedNS)
    }

    @Test func realmActivateAndDestroy() {
        var f = Fixture()
        expectEqual(f.rmm.realmActivate(rd: f.rd + pageBytes), .errorInput)  // a start table, not an RD
        let rec = f.rec()
        expectEqual(f.rmm.realmActivate(rd: f.rd), .success)
        expectEqual(f.realm.state, .active)
        expectEqual(f.rmm.realmActivate(rd: f.rd), .errorRealm)  // not NEW
        expectEqual(f.rmm.realmDestroy(rd: f.next), .errorInput)
        expectEqual(f.rmm.realmDestroy(rd: f.rd), .errorRealm)  // a REC is left
        expectEqual(f.rmm.recDestroy(rec: rec), .success)
        expectEqual(f.create(0, 2), .success)
        expectEqual(f.rmm.realmDestroy(rd: f.rd), .errorRealm)  // a table in a start table
        expectEqual(f.rmm.rttDestroy(rd: f.rd, ipa: 0, level: 2).status, .success)
        let roots = (0..<2).map { f.realm.rttGranule[$0]! }
        expectEqual(f.rmm.realmDestroy(rd: f.rd), .success)
        expectEqual(f.rmm.state(f.rd), .delegated)
        expectTrue(roots.allSatisfy { f.rmm.state($0) == .delegated })
        expectTrue(f.rmm.vmids.isEmpty)
        // The VMID is free again.
        expectEqual(f.rmm.realmCreate(rd: f.rd, rttBase: roots[0], .kvm(s2sz: 40, vmid: 1)), .success)
    }

    // MARK: RECs

    @Test func recCreateFailures() {
        var f = Fixture()
        let aux = (0..<16).map { _ in f.delegated() }, rec = f.delegated()
        func create(rec r: UInt64 = rec, rd: UInt64? = nil, mpidr: UInt64 = 0, aux a: [UInt64] = aux) -> RMIStatus {
            f.rmm.recCreate(rd: rd ?? f.rd, rec: r, mpidr: mpidr, runnable: true, aux: a)
        }
        expectEqual(create(aux: aux + [f.delegated()]), .errorInput)  // more than 16 auxiliary granules
        let ns = f.ns()
        expectEqual(create(aux: Array(aux[0..<8]) + [ns] + Array(aux[9...])), .errorInput)  // one not DELEGATED
        expectTrue(aux.allSatisfy { f.rmm.state($0) == .delegated })  // those taken were given back
        expectEqual(create(rec: f.ns()), .errorInput)  // rec not DELEGATED
        expectEqual(create(rec: f.rd), .errorInput)  // rec is the RD
        expectEqual(create(rd: aux[0]), .errorInput)  // rd not an RD
        expectEqual(create(mpidr: 1), .errorInput)  // not the next index
        expectEqual(create(mpidr: 0x100_0000_0000), .errorInput)  // a bit outside Aff0[3:0] and Aff1-3
        expectEqual(create(mpidr: 0x10), .errorInput)  // Aff0[7:4]
        expectEqual(create(aux: Array(aux[0..<15])), .errorInput)  // rd.num_rec_aux is 16
        expectEqual(create(), .success)
        expectEqual(f.rmm.state(rec), .rec)
        expectTrue(aux.allSatisfy { f.rmm.state($0) == .recAux })
        expectEqual(f.realm.liveRECs, 1)
        expectEqual(f.realm.recCount, 1)
        expectEqual(f.realm.rimExtensions, 1)
        expectEqual(f.rmm.realmActivate(rd: f.rd), .success)
        let aux2 = (0..<16).map { _ in f.delegated() }
        expectEqual(f.rmm.recCreate(rd: f.rd, rec: f.delegated(), mpidr: 1, runnable: true, aux: aux2), .errorRealm)  // ACTIVE
        expectTrue(aux2.allSatisfy { f.rmm.state($0) == .delegated })
    }

    @Test func recDestroyKeepsTheIndex() {
        var f = Fixture()
        let rec = f.rec()
        expectEqual(f.rmm.recDestroy(rec: f.rd), .errorInput)
        let aux = f.rmm.recs[rec]!.aux
        expectEqual(f.rmm.recDestroy(rec: rec), .success)
        expectEqual(f.rmm.state(rec), .delegated)
        expectTrue(aux.allSatisfy { f.rmm.state($0) == .delegated })
        expectEqual(f.realm.liveRECs, 0)
        expectEqual(f.rmm.recCreate(rd: f.rd, rec: rec, mpidr: 0, runnable: true, aux: aux), .errorInput)  // rec_count stays 1
        expectEqual(f.rmm.recCreate(rd: f.rd, rec: rec, mpidr: 1, runnable: true, aux: aux), .success)
        expectEqual(RMM.mpidrIndex(RMM.mpidr(index: 0x1234)), 0x1234)
        expectEqual(RMM.mpidr(index: 17), 0x101)
    }

    @Test func recEnterFailures() {
        var f = Fixture()
        let rec = f.rec(), idle = f.rec(runnable: false)
        expectEqual(f.rmm.recEnter(rec: f.rd, response: .accept).status, .errorInput)
        expectEqual(f.rmm.recEnter(rec: rec, response: .accept).status, RMIStatus(2, index: 0))  // REALM_NEW
        expectEqual(f.rmm.realmActivate(rd: f.rd), .success)
        expectEqual(f.rmm.recEnter(rec: idle, response: .accept).status, .errorRec)  // not runnable
        let r = f.rmm.recEnter(rec: rec, response: .accept)
        expectEqual(r.status, .success)
        expectEqual(r.delivered, nil)
        expectEqual(RMIStatus(2, index: 1).description, "RMI_ERROR_REALM")
    }

    // MARK: RTTs

    @Test func rttCreateFailures() {
        var f = Fixture()
        let rtt = f.delegated()
        expectEqual(f.rmm.rttCreate(rd: f.rd, rtt: f.ns(), ipa: 0, level: 2), .errorInput)  // rtt not DELEGATED
        expectEqual(f.rmm.rttCreate(rd: rtt, rtt: rtt, ipa: 0, level: 2), .errorInput)  // rtt is rd
        expectEqual(f.rmm.rttCreate(rd: f.delegated(), rtt: rtt, ipa: 0, level: 2), .errorInput)  // rd not an RD
        expectEqual(f.rmm.rttCreate(rd: f.rd, rtt: rtt, ipa: 0, level: 1), .errorInput)  // not below the start level
        expectEqual(f.rmm.rttCreate(rd: f.rd, rtt: rtt, ipa: 0, level: 4), .errorInput)
        expectEqual(f.rmm.rttCreate(rd: f.rd, rtt: rtt, ipa: 0x20_0000, level: 2), .errorInput)  // not 1G-aligned
        expectEqual(f.rmm.rttCreate(rd: f.rd, rtt: rtt, ipa: 1 << 40, level: 2), .errorInput)  // past the IPA space
        expectEqual(f.rmm.rttCreate(rd: f.rd, rtt: rtt, ipa: 0, level: 3), .errorRTT(level: 1))  // no level-2 RTT: the walk stops at 1
        expectEqual(f.rmm.rttCreate(rd: f.rd, rtt: rtt, ipa: 0, level: 2), .success)
        expectEqual(f.rmm.state(rtt), .rtt)
        expectEqual(f.create(0, 2), .errorRTT(level: 1))  // the parent is a table already
        expectEqual(f.wholeTable(0, level: 2), Array(repeating: .unassigned(.empty), count: 512))  // 512 copies
        // Outside the PAR the copies are UNASSIGNED_NS.
        expectEqual(f.create(1 << 39, 2), .success)
        expectEqual(f.entry((1 << 39) + 0x20_0000, 2), .unassignedNS)
    }

    /// An ASSIGNED block unfolds into 512 entries of consecutive PAs (a valid one broken
    /// first: TLBI); its refcount moves to the child.
    @Test func unfoldAndFoldShapes() {
        var f = Fixture()
        f.tables(0)
        // 512 DATA granules at a 2M-aligned PA fill the level-3 RTT at [0, 2M).
        let base: UInt64 = 0x8040_0000
        f.dataBlock(pa: base, ipa: 0, src: 0x8000_0000)
        let l3 = f.realm.rttGranule.first { $0.key >= 2 && f.realm.refcount(table: $0.key) == 512 }!.value
        let tlbis = f.rmm.stats.tlbis
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: 0, level: 3), RMIResult(.success, [.init("rtt", l3)]))
        expectEqual(f.entry(0, 2), .assigned(.ram, pa: base))
        expectEqual(f.rmm.state(l3), .delegated)
        expectEqual(f.rmm.stats.tlbis, tlbis + 1)
        expectEqual(f.realm.rtt.leafCounts[.size2M], 1)
        expectEqual(f.realm.rtt.leafCounts[.size4K], 0)
        // Unfolded again: 512 valid 4K leaves, the block broken first.
        expectEqual(f.create(0, 3), .success)
        expectEqual(f.entry(0x1ff000, 3), .assigned(.ram, pa: base + 0x1ff000))
        expectEqual(f.rmm.stats.tlbis, tlbis + 2)
        expectEqual(f.wholeTable(0, level: 3), (0..<512).map { .assigned(.ram, pa: base + UInt64($0) * pageBytes) })
        expectEqual(f.realm.rtt.leafCounts[.size4K], 512)
        // 511 assigned entries do not fold; nor 512 whose PAs are not consecutive.
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0x1000).status, .success)
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: 0, level: 3).status, .errorRTT(level: 3))
        let stray = f.delegated()
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: stray, ipa: 0x1000, src: 0x8000_0000), .success)
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: 0, level: 3).status, .errorRTT(level: 3))
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0x1000).status, .success)
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: base + 0x1000, ipa: 0x1000, src: 0x8000_0000), .success)
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: 0, level: 3).status, .success)
        expectEqual(f.entry(0x1000, 2), .assigned(.ram, pa: base))
        expectTrue(f.countsHold())
    }

    /// An invalid ASSIGNED block (EMPTY) folds and unfolds with its PAs kept in order.
    @Test func assignedEmptyBlocks() {
        var f = Fixture()
        f.tables(0x4000_0000)
        let base: UInt64 = 0x8060_0000
        f.dataBlock(pa: base, ipa: 0x4000_0000, src: nil)
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: 0x4000_0000, level: 3).status, .success)
        expectEqual(f.entry(0x4000_0000, 2), .assigned(.empty, pa: base))
        expectEqual(f.create(0x4000_0000, 3), .success)
        expectEqual(f.wholeTable(0x4000_0000, level: 3), (0..<512).map { .assigned(.empty, pa: base + UInt64($0) * pageBytes) })
        expectEqual(f.realm.rtt.leafCounts[.size4K], 0)
        expectTrue(f.countsHold())
    }

    @Test func foldOfUnassignedAndNS() {
        var f = Fixture()
        expectEqual(f.create(0, 2), .success)
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: 0, level: 2).status, .success)
        expectEqual(f.entry(0, 1), .unassigned(.empty))
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: 0, level: 2).status, .errorRTT(level: 1))  // the parent is no table
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: 0, level: 3).status, .errorRTT(level: 1))  // the walk stops at 1
        expectEqual(f.rmm.rttFold(rd: f.rd + pageBytes, ipa: 0, level: 2).status, .errorInput)
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: 0x1000, level: 2).status, .errorInput)
        // Mixed RIPAS does not fold.
        f.tables(0)
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0, top: 0x1000).status, .success)
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: 0, level: 3).status, .errorRTT(level: 3))
        // 512 ASSIGNED_NS of consecutive, aligned PAs fold into a 2M ASSIGNED_NS block.
        let ns: UInt64 = 1 << 39
        f.tables(ns)
        for i in 0..<UInt64(512) { #expect(f.rmm.rttMapUnprotected(rd: f.rd, ipa: ns + i * pageBytes, level: 3, pa: 0x9000_0000 + i * pageBytes) == .success) }
        expectEqual(f.rmm.rttFold(rd: f.rd, ipa: ns, level: 3).status, .success)
        expectEqual(f.entry(ns, 2), .assignedNS(pa: 0x9000_0000))
        // A level-0 block is never made: a 48-bit realm's level-1 RTT of ASSIGNED_NS 1G blocks.
        var g = Fixture(s2sz: 48, vmid: 3)
        let top: UInt64 = 1 << 47
        expectEqual(g.create(top, 1), .success)
        for i in 0..<UInt64(512) { #expect(g.rmm.rttMapUnprotected(rd: g.rd, ipa: top + (i << 30), level: 1, pa: i << 30) == .success) }
        expectEqual(g.rmm.rttFold(rd: g.rd, ipa: top, level: 1).status, .errorRTT(level: 0))
        // … but 512 UNASSIGNED_NS entries fold into level 0.
        expectEqual(g.create(0, 1), .success)
        expectEqual(g.rmm.rttFold(rd: g.rd, ipa: 0, level: 1).status, .success)
        expectEqual(g.entry(0, 0), .unassigned(.empty))
        expectTrue(f.countsHold())
    }

    @Test func rttDestroyFailuresAndTop() {
        var f = Fixture()
        f.tables(0)
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: f.delegated(), ipa: 0x3000, src: 0x8000_0000), .success)
        expectEqual(f.rmm.rttDestroy(rd: f.rd, ipa: 0, level: 3), RMIResult(.errorRTT(level: 3), [.init("top", 0)]))  // live: X2 the address
        expectEqual(f.rmm.rttDestroy(rd: f.rd, ipa: 0, level: 2).status, .errorRTT(level: 2))
        // A walk that stops above: X2 the next live entry of that table (none: its end).
        expectEqual(f.rmm.rttDestroy(rd: f.rd, ipa: 0x4000_0000, level: 3), RMIResult(.errorRTT(level: 1), [.init("top", 1 << 39)]))
        expectEqual(f.rmm.rttDestroy(rd: f.rd, ipa: 0x20_0000, level: 3), RMIResult(.errorRTT(level: 2), [.init("top", 0x4000_0000)]))
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0x3000).status, .success)
        let l3 = f.realm.walk(0, to: 3)
        let granule = f.realm.rttGranule[l3.table]!
        expectEqual(f.rmm.rttDestroy(rd: f.rd, ipa: 0, level: 3), RMIResult(.success, [.init("rtt", granule), .init("top", 0x4000_0000)]))
        expectEqual(f.entry(0, 2), .unassigned(.destroyed))
        expectEqual(f.rmm.state(granule), .delegated)
        // Outside the PAR the parent becomes UNASSIGNED_NS.
        let ns: UInt64 = 1 << 39
        expectEqual(f.create(ns, 2), .success)
        expectEqual(f.rmm.rttDestroy(rd: f.rd, ipa: ns, level: 2).status, .success)
        expectEqual(f.entry(ns, 1), .unassignedNS)
        expectTrue(f.countsHold())
    }

    @Test func readEntry() {
        var f = Fixture()
        expectEqual(f.rmm.rttReadEntry(rd: f.rd, ipa: 0, level: 0) as? RMIStatus, .errorInput)  // below the start level
        expectEqual(f.rmm.rttReadEntry(rd: f.rd, ipa: 0x1000, level: 2) as? RMIStatus, .errorInput)  // not 2M-aligned
        expectEqual(f.rmm.rttReadEntry(rd: f.rd + pageBytes, ipa: 0, level: 3) as? RMIStatus, .errorInput)
        expectEqual("\(f.rmm.rttReadEntry(rd: f.rd, ipa: 0x1000, level: 3))", "RMI_SUCCESS (level 1, UNASSIGNED, RIPAS EMPTY)")
        expectEqual(f.create(0, 2), .success)
        let child = f.realm.rttGranule[f.realm.walk(0, to: 2).table]!
        expectEqual("\(f.rmm.rttReadEntry(rd: f.rd, ipa: 0, level: 1))", "RMI_SUCCESS (level 1, TABLE, RIPAS EMPTY, desc \(hex(child)))")
    }

    // MARK: DATA

    @Test func dataCreateFailures() {
        var f = Fixture()
        f.tables(0)
        let data = f.delegated(), src: UInt64 = 0x8000_0000
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: data, ipa: 0, src: data), .errorInput)  // src not NS
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: f.ns(), ipa: 0, src: src), .errorInput)  // data not DELEGATED
        expectEqual(f.rmm.dataCreate(rd: f.rd + pageBytes, data: data, ipa: 0, src: src), .errorInput)  // rd not an RD
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: data, ipa: 1 << 39, src: src), .errorInput)  // outside the PAR
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: data, ipa: 0x800, src: src), .errorInput)  // not 4K-aligned
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: data, ipa: 0x20_0000, src: src), .errorRTT(level: 2))  // no level-3 RTT there
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: data, ipa: 0, src: src), .success)
        expectEqual(f.rmm.state(data), .data)
        expectEqual(f.entry(0, 3), .assigned(.ram, pa: data))  // RAM, though the RIPAS was EMPTY
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: f.delegated(), ipa: 0, src: src), .errorRTT(level: 3))  // assigned already
        expectEqual(f.rmm.realmActivate(rd: f.rd), .success)
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: f.delegated(), ipa: 0x1000, src: src), .errorRealm)  // not NEW
        // DATA_CREATE_UNKNOWN: any realm state, the entry's RIPAS kept.
        let d2 = f.delegated()
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: d2, ipa: 0x1000, src: nil), .success)
        expectEqual(f.entry(0x1000, 3), .assigned(.empty, pa: d2))
        expectEqual(f.realm.rtt.leafCounts[.size4K], 1)  // ASSIGNED_EMPTY is no valid mapping
    }

    @Test func dataDestroyTransitions() {
        var f = Fixture()
        f.tables(0)
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0x2000, top: 0x3000).status, .success)
        let ram = f.delegated(), empty = f.delegated(), unknownRAM = f.delegated()
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: ram, ipa: 0, src: 0x8000_0000), .success)
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: empty, ipa: 0x1000, src: nil), .success)
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: unknownRAM, ipa: 0x2000, src: nil), .success)
        expectEqual(f.entry(0x2000, 3), .assigned(.ram, pa: unknownRAM))
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0x800).status, .errorInput)
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 1 << 39).status, .errorInput)
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0x3000), RMIResult(.errorRTT(level: 3), [.init("top", 0x20_0000)]))  // unassigned: X2 the table's end
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0x20_0000), RMIResult(.errorRTT(level: 2), [.init("top", 0x4000_0000)]))
        let tlbis = f.rmm.stats.tlbis
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0), RMIResult(.success, [.init("pa", ram), .init("top", 0x1000)]))  // next live: 0x1000
        expectEqual(f.entry(0, 3), .unassigned(.destroyed))
        expectEqual(f.rmm.stats.tlbis, tlbis + 1)
        expectEqual(f.rmm.state(ram), .delegated)
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0x1000).status, .success)
        expectEqual(f.entry(0x1000, 3), .unassigned(.empty))
        expectEqual(f.rmm.stats.tlbis, tlbis + 1)
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0x2000).status, .success)
        expectEqual(f.entry(0x2000, 3), .unassigned(.destroyed))
        expectTrue(f.countsHold())
    }

    // MARK: Unprotected mappings

    @Test func mapAndUnmapUnprotected() {
        var f = Fixture()
        let ns: UInt64 = 1 << 39
        expectEqual(f.rmm.rttMapUnprotected(rd: 0, ipa: ns, level: 0, pa: 0), .errorInput)  // level first
        expectEqual(f.rmm.rttMapUnprotected(rd: f.rd + pageBytes, ipa: ns, level: 3, pa: 0x9000_0000), .errorInput)
        expectEqual(f.rmm.rttMapUnprotected(rd: f.rd, ipa: ns, level: 2, pa: 0x9000_1000), .errorInput)  // the descriptor's PA not 2M-aligned
        expectEqual(f.rmm.rttMapUnprotected(rd: f.rd, ipa: ns + 0x1000, level: 2, pa: 0x9000_0000), .errorInput)  // ipa not 2M-aligned
        expectEqual(f.rmm.rttMapUnprotected(rd: f.rd, ipa: 0, level: 1, pa: 0x4000_0000), .errorInput)  // inside the PAR
        expectEqual(f.rmm.rttMapUnprotected(rd: f.rd, ipa: ns, level: 3, pa: 0x9000_0000), .errorRTT(level: 1))
        expectEqual(f.rmm.rttMapUnprotected(rd: f.rd, ipa: ns, level: 1, pa: 0x4000_0000), .success)
        expectEqual(f.entry(ns, 1), .assignedNS(pa: 0x4000_0000))
        expectEqual(f.rmm.rttMapUnprotected(rd: f.rd, ipa: ns, level: 1, pa: 0x4000_0000), .errorRTT(level: 1))  // not UNASSIGNED_NS
        expectEqual(f.rmm.rttUnmapUnprotected(rd: f.rd, ipa: ns + (1 << 30), level: 1), RMIResult(.errorRTT(level: 1), [.init("top", 1 << 40)]))
        expectEqual(f.rmm.rttUnmapUnprotected(rd: f.rd, ipa: 0, level: 1).status, .errorInput)
        expectEqual(f.rmm.rttUnmapUnprotected(rd: f.rd, ipa: ns, level: 1), RMIResult(.success, [.init("top", 1 << 40)]))
        expectEqual(f.entry(ns, 1), .unassignedNS)
        // RTT_CREATE under an ASSIGNED_NS block: 512 of them, refcount 0, the block broken first.
        expectEqual(f.rmm.rttMapUnprotected(rd: f.rd, ipa: ns, level: 1, pa: 0x4000_0000), .success)
        expectEqual(f.create(ns, 2), .success)
        expectEqual(f.entry(ns + 0x20_0000, 2), .assignedNS(pa: 0x4020_0000))
        let blocks: [RTTEntry] = (0..<512).map { (i: Int) -> RTTEntry in .assignedNS(pa: 0x4000_0000 + UInt64(i) << 21) }
        expectEqual(f.wholeTable(ns, level: 2), blocks)
        // An RTT of ASSIGNED_NS entries is destroyed with them (they are not counted).
        expectEqual(f.rmm.rttDestroy(rd: f.rd, ipa: ns, level: 2).status, .success)
        expectEqual(f.entry(ns, 1), .unassignedNS)
        expectTrue(f.countsHold())
    }

    // MARK: RIPAS

    @Test func initRIPAS() {
        var f = Fixture()
        expectEqual(f.rmm.rttInitRIPAS(rd: 0, base: 0x1000, top: 0x1000).status, .errorInput)  // top ≤ base first
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd + pageBytes, base: 0, top: 0x1000).status, .errorInput)
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0x800, top: 0x1000).status, .errorInput)
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: (1 << 39) - 0x1000, top: (1 << 39) + 0x1000).status, .errorInput)  // top past the PAR
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0x1000, top: 0x2000).status, .errorRTT(level: 1))  // base not 1G-aligned at level 1
        // Whole level-1 entries while they fit below top.
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0, top: 0x8000_1000), RMIResult(.success, [.init("top", 0x8000_0000)]))
        expectEqual(f.entry(0, 1), .unassigned(.ram))
        expectEqual(f.entry(0x4000_0000, 1), .unassigned(.ram))
        expectEqual(f.entry(0x8000_0000, 1), .unassigned(.empty))
        f.tables(0x8000_0000)
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: f.delegated(), ipa: 0x8000_2000, src: 0x8000_0000), .success)
        // It stops at the ASSIGNED entry, RAM entries counted as done.
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0x8000_0000, top: 0x8001_0000), RMIResult(.success, [.init("top", 0x8000_2000)]))
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0x8000_2000, top: 0x8001_0000).status, .errorRTT(level: 3))
        expectEqual(f.rmm.realmActivate(rd: f.rd), .success)
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0x8000_3000, top: 0x8001_0000).status, .errorRealm)
    }

    @Test func ripasChangeRoundTrip() {
        var f = Fixture()
        f.tables(0)
        let rec = f.rec()
        let data = f.delegated()
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0, top: 0x4000).status, .success)
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: data, ipa: 0x1000, src: 0x8000_0000), .success)
        expectEqual(f.rmm.realmActivate(rd: f.rd), .success)
        // RSI's own checks, back to the realm.
        expectEqual(f.rmm.rsiIPAStateSet(rec: rec, base: 0, top: 0x1000, ripas: .destroyed, flags: 0) as? RSIResult, RSIResult(.errorInput))
        expectEqual(f.rmm.rsiIPAStateSet(rec: rec, base: 0x800, top: 0x1000, ripas: .empty, flags: 0) as? RSIResult, RSIResult(.errorInput))
        expectEqual(f.rmm.rsiIPAStateSet(rec: rec, base: 0x1000, top: 0x1000, ripas: .empty, flags: 0) as? RSIResult, RSIResult(.errorInput))
        expectEqual(f.rmm.rsiIPAStateSet(rec: rec, base: 0, top: (1 << 39) + 0x1000, ripas: .empty, flags: 0) as? RSIResult, RSIResult(.errorInput))
        expectEqual(f.rmm.rttSetRIPAS(rd: f.rd, rec: rec, base: 0, top: 0x1000).status, .errorInput)  // nothing pending
        expectEqual("\(f.rmm.rsiIPAStateSet(rec: rec, base: 0, top: 0x3000, ripas: .empty, flags: 1))", "RMI_EXIT_RIPAS_CHANGE [0x0-0x3000) RIPAS EMPTY")
        expectEqual(f.rmm.rttSetRIPAS(rd: f.rd, rec: rec, base: 0x3000, top: 0x3000).status, .errorInput)  // top ≤ base
        expectEqual(f.rmm.rttSetRIPAS(rd: f.rd, rec: rec, base: 0x1000, top: 0x3000).status, .errorInput)  // not where the request is
        expectEqual(f.rmm.rttSetRIPAS(rd: f.rd, rec: rec, base: 0, top: 0x4000).status, .errorInput)  // past its top
        let other = f.delegated()  // a REC of another realm
        f.rmm.recs[other] = REC(pa: other, rd: 0x8800_0000, index: 0, runnable: true, aux: [])
        f.rmm.granules[other >> pageShift] = .rec
        expectEqual(f.rmm.rttSetRIPAS(rd: f.rd, rec: other, base: 0, top: 0x1000).status, .errorRec)  // another realm's REC
        let tlbis = f.rmm.stats.tlbis
        expectEqual(f.rmm.rttSetRIPAS(rd: f.rd, rec: rec, base: 0, top: 0x2000), RMIResult(.success, [.init("top", 0x2000)]))
        expectEqual(f.entry(0, 3), .unassigned(.empty))
        expectEqual(f.entry(0x1000, 3), .assigned(.empty, pa: data))
        expectEqual(f.rmm.stats.tlbis, tlbis + 1)
        expectEqual(f.rmm.recs[rec]!.ripasAddr, 0x2000)
        // The host answers on the next entry: the realm reads how far it got; an EMPTY request is always accepted.
        let e = f.rmm.recEnter(rec: rec, response: .reject)
        expectEqual(e.status, .success)
        expectEqual(e.delivered, RSIResult(.success, [.init("base", 0x2000)], response: .accept))
        #expect(!f.rmm.recs[rec]!.awaitingRIPASResponse)
        // RSI_IPA_STATE_GET: how far one RIPAS runs.
        expectEqual(f.rmm.rsiIPAStateGet(rec: rec, base: 0, end: 0x10000), RSIResult(.success, [.init("top", 0x2000)], ripas: .empty))
        expectEqual(f.rmm.rsiIPAStateGet(rec: rec, base: 0x2000, end: 0x3000), RSIResult(.success, [.init("top", 0x3000)], ripas: .ram))
        expectEqual(f.rmm.rsiIPAStateGet(rec: rec, base: 0x2000, end: 0x2000), RSIResult(.errorInput))
        expectEqual(f.rmm.rsiIPAStateGet(rec: rec, base: 1 << 39, end: (1 << 39) + 0x1000), RSIResult(.errorInput))
        // Back to RAM; the host rejects it before finishing: the realm reads RSI_REJECT.
        _ = f.rmm.rsiIPAStateSet(rec: rec, base: 0, top: 0x2000, ripas: .ram, flags: 0)
        expectEqual(f.rmm.rttSetRIPAS(rd: f.rd, rec: rec, base: 0, top: 0x1000).status, .success)
        expectEqual(f.rmm.recEnter(rec: rec, response: .reject).delivered, RSIResult(.success, [.init("base", 0x1000)], response: .reject))
        // DESTROYED changes only with RSI_CHANGE_DESTROYED (flags == 1).
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0x1000).status, .success)  // ASSIGNED_EMPTY → UNASSIGNED_EMPTY
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: data, ipa: 0x1000, src: nil), .success)  // DELEGATED again: UNKNOWN keeps EMPTY
        _ = f.rmm.rsiIPAStateSet(rec: rec, base: 0x3000, top: 0x4000, ripas: .empty, flags: 1)
        expectEqual(f.rmm.rttSetRIPAS(rd: f.rd, rec: rec, base: 0x3000, top: 0x4000).status, .success)
        _ = f.rmm.recEnter(rec: rec, response: .accept)
        expectEqual(f.entry(0x3000, 3), .unassigned(.empty))
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0x3000, top: 0x4000).status, .errorRealm)
        expectTrue(f.countsHold())
    }

    @Test func destroyedNeedsChangeDestroyed() {
        var f = Fixture()
        f.tables(0)
        let rec = f.rec()
        expectEqual(f.rmm.rttInitRIPAS(rd: f.rd, base: 0, top: 0x1000).status, .success)
        expectEqual(f.rmm.dataCreate(rd: f.rd, data: f.delegated(), ipa: 0, src: 0x8000_0000), .success)
        expectEqual(f.rmm.realmActivate(rd: f.rd), .success)
        expectEqual(f.rmm.dataDestroy(rd: f.rd, ipa: 0).status, .success)
        expectEqual(f.entry(0, 3), .unassigned(.destroyed))
        for flags: UInt64 in [0, 2] {
            _ = f.rmm.rsiIPAStateSet(rec: rec, base: 0, top: 0x1000, ripas: .ram, flags: flags)
            expectEqual(f.rmm.rttSetRIPAS(rd: f.rd, rec: rec, base: 0, top: 0x1000).status, .errorRTT(level: 3))
            expectEqual(f.rmm.recEnter(rec: rec, response: .accept).delivered, RSIResult(.success, [.init("base", 0)], response: .accept))
        }
        _ = f.rmm.rsiIPAStateSet(rec: rec, base: 0, top: 0x1000, ripas: .ram, flags: 1)
        expectEqual(f.rmm.rttSetRIPAS(rd: f.rd, rec: rec, base: 0, top: 0x1000).status, .success)
        expectEqual(f.entry(0, 3), .unassigned(.ram))
    }

    /// update_ripas, every state × target × flag.
    @Test func updateRIPASTable() {
        let pa: UInt64 = 0x9000_0000
        for cd in [false, true] {
            func u(_ e: RTTEntry, _ t: RIPAS) -> RTTEntry? { RMM.updateRIPAS(e, t, changeDestroyed: cd)?.0 }
            expectEqual(u(.unassigned(.empty), .ram), .unassigned(.ram))
            expectEqual(u(.unassigned(.ram), .ram), .unassigned(.ram))
            expectEqual(u(.unassigned(.destroyed), .ram), (cd ? .unassigned(.ram) : nil))
            expectEqual(u(.assigned(.empty, pa: pa), .ram), .assigned(.ram, pa: pa))
            expectEqual(u(.assigned(.ram, pa: pa), .ram), .assigned(.ram, pa: pa))
            expectEqual(u(.assigned(.destroyed, pa: pa), .ram), (cd ? .assigned(.ram, pa: pa) : nil))
            expectEqual(u(.unassigned(.empty), .empty), .unassigned(.empty))
            expectEqual(u(.unassigned(.ram), .empty), .unassigned(.empty))
            expectEqual(u(.unassigned(.destroyed), .empty), (cd ? .unassigned(.empty) : nil))
            expectEqual(u(.assigned(.empty, pa: pa), .empty), .assigned(.empty, pa: pa))
            expectEqual(u(.assigned(.ram, pa: pa), .empty), .assigned(.empty, pa: pa))
            expectEqual(u(.assigned(.destroyed, pa: pa), .empty), (cd ? .assigned(.empty, pa: pa) : nil))
            expectEqual(u(.unassignedNS, .ram), nil)
            expectEqual(u(.assignedNS(pa: pa), .empty), nil)
            expectEqual(u(.table(3), .ram), nil)
            expectTrue(RMM.updateRIPAS(.assigned(.ram, pa: pa), .empty, changeDestroyed: cd)!.tlbi)
        }
    }

    /// Every RTT entry state survives the round trip through its descriptor.
    @Test func entryEncodings() {
        let all: [RTTEntry] = [.unassigned(.empty), .unassigned(.ram), .unassigned(.destroyed), .unassignedNS,
                               .assigned(.empty, pa: 0x9000_1000), .assigned(.ram, pa: 0x9000_2000), .assigned(.destroyed, pa: 0x9000_3000),
                               .assignedNS(pa: 0x9000_4000), .table(7)]
        for e in all { #expect(RTTEntry(e.descriptor) == e) }
        expectEqual(Set(all.map(\.descriptor)).count, all.count)
        expectEqual(all.filter(\.isRefcounted).count, 4)
        expectEqual(all.filter(\.isLive).count, 5)
    }
}
