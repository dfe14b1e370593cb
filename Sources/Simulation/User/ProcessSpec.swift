import HostKernel

/// A user process as a scenario declares it under `processes:`: its name, and the guest
/// whose kernel runs it (none: the host's).
public struct ProcessSpec: Hashable, Sendable {
    public let name: String
    /// The guest's index, or nil for a host process.
    public let guest: Int?

    /// Reads `processes:`, a list of names or `{name, guest}`: names unique within a kernel,
    /// guests known and with a kernel of their own, an x86 kernel (the model's user mappings
    /// are x86's).
    static func readAll(_ field: Field?, architecture: ArchitectureDefinition, guests: [GuestSpec]) throws(ScenarioError) -> [ProcessSpec] {
        guard let field else { return [] }
        var out: [ProcessSpec] = []
        for item in try field.sequence() {
            guard architecture.steps.contains(where: { $0.name == "mmap" }) else {
                throw item.error("user processes need an architecture with user mappings (x86-sev, s390-pv); this machine is \(architecture.name)"
                    + (architecture.isa == .arm64 ? " (its VMM mappings are the MTE steps' mmap)" : ""))
            }
            var spec: ProcessSpec
            if case .scalar = item.node {
                spec = ProcessSpec(name: try item.text(), guest: nil)
            } else {
                let f = try item.mapping()
                try f.only(["name", "guest"])
                var g: Int?
                if let gf = f["guest"] {
                    let gname = try gf.text()
                    guard let i = guests.firstIndex(where: { $0.name == gname }) else {
                        throw gf.error("unknown guest '\(gname)'" + (guests.isEmpty ? "; this scenario defines no guests" : Suggest.hint(gname, in: guests.map(\.name), listedBy: "the scenario's guests:")))
                    }
                    guard architecture.guestKernels else { throw gf.error("\(architecture.name) guests have no kernel in the model, so no processes") }
                    g = i
                }
                spec = ProcessSpec(name: try f.required("name").text(), guest: g)
            }
            if out.contains(where: { $0.name == spec.name && $0.guest == spec.guest }) {
                throw item.error("process '\(spec.name)' is declared twice in \(spec.guest.map { "guest \(guests[$0].name)" } ?? "the host")")
            }
            out.append(spec)
        }
        return out
    }
}

extension Machine {
    /// Creates the declared processes, each with an empty mm, in its kernel.
    mutating func addProcesses(_ specs: [ProcessSpec]) {
        for p in specs {
            if let g = p.guest { guestKernels[g].withKernel { $0.user.addProcess(p.name) } } else { kernel.user.addProcess(p.name) }
        }
    }

    /// Runs `body` on the kernel a process lives in (the host's or guest `g`'s) and the
    /// process's index there.
    mutating func withUserKernel<R>(guest g: Int?, process name: String, _ body: (inout Kernel, Int) -> R) -> R {
        if let g {
            let pi = guestKernels[g].kernel.user.processIndex(name)!
            return guestKernels[g].withKernel { body(&$0, pi) }
        }
        let pi = kernel.user.processIndex(name)!
        return body(&kernel, pi)
    }
}
