/// The machine architectures a scenario can name. Only those marked `modelled` can run yet;
/// the others are accepted names that give a clear error until their layers exist.
public enum Architecture: String, CaseIterable, Sendable {
    case x86_64 = "x86-64"
    case x86_sev = "x86-sev"
    case x86_snp = "x86-snp"
    case x86_tdx = "x86-tdx"
    case arm64 = "arm64"
    case arm64_cca = "arm64-cca"
    case arm64_pkvm = "arm64-pkvm"
    case arm64_mte = "arm64-mte"
    case s390_pv = "s390-pv"

    public var modelled: Bool { self == .x86_64 || self == .x86_snp }

    public var summary: String {
        switch self {
        case .x86_64: "x86-64 host: boot direct map, change_page_attr, vmalloc aliases"
        case .x86_sev: "AMD SEV (C-bit guests) — not modelled yet"
        case .x86_snp: "AMD SEV-SNP host: the RMP and its instructions and access checks, on the x86-64 host"
        case .x86_tdx: "Intel TDX (PAMT, Secure EPT) — not modelled yet"
        case .arm64: "arm64 host — not modelled yet"
        case .arm64_cca: "Arm CCA (GPT, RMM) — not modelled yet"
        case .arm64_pkvm: "pKVM (host stage-2 ownership) — not modelled yet"
        case .arm64_mte: "Arm MTE tags — not modelled yet"
        case .s390_pv: "s390 protected virtualization — not modelled yet"
        }
    }
}
