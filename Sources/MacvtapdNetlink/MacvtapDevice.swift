import CMacvtapd
import Glibc
import Synchronization

/// Opens a macvtap's tap character device the way QEMU wants it, without udev and without
/// `/dev/tapN`: the device number comes from sysfs, the node is private and short-lived.
public struct MacvtapDevice: Sendable {
    /// Where sysfs of the macvtap's network namespace is mounted (`/sys` for our own).
    public var sysfsRoot: String
    /// Where the private device node is made (created 0700 if missing) and at once unlinked.
    public var runtimeDirectory: String

    public init(sysfsRoot: String = "/sys", runtimeDirectory: String = "/dev/macvtapd") {
        self.sysfsRoot = sysfsRoot
        self.runtimeDirectory = runtimeDirectory
    }

    /// Opens `link`'s tap device O_RDWR|O_CLOEXEC|O_NONBLOCK with IFF_VNET_HDR on.
    ///
    /// Nonblocking because QEMU makes an fd it is given nonblocking anyway (`-netdev tap,fd=`),
    /// the flag lives on the shared open file description, and nothing in macvtapd may ever block
    /// on a tap. The vnet header length is left at the kernel default (10 bytes, struct
    /// virtio_net_hdr): QEMU sets it itself once it knows what its peer negotiated.
    public func open(_ link: Link) throws -> FileDescriptor {
        try open(name: link.name, index: link.index)
    }

    public func open(name: String, index: Int32) throws -> FileDescriptor {
        func failure(_ operation: String, _ path: String?, _ code: Int32, _ detail: String? = nil) -> MacvtapDeviceError
        {
            MacvtapDeviceError(
                operation: operation, interface: "\(name) (ifindex \(index))", path: path, errno: code, detail: detail)
        }
        try InterfaceName.validate(name)
        // The ifindex in the path ties the device number to this very macvtap: a namesake
        // re-created in between has another ifindex and so no such file.
        let devPath = "\(sysfsRoot)/class/net/\(name)/macvtap/tap\(index)/dev"
        let text: String
        switch readSmallFile(devPath) {
        case .success(let contents): text = contents
        case .failure(let code): throw failure("read device number", devPath, code.rawValue)
        }
        let numbers = text.split(separator: ":").map { UInt32($0.filter { !$0.isWhitespace }) }
        guard numbers.count == 2, let major = numbers[0], let minor = numbers[1] else {
            throw failure("parse device number", devPath, EINVAL, "\(text.debugDescription) is not MAJOR:MINOR")
        }
        let device = cmacvtapd_makedev(major, minor)

        if case .failure(let code) = makePrivateDirectory(runtimeDirectory) {
            throw failure("create runtime directory", runtimeDirectory, code.rawValue)
        }
        let nodePath = "\(runtimeDirectory)/tap\(index).\(getpid()).\(MacvtapDeviceNodeCounter.next())"
        if mknod(nodePath, S_IFCHR | 0o600, device) != 0 {
            let code = errno
            guard code == EEXIST, unlink(nodePath) == 0, mknod(nodePath, S_IFCHR | 0o600, device) == 0 else {
                throw failure("create device node", nodePath, code)
            }
        }
        let fd = Glibc.open(nodePath, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK)
        let openError = errno
        unlink(nodePath)
        guard fd >= 0 else {
            var filesystem = statvfs()
            if openError == EACCES, statvfs(runtimeDirectory, &filesystem) == 0,
                filesystem.f_flag & mountFlagNoDevices != 0
            {
                throw failure(
                    "open device node", nodePath, openError,
                    "\(runtimeDirectory) is on a nodev filesystem; use a runtime directory that allows device nodes")
            }
            throw failure("open device node", nodePath, openError)
        }
        let owned = FileDescriptor(adopting: fd)

        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & S_IFMT == S_IFCHR, info.st_rdev == device else {
            throw failure("verify device node", nodePath, EIO, "opened file is not char device \(major):\(minor)")
        }
        try enableVnetHeader(fd) { operation, code in failure(operation, nil, code) }
        return owned
    }

    /// As libvirt and QEMU do it: read the queue flags with TUNGETIFF, add IFF_VNET_HDR when the
    /// device supports it, write them back with TUNSETIFF only if something changed.
    private func enableVnetHeader(_ fd: Int32, failure: (String, Int32) -> MacvtapDeviceError) throws {
        var request = ifreq()
        guard cmacvtapd_ioctl_ifreq(fd, CMACVTAPD_TUNGETIFF, &request) == 0 else { throw failure("TUNGETIFF", errno) }
        var features: Int32 = 0
        guard cmacvtapd_ioctl_intptr(fd, CMACVTAPD_TUNGETFEATURES, &features) == 0 else {
            throw failure("TUNGETFEATURES", errno)
        }
        let vnetHeader = Int32(IFF_VNET_HDR)
        guard features & vnetHeader != 0 else { throw failure("enable IFF_VNET_HDR (unsupported)", EOPNOTSUPP) }
        let flags = Int32(request.ifr_ifru.ifru_flags)
        guard flags & vnetHeader == 0 else { return }
        request.ifr_ifru.ifru_flags = Int16(truncatingIfNeeded: flags | vnetHeader)
        guard cmacvtapd_ioctl_ifreq(fd, CMACVTAPD_TUNSETIFF, &request) == 0 else { throw failure("TUNSETIFF", errno) }
    }

    /// TUNGETVNETHDRSZ: the bytes of virtio_net_hdr that precede every frame read or written.
    public static func vnetHeaderSize(of descriptor: FileDescriptor) throws -> Int {
        try descriptor.withRawValue { fd in
            var size: Int32 = 0
            guard cmacvtapd_ioctl_intptr(fd, CMACVTAPD_TUNGETVNETHDRSZ, &size) == 0 else {
                throw MacvtapDeviceError(operation: "TUNGETVNETHDRSZ", interface: "fd \(fd)", path: nil, errno: errno)
            }
            return Int(size)
        }
    }

    /// The TUNGETIFF flags of a tap queue.
    public struct QueueFlags: OptionSet, Hashable, Sendable {
        public var rawValue: Int32
        public init(rawValue: Int32) { self.rawValue = rawValue }

        public static let tap = QueueFlags(rawValue: Int32(IFF_TAP))
        public static let noPacketInformation = QueueFlags(rawValue: Int32(IFF_NO_PI))
        public static let vnetHeader = QueueFlags(rawValue: Int32(IFF_VNET_HDR))
        public static let multiQueue = QueueFlags(rawValue: Int32(IFF_MULTI_QUEUE))
    }

    /// TUNGETIFF. Fails with ENOLINK once the macvtap is gone: how a dead backend is recognised.
    public static func queueFlags(of descriptor: FileDescriptor) throws -> QueueFlags {
        try descriptor.withRawValue { fd in
            var request = ifreq()
            guard cmacvtapd_ioctl_ifreq(fd, CMACVTAPD_TUNGETIFF, &request) == 0 else {
                throw MacvtapDeviceError(operation: "TUNGETIFF", interface: "fd \(fd)", path: nil, errno: errno)
            }
            return QueueFlags(rawValue: Int32(UInt16(bitPattern: request.ifr_ifru.ifru_flags)))
        }
    }
}

public struct MacvtapDeviceError: Error, Hashable, Sendable, CustomStringConvertible {
    public var operation: String
    public var interface: String
    public var path: String?
    public var errno: Int32
    public var detail: String?

    public var description: String {
        var text = "\(operation) for macvtap \(interface)"
        if let path { text += " at \(path)" }
        text += ": \(NetlinkError.errnoName(errno)) (\(String(cString: strerror(errno))))"
        if let detail { text += ": \(detail)" }
        return text
    }
}

/// Distinguishes concurrent opens of the same macvtap in one process.
enum MacvtapDeviceNodeCounter {
    private static let value = Atomic<UInt64>(0)
    static func next() -> UInt64 { value.add(1, ordering: .relaxed).newValue }
}

struct SystemErrno: Error {
    var rawValue: Int32
}

/// Reads a sysfs attribute (a few bytes).
func readSmallFile(_ path: String) -> Result<String, SystemErrno> {
    let fd = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    guard fd >= 0 else { return .failure(SystemErrno(rawValue: errno)) }
    defer { Glibc.close(fd) }
    var buffer = [UInt8](repeating: 0, count: 256)
    let count = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
    guard count >= 0 else { return .failure(SystemErrno(rawValue: errno)) }
    return .success(String(decoding: buffer[0..<count], as: UTF8.self))
}

/// `mkdir -p` where every directory created is 0700; existing ones are left as they are.
func makePrivateDirectory(_ path: String) -> Result<Void, SystemErrno> {
    var prefix = path.hasPrefix("/") ? "" : "."
    for component in path.split(separator: "/") {
        prefix += "/" + component
        if mkdir(prefix, 0o700) != 0 && errno != EEXIST { return .failure(SystemErrno(rawValue: errno)) }
    }
    var info = stat()
    guard stat(path, &info) == 0 else { return .failure(SystemErrno(rawValue: errno)) }
    guard info.st_mode & S_IFMT == S_IFDIR else { return .failure(SystemErrno(rawValue: ENOTDIR)) }
    return .success(())
}

/// ST_NODEV of statvfs(3); glibc declares it only under _GNU_SOURCE, so Swift does not see it.
let mountFlagNoDevices: UInt = 4
