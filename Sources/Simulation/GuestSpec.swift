import Hardware
import HostKernel
import Hypervisor
import PageTables

/// A guest as a scenario defines it: its hardware identifier (the ASID on SEV-SNP), its
/// memory placed linearly at host physical `[placement, placement + memory)` (KVM's one
/// guest_memfd memslot), its vCPUs and backing. `npt` is the nested page size the hardware
/// steps that bypass KVM (guest-read, pvalidate …) assume; through KVM the stage-2 table's
/// real leaves decide it.
public struct GuestSpec: Hashable, Sendable {
    public let name: String
    public let asid: UInt32
    public let memory: UInt64
    public let placement: UInt64
    public let npt: PageSize
    public let vcpus: Int
    /// The guest_memfd folio size KVM backs private memory with.
    public let backing: GmemBacking
    /// How the guest's own kernel is configured: the scenario's `guest.` policies, then the
    /// guest entry's own.
    public let kernelConfig: KernelConfig
    /// pKVM: a protected VM (memory donated, not shared; kvm_vm_is_protected).
    public var isProtected = false

    /// The VM KVM creates for this guest.
    public var vmConfig: VMConfig {
        VMConfig(name: name, id: asid, vcpus: vcpus, memory: memory, placement: placement, backing: backing)
    }

    /// The SPA that backs `gpa`.
    public func spa(_ gpa: UInt64) -> UInt64 { placement + gpa }

    /// Reads the `guests:` list of an architecture whose guests are only VMs (pKVM): a name
    /// and whether it is protected; each gets the next identifier of `ids` (pKVM's handles).
    static func readVMs(_ field: Field, ids: ClosedRange<UInt64>, keys: [String] = ["name", "protected"], targets: PolicyTargets) throws(ScenarioError) -> [GuestSpec] {
        var guests: [GuestSpec] = []
        for item in try field.sequence() {
            let f = try item.mapping()
            try f.only(keys)
            let name = try f.required("name").text()
            if guests.contains(where: { $0.name == name }) { throw f.keyError("name", "guest '\(name)' is defined twice") }
            guard UInt64(guests.count) < UInt64(ids.count) else { throw item.error("at most \(ids.count) guests") }
            var g = GuestSpec(name: name, asid: UInt32(ids.lowerBound) + UInt32(guests.count), memory: 0, placement: 0, npt: .size4K,
                              vcpus: 1, backing: .gmem4K, kernelConfig: targets.guest)
            g.isProtected = try f["protected"]?.bool() ?? false
            guests.append(g)
        }
        return guests
    }

    /// Reads the `guests:` list: names and identifiers unique, memory in RAM, placements
    /// that do not overlap (each error names the ranges involved). A guest may override the
    /// scenario's `guest.` policies for itself (none exist yet).
    static func readAll(_ field: Field, memory ram: PhysicalMemory, ids: ClosedRange<UInt64>, guestSlots: [PolicySlot],
                        targets: PolicyTargets) throws(ScenarioError) -> [GuestSpec] {
        var guests: [GuestSpec] = []
        for item in try field.sequence() {
            let f = try item.mapping()
            try f.only(["name", "asid", "memory", "placement", "npt", "vcpus", "backing"] + guestSlots.map(\.key))
            let name = try f.required("name").text()
            if guests.contains(where: { $0.name == name }) { throw f.keyError("name", "guest '\(name)' is defined twice") }
            let asidField = try f.required("asid")
            let asid = UInt32(try asidField.number(in: ids, what: "asid"))
            if let other = guests.first(where: { $0.asid == asid }) { throw asidField.error("ASID \(asid) is already \(other.name)'s") }
            let npt = PageSize(level: Int(try f["npt"]?.choice(["4K", "2M"], what: "npt page size") == "2M" ? 2 : 1))!
            let vcpus = Int(try f["vcpus"]?.number(in: 1...512, what: "vcpus") ?? 1)
            let backing = GmemBacking(rawValue: try f["backing"]?.choice(GmemBacking.allCases.map(\.rawValue), what: "backing") ?? GmemBacking.gmem2M.rawValue)!
            let memField = try f.required("memory")
            let size = try memField.number()
            guard size > 0, size & (npt.bytes - 1) == 0 else {
                throw memField.error("memory \(ByteSize.format(size)) must be a non-zero multiple of the \(npt) nested page size")
            }
            let placementField = try f.required("placement")
            let placement = try placementField.mapping()
            try placement.only(["pa"])
            let paField = try placement.required("pa")
            let pa = try paField.number()
            guard pa & (npt.bytes - 1) == 0 else { throw paField.error("placement \(hex(pa)) must be \(npt)-aligned for a \(npt) nested page table") }
            // guest_memfd's huge folios are naturally aligned physical memory: a placement that
            // is not aligned to the backing's folio cannot be backed by it.
            if pa & (backing.folio.bytes - 1) != 0 {
                throw paField.error("placement \(hex(pa)) is not \(backing.folio)-aligned, so \(backing.rawValue) cannot back it "
                    + "(its \(backing.folio) folios are \(backing.folio)-aligned); align the placement or use backing: \(GmemBacking.gmem4K.rawValue)")
            }
            let range = try paField.range(pa, size: size)
            guard ram.isRAM(range) else {
                throw paField.error("[\(hex(pa))-\(hex(range.upperBound))) is not all RAM; RAM is "
                    + ram.ram.map { "[\(hex($0.lowerBound))-\(hex($0.upperBound)))" }.joined(separator: " "))
            }
            if let other = guests.first(where: { $0.placement < range.upperBound && range.lowerBound < $0.placement + $0.memory }) {
                throw paField.error("[\(hex(pa))-\(hex(range.upperBound))) overlaps \(other.name) at [\(hex(other.placement))-\(hex(other.placement + other.memory)))")
            }
            var own = targets
            for slot in guestSlots {
                guard let choice = f[slot.key] else { continue }
                slot.apply(try choice.choice(slot.policies.map(\.name), what: "policy for \(slot.name)"), &own)
            }
            var config = own.guest
            config.cpus = vcpus  // the guest kernel's CPUs are its vCPUs, each with a TLB
            guests.append(GuestSpec(name: name, asid: asid, memory: size, placement: pa, npt: npt, vcpus: vcpus, backing: backing,
                                    kernelConfig: config))
        }
        return guests
    }
}
