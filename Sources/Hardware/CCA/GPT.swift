import PageTables

/// A granule's protection information: which physical address space may access it.
/// TF-A include/lib/gpt_rme/gpt_rme.h (v2.12.0) GPT_GPI_*; SA, NSP and NSO from later
/// releases (FEAT_RME_GDI, FEAT_RME_GPC2), which the model's GPCCR leaves disabled.
public enum GPI: UInt64, CaseIterable, Sendable, CustomStringConvertible {
    case noAccess = 0x0, sa = 0x4, nsp = 0x5, secure = 0x8, ns = 0x9, root = 0xA, realm = 0xB, nso = 0xD, any = 0xF

    public var description: String {
        switch self {
        case .noAccess: "NO_ACCESS"
        case .sa: "SA"
        case .nsp: "NSP"
        case .secure: "SECURE"
        case .ns: "NS"
        case .root: "ROOT"
        case .realm: "REALM"
        case .nso: "NSO"
        case .any: "ANY"
        }
    }
}

/// The physical address space an access is made in (what the granule protection check
/// compares with the GPI: QEMU target/arm/ptw.c granule_protection_check's `pspace`), with
/// ARMSecuritySpace's numbering (GPI & 3 for SECURE, NS, ROOT, REALM).
public enum PhysicalAddressSpace: UInt64, CaseIterable, Sendable, CustomStringConvertible {
    case secure = 0, nonSecure = 1, root = 2, realm = 3

    public var description: String { ["secure", "ns", "root", "realm"][Int(rawValue)] }
}

/// How a granule protection check ended. QEMU target/arm/ptw.c granule_protection_check,
/// target/arm/tcg/tlb_helper.c report_as_gpc_exception.
public enum GPCResult: Hashable, Sendable, Outcome {
    case ok
    /// GPCF_Fail: the GPI forbids the access (a Granule Protection Fault), at the GPT level
    /// the GPI was read from.
    case gpf(level: Int)
    /// GPCF_Walk: a bad descriptor or a reserved GPI; always a GPC exception taken to EL3.
    case walkFault(level: Int)
    /// GPCF_AddressSize: a Secure, Realm or Root access at or above the protected physical
    /// size; a GPC exception taken to EL3.
    case addressSize

    public var kind: OutcomeKind { self == .ok ? .success : .fault }
    public var description: String {
        switch self {
        case .ok: "ok"
        case .gpf(let l): "GPF (granule protection fault, GPT level \(l))"
        case .walkFault(let l): "GPT walk fault at level \(l): GPC exception to EL3"
        case .addressSize: "GPC address size fault: GPC exception to EL3"
        }
    }
}

/// A refused GPT transition, as TF-A's gpt_delegate_pas/gpt_undelegate_pas return it
/// (-EINVAL, -EPERM) and the RMM dispatcher maps it for the RMM (rmmd_main.c
/// gpt_to_gts_error: E_RMM_BAD_ADDR, E_RMM_BAD_PAS).
public enum GPTError: Error, Hashable, Sendable, CustomStringConvertible {
    case invalid, notPermitted
    public var description: String { self == .invalid ? "-EINVAL (E_RMM_BAD_ADDR)" : "-EPERM (E_RMM_BAD_PAS)" }
}

/// Who asks EL3 for a transition: the security state of the caller.
public enum GPTCaller: Sendable { case secure, realm, nonSecure }

/// What the GPT's maintenance cost so far: TLBI RPALOS by size, data cache cleans to the
/// point of physical aliasing, shatters and fuses by block size.
public struct GPTStats: Hashable, Sendable {
    public var tlbiGranule: UInt64 = 0
    public var tlbi2M: UInt64 = 0
    public var tlbi32M: UInt64 = 0
    public var tlbi512M: UInt64 = 0
    public var popaFlushes: UInt64 = 0
    public var shatters: [UInt64] = [0, 0, 0]  // 2M, 32M, 512M
    public var fuses: [UInt64] = [0, 0, 0]
    public var transitions: UInt64 = 0
}

/// The granule protection table as TF-A's lib/gpt_rme builds and changes it (v2.12.0,
/// 4ec2948f), with 4K granules (PGS) and 1 GB L0 regions (L0GPTSZ):
/// - L0: one 64-bit descriptor per 1 GB; a block (type 1, GPI in [7:4]) or a table (type
///   3; the model keeps its L1 table's number where the hardware has its address, [51:12]).
/// - L1: 16384 entries per table, each 16 GPIs of 4 bits (64 KB at 4K granules), or a
///   contiguous descriptor (type 1, GPI in [7:4], Contig in [9:8]: 2M, 32M, 512M)
///   repeated over every entry of its block (RME_GPT_MAX_BLOCK 512).
/// At boot, every 1 GB region with RAM gets an L1 table: RAM is NS, filled with the largest
/// contiguous descriptors that are aligned and fit (fill_l1_tbl, as fixed in v2.14); the
/// rest of the region is ANY. Regions without RAM stay L0 blocks of ANY and cannot be
/// transitioned. docs/cca.md.
public struct GPT: Sendable {
    /// The protected physical size: addresses at or above 2^ppsBits are outside the GPT.
    public let ppsBits: Int
    public internal(set) var l0: [UInt64]
    public internal(set) var l1: [[UInt64]] = []
    public internal(set) var stats = GPTStats()

    public static let l0Shift = 30
    public static let entriesPerL1 = 1 << (l0Shift - 12 - 4)
    static let entry2M = 32, entry32M = 512, entry512M = 8192

    /// The GPT for a machine whose RAM is `ram`, its PPS `ppsBits` or, by default, the
    /// smallest architectural size (32, 36, 40, 42, 44, 48 or 52 bits) strictly above the end
    /// of RAM (platforms fix it above their DRAM: TF-A's FVP uses 64 GB), so TF-A's refusal
    /// of the last granule below the PPS never falls on RAM. RAM must end below 2^52 (the
    /// architecture's limit; the platform refuses more).
    public init(ram: [Range<UInt64>], ppsBits: Int? = nil) {
        let end = ram.map(\.upperBound).max() ?? 0
        self.ppsBits = ppsBits ?? [32, 36, 40, 42, 44, 48, 52].first { end < 1 << UInt64($0) } ?? 52
        precondition(end <= 1 << UInt64(self.ppsBits), "RAM past the protected physical size")
        l0 = Array(repeating: Self.l0Block(.any), count: 1 << (self.ppsBits - Self.l0Shift))
        for r in ram {
            var base = r.lowerBound & ~(pageBytes - 1)
            let end = r.upperBound & ~(pageBytes - 1)
            while base < end {
                let region = base >> UInt64(Self.l0Shift), regionEnd = min(end, (region + 1) << UInt64(Self.l0Shift))
                if l0[Int(region)] & 0xF != 3 {
                    l0[Int(region)] = 3 | UInt64(l1.count) << 12
                    l1.append(Array(repeating: Self.granules(.any), count: Self.entriesPerL1))
                }
                fill(Int(l0[Int(region)] >> 12), base, regionEnd, .ns)
                base = regionEnd
            }
        }
    }

    /// An L0 block descriptor (GPT_L0_BLK_DESC).
    public static func l0Block(_ g: GPI) -> UInt64 { 1 | g.rawValue << 4 }
    /// An L1 Granules descriptor with every granule `g` (GPT_BUILD_L1_DESC).
    public static func granules(_ g: GPI) -> UInt64 { g.rawValue &* 0x1111_1111_1111_1111 }
    /// An L1 contiguous descriptor over 2M (contig 1), 32M (2) or 512M (3).
    public static func contiguous(_ g: GPI, _ contig: UInt64) -> UInt64 { 1 | g.rawValue << 4 | contig << 8 }

    /// The L1 entry of `pa` in its table: PA[29:16] (GPT_L1_IDX at 4K granules).
    static func entryIndex(_ pa: UInt64) -> Int { Int((pa >> 16) & UInt64(entriesPerL1 - 1)) }

    /// fill_l1_tbl over [base, end) of one L1 table with `gpi`.
    mutating func fill(_ t: Int, _ start: UInt64, _ end: UInt64, _ gpi: GPI) {
        var base = start
        while base < end {
            let left = end - base
            if base & ((2 << 20) - 1) == 0 && left >= 2 << 20 {
                let (bytes, contig): (UInt64, UInt64) = base & ((512 << 20) - 1) == 0 && left >= 512 << 20 ? (512 << 20, 3)
                    : base & ((32 << 20) - 1) == 0 && left >= 32 << 20 ? (32 << 20, 2) : (2 << 20, 1)
                let first = Self.entryIndex(base)
                for k in first..<first + Int(bytes >> 16) { l1[t][k] = Self.contiguous(gpi, contig) }
                base += bytes
            } else {
                let stop = min(end, (base | ((2 << 20) - 1)) + 1)
                while base < stop {
                    setNibble(t, base, gpi)
                    base += pageBytes
                }
            }
        }
    }

    /// write_gpt: the 4-bit GPI of `pa`'s granule in its L1 entry (PA[15:12] picks the nibble).
    mutating func setNibble(_ t: Int, _ pa: UInt64, _ gpi: GPI) {
        let k = Self.entryIndex(pa), shift = ((pa >> 12) & 15) << 2
        l1[t][k] = l1[t][k] & ~(0xF << shift) | gpi.rawValue << shift
    }

    /// The raw descriptor that gives `pa` its GPI (the L1 entry, or the L0 descriptor of a
    /// block), 0 outside the table: what the explorer folds into its state key.
    public func descriptor(_ pa: UInt64) -> UInt64 {
        guard pa >> UInt64(ppsBits) == 0 else { return 0 }
        let d0 = l0[Int(pa >> UInt64(Self.l0Shift))]
        guard d0 & 0xF == 3, Int(d0 >> 12) < l1.count else { return d0 }
        return l1[Int(d0 >> 12)][Self.entryIndex(pa)]
    }

    /// How many granules of the 2M region at `pa` a Non-secure access may not touch, from
    /// the region's 32 entries (a contiguous descriptor or an L0 block answers for all).
    public func refusedGranules(in2M pa: UInt64) -> Int {
        let base = pa & ~((2 << 20) - 1)
        guard base >> UInt64(ppsBits) == 0 else { return 0 }
        let d0 = l0[Int(base >> UInt64(Self.l0Shift))]
        guard d0 & 0xF == 3, Int(d0 >> 12) < l1.count else { return check(base, .nonSecure) == .ok ? 0 : 512 }
        let t = Int(d0 >> 12), first = Self.entryIndex(base)
        var n = 0
        for k in first..<first + Self.entry2M {
            let e = l1[t][k]
            if e & 0xF == 1 {
                n += check(base + UInt64(k - first) << 16, .nonSecure) == .ok ? 0 : 16
                continue
            }
            for g in 0..<16 where ![GPI.ns.rawValue, GPI.any.rawValue].contains((e >> (UInt64(g) << 2)) & 0xF) { n += 1 }
        }
        return n
    }

    /// The GPI of the granule at `pa` (read_gpi), nil for a reserved encoding, and the
    /// level it was read at.
    /// A descriptor the walk cannot use (an L0 type other than block or table, RES0 bits
    /// set, a contiguous descriptor with Contig 0) reads as nil: a walk fault.
    public func gpi(_ pa: UInt64) -> (gpi: GPI?, level: Int) {
        guard pa >> UInt64(ppsBits) == 0 else { return (nil, 0) }  // outside the table
        let d0 = l0[Int(pa >> UInt64(Self.l0Shift))]
        if d0 & 0xF == 1 { return (d0 >> 8 == 0 ? GPI(rawValue: (d0 >> 4) & 0xF) : nil, 0) }
        guard d0 & 0xF == 3, Int(d0 >> 12) < l1.count else { return (nil, 0) }
        let e = l1[Int(d0 >> 12)][Self.entryIndex(pa)]
        if e & 0xF == 1 { return (e >> 10 == 0 && (e >> 8) & 3 != 0 ? GPI(rawValue: (e >> 4) & 0xF) : nil, 1) }
        return (GPI(rawValue: (e >> (((pa >> 12) & 15) << 2)) & 0xF), 1)
    }

    /// The granule protection check of an access to `pa` made in `pas`, in QEMU's order
    /// (granule_protection_check; GPCCR valid and enabled, NSO, SA and NSP disabled): at or
    /// above the PPS a Non-secure access passes and any other is an address-size fault; a
    /// bad descriptor or a reserved GPI is a walk fault; NO_ACCESS fails; ANY passes;
    /// SECURE, NS, ROOT and REALM pass when the access's PAS is theirs (GPI & 3).
    public func check(_ pa: UInt64, _ pas: PhysicalAddressSpace) -> GPCResult {
        if pa >> UInt64(ppsBits) != 0 { return pas == .nonSecure ? .ok : .addressSize }
        let (g, level) = gpi(pa)
        switch g {
        case .noAccess: return .gpf(level: level)
        case .any: return .ok
        case .secure, .ns, .root, .realm: return pas.rawValue == g!.rawValue & 3 ? .ok : .gpf(level: level)
        default: return .walkFault(level: level)  // reserved, or NSO/SA/NSP with their features off
        }
    }

    /// The L1 table and entry of `pa`, or -EINVAL when its L0 descriptor is not a table
    /// (get_gpi_params: only L1 entries can be transitioned).
    func l1Entry(_ pa: UInt64) -> Result<(Int, Int), GPTError> {
        let d0 = l0[Int(pa >> UInt64(Self.l0Shift))]
        guard d0 & 0xF == 3 else { return .failure(.invalid) }
        return .success((Int(d0 >> 12), Self.entryIndex(pa)))
    }

    /// The address checks both transitions start with: one 4K granule, aligned, below the
    /// PPS with room to spare (TF-A tests base + size >= 2^PPS, so the last granule below
    /// the PPS is refused).
    func checkAddress(_ base: UInt64) -> GPTError? {
        guard base & (pageBytes - 1) == 0, base < UInt64.max - pageBytes, (base + pageBytes) >> UInt64(ppsBits) == 0 else { return .invalid }
        return nil
    }

    /// gpt_delegate_pas (v2.12.0): one granule from NS to the caller's PAS (REALM for the
    /// Realm world, SECURE for the Secure one). The address checks (-EINVAL), the caller
    /// (-EINVAL unless Realm or Secure), the L0 table (-EINVAL), the GPI NS (-EPERM); then a
    /// contiguous block shattered, the target alias cleaned to PoPA, the GPI written,
    /// TLBI RPALOS of the granule, the NS alias cleaned, and the block fused again if
    /// uniform.
    public mutating func delegate(_ base: UInt64, caller: GPTCaller = .realm) -> GPTError? {
        if let e = checkAddress(base) { return e }
        let target: GPI
        switch caller {
        case .realm: target = .realm
        case .secure: target = .secure
        case .nonSecure: return .invalid
        }
        let t: Int, k: Int
        switch l1Entry(base) { case .failure(let e): return e; case .success(let x): (t, k) = x }
        guard gpi(base).gpi == .ns else { return .notPermitted }
        if l1[t][k] & 0xF == 1 { shatter(t, base, .ns) }
        stats.popaFlushes += 1
        setNibble(t, base, target)
        stats.tlbiGranule += 1
        stats.popaFlushes += 1
        stats.transitions += 1
        if l1[t][k] == Self.granules(target) { fuse(t, base, target) }
        return nil
    }

    /// gpt_undelegate_pas (v2.12.0): one granule from the caller's PAS back to NS, through
    /// NO_ACCESS. The address checks and the L0 table (-EINVAL), the GPI the caller's own
    /// (-EPERM, an NS caller included); then a contiguous block shattered, NO_ACCESS
    /// written, TLBI RPALOS, both aliases cleaned to PoPA, NS written, TLBI RPALOS, and the
    /// block fused again if uniform.
    public mutating func undelegate(_ base: UInt64, caller: GPTCaller = .realm) -> GPTError? {
        if let e = checkAddress(base) { return e }
        let t: Int, k: Int
        switch l1Entry(base) { case .failure(let e): return e; case .success(let x): (t, k) = x }
        let current = gpi(base).gpi
        guard (caller == .realm && current == .realm) || (caller == .secure && current == .secure), let current else { return .notPermitted }
        if l1[t][k] & 0xF == 1 { shatter(t, base, current) }
        setNibble(t, base, .noAccess)
        stats.tlbiGranule += 1
        stats.popaFlushes += 2
        setNibble(t, base, .ns)
        stats.tlbiGranule += 1
        stats.transitions += 1
        if l1[t][k] == Self.granules(.ns) { fuse(t, base, .ns) }
        return nil
    }

    /// shatter_block: the contiguous block holding `base` split so that its L1 entry holds
    /// Granules descriptors: a 2M block wholly; a 32M block as its 2M sub-block holding
    /// `base` in Granules descriptors and the other fifteen as 2M contiguous ones; a 512M
    /// block as that 32M shatter for the 32M sub-block and the other fifteen as 32M
    /// contiguous ones. One TLBI RPALOS of the original block's size.
    mutating func shatter(_ t: Int, _ base: UInt64, _ g: GPI) {
        let level = Int((l1[t][Self.entryIndex(base)] >> 8) & 3)
        precondition(level >= 1, "shatter of an entry that is not a contiguous descriptor")
        let k = Self.entryIndex(base)
        func shatter2M(_ k: Int) {
            let first = k & ~(Self.entry2M - 1)
            for i in first..<first + Self.entry2M { l1[t][i] = Self.granules(g) }
        }
        func shatter32M(_ k: Int) {
            let first = k & ~(Self.entry32M - 1)
            for sub in stride(from: first, to: first + Self.entry32M, by: Self.entry2M) where sub != k & ~(Self.entry2M - 1) {
                for i in sub..<sub + Self.entry2M { l1[t][i] = Self.contiguous(g, 1) }
            }
            shatter2M(k)
        }
        switch level {
        case 1:
            shatter2M(k)
            stats.tlbi2M += 1
        case 2:
            shatter32M(k)
            stats.tlbi32M += 1
        default:  // 3: 512M
            let first = k & ~(Self.entry512M - 1)
            for sub in stride(from: first, to: first + Self.entry512M, by: Self.entry32M) where sub != k & ~(Self.entry32M - 1) {
                for i in sub..<sub + Self.entry32M { l1[t][i] = Self.contiguous(g, 2) }
            }
            shatter32M(k)
            stats.tlbi512M += 1
        }
        stats.shatters[level - 1] += 1
    }

    /// fuse_block: once the 64 KB entry just written is uniform, its 2M block fused when all
    /// 32 entries are that Granules descriptor; then 32M when the first entry of each of the
    /// sixteen 2M blocks is the 2M contiguous descriptor (check_fuse_32mb writes this
    /// block's first entry so before looking); then 512M likewise. No TLBI, no cache
    /// maintenance: the GPIs do not change.
    mutating func fuse(_ t: Int, _ base: UInt64, _ g: GPI) {
        let k = Self.entryIndex(base)
        var first = k & ~(Self.entry2M - 1), size = Self.entry2M
        guard (first..<first + size).allSatisfy({ l1[t][$0] == Self.granules(g) }) else { return }
        // Up a size while the parent's sub-blocks all start with this size's descriptor.
        for (contig, parentSize) in [(UInt64(1), Self.entry32M), (2, Self.entry512M)] {
            let c = Self.contiguous(g, contig), parent = k & ~(parentSize - 1)
            l1[t][first] = c
            guard stride(from: parent, to: parent + parentSize, by: size).allSatisfy({ l1[t][$0] == c }) else {
                for i in first..<first + size { l1[t][i] = c }
                stats.fuses[Int(contig) - 1] += 1
                return
            }
            (first, size) = (parent, parentSize)
        }
        for i in first..<first + size { l1[t][i] = Self.contiguous(g, 3) }
        stats.fuses[2] += 1
    }
}
