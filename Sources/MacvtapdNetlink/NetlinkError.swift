import Glibc

/// The kernel (or a socket call) refused an operation on an interface.
public struct NetlinkError: Error, Hashable, Sendable, CustomStringConvertible {
    /// What was attempted: `create macvtap`, `delete link`, `get link`, `dump links`, ...
    public var operation: String
    /// The interface it was about, as `name (ifindex N)`, `name`, or `ifindex N`; nil for dumps.
    public var interface: String?
    /// Positive errno (EEXIST, ENODEV, EINVAL, EPERM, ...).
    public var errno: Int32
    /// The kernel's extended-ack text when it sent one.
    public var message: String?

    public init(operation: String, interface: String?, errno: Int32, message: String? = nil) {
        self.operation = operation
        self.interface = interface
        self.errno = errno
        self.message = message
    }

    public var isAlreadyExists: Bool { errno == EEXIST }
    public var isNoSuchDevice: Bool { errno == ENODEV }
    public var isPermissionDenied: Bool { errno == EPERM || errno == EACCES }

    /// `create macvtap mvt0 on ifindex 3: EEXIST (File exists): kernel message`
    public var description: String {
        var text = operation
        if let interface { text += " \(interface)" }
        text += ": \(Self.errnoName(errno)) (\(String(cString: strerror(errno))))"
        if let message, !message.isEmpty { text += ": \(message)" }
        return text
    }

    /// Symbolic names for the errors rtnetlink returns in practice.
    public static func errnoName(_ code: Int32) -> String {
        switch code {
        case EPERM: return "EPERM"
        case ENOENT: return "ENOENT"
        case EINTR: return "EINTR"
        case EIO: return "EIO"
        case EBADF: return "EBADF"
        case EAGAIN: return "EAGAIN"
        case ENOMEM: return "ENOMEM"
        case EACCES: return "EACCES"
        case EBUSY: return "EBUSY"
        case EEXIST: return "EEXIST"
        case ENODEV: return "ENODEV"
        case EINVAL: return "EINVAL"
        case ENOSPC: return "ENOSPC"
        case ERANGE: return "ERANGE"
        case ENAMETOOLONG: return "ENAMETOOLONG"
        case EOPNOTSUPP: return "EOPNOTSUPP"
        case EADDRNOTAVAIL: return "EADDRNOTAVAIL"
        case ENOBUFS: return "ENOBUFS"
        case ETIMEDOUT: return "ETIMEDOUT"
        case ENOLINK: return "ENOLINK"
        case EPROTO: return "EPROTO"
        case EMSGSIZE: return "EMSGSIZE"
        case ENXIO: return "ENXIO"
        default: return "errno \(code)"
        }
    }
}
