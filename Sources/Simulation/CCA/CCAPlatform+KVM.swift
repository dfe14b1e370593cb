import GuestKernel
import Hardware
import HostKernel
import Hypervisor
import PageTables

/// KVM's realm backend on the CCA platform: each guest's `KVMRealm`, the host pages it
/// takes, and the realm's own accesses and RIPAS changes as KVM sees them.
extension CCAPlatform {
    /// Fills KVM's page cache with `n` host pages.
    mutating func topUp(_ n: Int) {
        while firmware.pool.count < n, let g = allocGranules() { firmware.pool.append(g) }
    }

    /// Runs `body` on guest `i`'s KVM backend, changed where it is, with `need` host pages in
    /// its cache; the pages KVM freed go back to the host's pool, and the raw
    /// steps see the realm's RD and RECs. Nil when KVM has no realm for the guest.
    mutating func withKVM<R>(_ i: Int, need: Int = 4, _ body: (inout KVMRealm, inout RealmFirmware) -> R) -> R? {
        precondition(kvm.indices.contains(i), "guest \(i) past the platform's \(kvm.count)")  // the buffer's subscript checks nothing
        guard kvm.withUnsafeBufferPointer({ $0[i] != nil }) else { return nil }
        topUp(need)
        // KVM's realm changed where it is (taking it out of the array and back moves it whole).
        let (r, live) = kvm.withUnsafeMutableBufferPointer { b -> (R, (UInt64, [UInt64])?) in
            let r = body(&b[i]!, &firmware)
            let s = b[i].unsafelyUnwrapped.state
            return (r, s != .none && s != .dead ? (b[i].unsafelyUnwrapped.rd, b[i].unsafelyUnwrapped.recs) : nil)
        }
        metaFree += firmware.freed
        firmware.freed.removeAll(keepingCapacity: true)
        if let (d, c) = live {
            rd[i] = d
            recs[i] = c
        }
        return r
    }

    /// The realm launched as KVM launches it (the VMM's KVM_CREATE_VM, KVM_ARM_RMI_POPULATE
    /// of `populate` bytes of image, the first KVM_RUN): created (its RD and start tables
    /// delegated), populated, activated (RECs, INIT_RIPAS over its memory). A guest whose
    /// realm the raw steps made is -EEXIST; one KVM launched already only runs on.
    mutating func launch(_ i: Int, populate: UInt64) -> any Outcome {
        let g = guests[i]
        if kvm[i] == nil {
            if rd[i] != nil { return KVMRealmOutcome.errno(.EEXIST) }
            let bits = Self.ipaBits(memory: g.memory)
            var k = KVMRealm(placement: g.placement, size: g.memory, ipaBits: bits, vmid: UInt64(g.asid), vcpus: g.vcpus)
            k.foldRTTs = foldRTTs
            let n = k.params.rttNumStart
            guard let pgd = allocGranules(n, align: UInt64(n) * pageBytes) else { return KVMRealmOutcome.errno(.ENOMEM) }
            kvm[i] = k
            let r = withKVM(i) { k, fw in k.create(&fw, rttBase: pgd) }!
            guard r == .ok else {
                kvm[i] = nil
                // The PGD back to the host, but for a page EL3 would not give back.
                for k in 0..<UInt64(n) where rmm.state(pgd + k * pageBytes) == .ns { metaFree.append(pgd + k * pageBytes) }
                return r
            }
        }
        let source = ram.first?.lowerBound ?? 0
        // KVM's page cache: the RECs and their auxiliary granules, the populate's RTTs (one
        // per 2M, and the levels above), INIT_RIPAS's edges.
        let up: any Outcome = withKVM(i, need: 8 + g.vcpus * (1 + RMM.recAuxGranules) + Int(min(populate, g.memory) >> 21) + 2) { k, fw in
            guard k.state == .new else { return k.state == .active ? .ok : .errno(.EINVAL) }
            if populate > 0 {
                let r = k.populate(&fw, bytes: populate, source: source)
                guard r == .ok else { return r }
            }
            return k.activate(&fw)
        } ?? KVMRealmOutcome.errno(.EINVAL)
        guard up.kind == .success, !booted[i] else { return up }
        booted[i] = true
        return bootRealmKernel(i, memory: g.memory)
    }

    // KVM's realm is read through the array's buffer: `kvm[i]?.field`, or a KVMRealm passed
    // to a closure, copies the whole realm first, arrays and all.

    /// The RD and top IPA bit of guest `i`'s realm if KVM runs it.
    @inline(__always) func running(_ i: Int) -> (rd: UInt64, topBit: UInt64)? {
        kvm.withUnsafeBufferPointer { b in
            i < b.count && b[i]?.state == .active ? (b[i].unsafelyUnwrapped.rd, b[i].unsafelyUnwrapped.topBit) : nil
        }
    }

    /// The REC of vCPU `vcpu` of guest `i`'s realm, if KVM made it.
    @inline(__always) func kvmREC(_ i: Int, vcpu: Int) -> UInt64? {
        kvm.withUnsafeBufferPointer { b in
            guard i < b.count, let n = b[i]?.recs.count, vcpu < n else { return nil }
            return b[i].unsafelyUnwrapped.recs[vcpu]
        }
    }

    /// The top IPA bit of guest `i`'s realm, if KVM has one.
    @inline(__always) func kvmTopBit(_ i: Int) -> UInt64? { kvm.withUnsafeBufferPointer { i < $0.count ? $0[i]?.topBit : nil } }

    /// The realm's access to `ipa` on a vCPU, through its stage 2 (the RTT): a valid entry
    /// completes; an IPA whose RIPAS is EMPTY, or past the IPA space, takes the SEA the RMM
    /// injects; anything else exits to KVM, which maps it (or answers
    /// KVM_EXIT_MEMORY_FAULT), and the realm tries again. RMM runtime/core/exit.c
    /// handle_data_abort.
    mutating func realmAccess(_ i: Int, ipa: UInt64) -> any Outcome {
        guard let (rd, topBit) = running(i) else { return RealmNotRunning(reason: "KVM has not launched it") }
        guard ipa < topBit << 1 else { return KVMRealmOutcome.sea(ipa: ipa) }
        let unprotected = ipa & topBit != 0
        for attempt in 0..<2 {
            guard let e = rmm.walk(rd: rd, ipa, to: 3)?.entry else { return RealmNotRunning(reason: "its realm was destroyed under KVM") }
            switch e {
            case .assigned(.ram, _) where !unprotected, .assignedNS where unprotected: return OK()
            case .unassigned(.empty), .assigned(.empty, _): if !unprotected { return KVMRealmOutcome.sea(ipa: ipa) }
            case .unassigned(.destroyed), .assigned(.destroyed, _): if attempt > 0 { return KVMRealmOutcome.destroyed(ipa: ipa) }
            default: break
            }
            let r = withKVM(i) { k, fw in k.fault(&fw, ipa: ipa) }!
            guard r == .ok else { return r }
        }
        return KVMRealmOutcome.errno(.EFAULT)
    }

    /// The realm's kernel changes the RIPAS of [base, top) (rsi_set_memory_range on vCPU
    /// `vcpu`), each RSI_IPA_STATE_SET exit handled by KVM and the VMM (attributes
    /// converted, RTT_SET_RIPAS, REC_ENTER with the answer).
    mutating func realmSetRIPAS(_ i: Int, vcpu: Int, base: UInt64, top: UInt64, ripas: RIPAS, flags: UInt64) -> any Outcome {
        guard let k = kvm[i], k.state == .active, vcpu < k.recs.count else { return RealmNotRunning(reason: "KVM has not launched it") }
        let failure = GuestKernel.rsiSetMemoryRange(base, top, ripas, flags: flags) { rsiCall(i, vcpu: vcpu, $0, $1, $2, $3) }
        return failure ?? OK()
    }

    /// KVM_DESTROY_VM for guest `i`'s realm (`KVMRealm.destroy`): the first failure, or ok;
    /// what could not be undelegated is leaked.
    mutating func destroyRealm(_ i: Int) -> any Outcome {
        guard kvm[i] != nil else { return KVMRealmOutcome.errno(.EINVAL) }
        let r = withKVM(i) { k, fw in k.destroy(&fw) }!
        retired.add(kvm[i]!.stats)
        kvm[i] = nil
        booted[i] = false
        userPTEs[i] = [:]
        rd[i] = nil
        recs[i] = []
        return r
    }

    /// The sum of one KVM counter over the realms, destroyed ones included.
    func kvmTotal(_ counter: KeyPath<KVMRealmStats, UInt64>) -> UInt64 {
        kvm.reduce(retired[keyPath: counter]) { $0 + ($1?.stats[keyPath: counter] ?? 0) }
    }

    static let kvmSteps: [StepDefinition] = [
        realmCall("realm-launch", "KVM launches the realm: created (RD and start tables delegated), its first populate bytes loaded (DATA_CREATE), on the first run a REC per vCPU, INIT_RIPAS over its memory and REALM_ACTIVATE", [
            Parameter("populate", .address(), default: "0", "bytes of initial image KVM_ARM_RMI_POPULATE loads from IPA 0"),
        ]) { a in
            let bytes = a.number("populate")
            return { p, _, i, _ in p.launch(i, populate: bytes) }
        },
        realmCall("realm-access", "the realm touches ipa: a valid stage-2 entry completes; RIPAS EMPTY is an SEA; otherwise KVM maps it (DELEGATE and DATA_CREATE_UNKNOWN, or RTT_MAP_UNPROTECTED) or exits to the VMM", [ipa]) { a in
            let ipa = a.number("ipa")
            return { p, _, i, _ in p.realmAccess(i, ipa: ipa) }
        },
        realmCall("realm-set-ripas", "the realm's kernel asks for a RIPAS (rsi_set_memory_range), KVM and the VMM handling each exit: the attributes converted, the memory unmapped, RTT_SET_RIPAS, REC_ENTER", [
            ipa, top, Parameter("ripas", .choice(["empty", "ram"]), default: "ram", "the RIPAS asked for"),
            Parameter("flags", .count(0...1), default: "1", "1: RSI_CHANGE_DESTROYED (set_memory_*), 0: RSI_NO_CHANGE_DESTROYED (boot)"),
            Parameter("vcpu", .count(0...511), default: "0", "the vCPU (its REC)"),
        ]) { a in
            let base = a.number("ipa"), top = top(a), flags = a.number("flags"), vcpu = Int(a.number("vcpu")), ripas: RIPAS = a.text("ripas") == "empty" ? .empty : .ram
            return { p, _, i, _ in p.realmSetRIPAS(i, vcpu: vcpu, base: base, top: top, ripas: ripas, flags: flags) }
        },
        realmCall("destroy", "KVM_DESTROY_VM for a realm: everything unmapped, RTTs destroyed, RECs destroyed, REALM_DESTROY, every granule undelegated (one EL3 or the RMM refuses is leaked)", []) { _ in
            { p, _, i, _ in p.destroyRealm(i) }
        },
    ]
}
