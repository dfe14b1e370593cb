import Hardware

/// A kernel error number, printed the way kernel developers write it (`-ENOMEM`). Open: any
/// value is representable; the named ones are every errno the modelled code returns and the
/// rest of errno-base.h. Linux include/uapi/asm-generic/errno-base.h and errno.h.
public struct Errno: RawRepresentable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let EPERM = Errno(rawValue: 1)
    public static let ENOENT = Errno(rawValue: 2)
    public static let EINTR = Errno(rawValue: 4)
    public static let EIO = Errno(rawValue: 5)
    public static let ENXIO = Errno(rawValue: 6)
    public static let E2BIG = Errno(rawValue: 7)
    public static let EAGAIN = Errno(rawValue: 11)
    public static let ENOMEM = Errno(rawValue: 12)
    public static let EACCES = Errno(rawValue: 13)
    public static let EFAULT = Errno(rawValue: 14)
    public static let EBUSY = Errno(rawValue: 16)
    public static let EEXIST = Errno(rawValue: 17)
    public static let ENODEV = Errno(rawValue: 19)
    public static let EINVAL = Errno(rawValue: 22)
    public static let ENOSPC = Errno(rawValue: 28)
    public static let ERANGE = Errno(rawValue: 34)
    public static let EOPNOTSUPP = Errno(rawValue: 95)
    public static let EHWPOISON = Errno(rawValue: 133)

    /// The names errno-base.h and errno.h give, by number (1 to 34, then the few above).
    static let names: [(Int32, String)] = [
        (1, "EPERM"), (2, "ENOENT"), (3, "ESRCH"), (4, "EINTR"), (5, "EIO"), (6, "ENXIO"), (7, "E2BIG"),
        (8, "ENOEXEC"), (9, "EBADF"), (10, "ECHILD"), (11, "EAGAIN"), (12, "ENOMEM"), (13, "EACCES"),
        (14, "EFAULT"), (15, "ENOTBLK"), (16, "EBUSY"), (17, "EEXIST"), (18, "EXDEV"), (19, "ENODEV"),
        (20, "ENOTDIR"), (21, "EISDIR"), (22, "EINVAL"), (23, "ENFILE"), (24, "EMFILE"), (25, "ENOTTY"),
        (26, "ETXTBSY"), (27, "EFBIG"), (28, "ENOSPC"), (29, "ESPIPE"), (30, "EROFS"), (31, "EMLINK"),
        (32, "EPIPE"), (33, "EDOM"), (34, "ERANGE"), (95, "EOPNOTSUPP"), (133, "EHWPOISON"),
    ]

    /// The symbolic name (`ENOMEM`), or the number for one without a name here.
    public var name: String { Self.names.first { $0.0 == rawValue }?.1 ?? "\(rawValue)" }
    public var description: String { "-\(name)" }
}

/// What a kernel function returned: 0 or a negative errno.
public enum KernelStatus: Hashable, Sendable, Outcome {
    case ok
    case error(Errno)

    public var description: String {
        switch self {
        case .ok: "ok"
        case .error(let e): e.description
        }
    }

    public var kind: OutcomeKind { self == .ok ? .success : .error }
}

/// A request the model cannot even begin: wrong addresses, impossible sizes. Unlike an
/// `Errno`, this is the user's mistake, not the kernel's answer.
public struct HostKernelError: Error, Hashable, Sendable, CustomStringConvertible {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}
extension Errno: Error {}
