import CMacvtapd
import Foundation

#if canImport(Glibc)
    import Glibc
#endif

/// What `ip netns exec NS` plus a private `/run/udev` give a process, for one thread: the
/// namespace's network devices in `/sys` and a hand-written udev database that libudev reads from
/// its compiled-in `/run/udev`. Nothing leaks out: the mounts live in a mount namespace of the
/// thread's own, which ends with the thread.
public enum UdevView {
    /// Runs `body` on a fresh thread inside `namespace`, with `runDirectory` mounted at `/run/udev`
    /// (write `data/n<ifindex>` there to mark a link initialised by udev).
    public static func run<Value: Sendable>(
        in namespace: NetworkNamespace, runDirectory: String, _ body: @escaping @Sendable () throws -> Value
    ) async throws -> Value {
        try await withCheckedThrowingContinuation { continuation in
            Thread.detachNewThread {
                continuation.resume(
                    with: Swift.Result {
                        try enter(namespace, runDirectory: runDirectory)
                        return try body()
                    })
            }
        }
    }

    /// Writes the database entry udevd writes once it has processed a network interface:
    /// `I:` (when, in µs) and one `E:KEY=value` line per property.
    public static func writeDatabaseEntry(in runDirectory: String, ifindex: Int32, properties: [String: String])
        throws
    {
        let data = runDirectory + "/data"
        try FileManager.default.createDirectory(atPath: data, withIntermediateDirectories: true)
        var text = "I:\(UInt64(Date().timeIntervalSince1970 * 1_000_000))\n"
        for (key, value) in properties.sorted(by: { $0.key < $1.key }) { text += "E:\(key)=\(value)\n" }
        // Written aside and renamed, as udevd does, so a reader never sees half an entry.
        let path = "\(data)/n\(ifindex)"
        try Data(text.utf8).write(to: URL(fileURLWithPath: path + ".tmp"))
        guard rename(path + ".tmp", path) == 0 else { throw UdevViewError("rename \(path)", errno) }
    }

    private static func enter(_ namespace: NetworkNamespace, runDirectory: String) throws {
        let target = open(namespace.path, O_RDONLY | O_CLOEXEC)
        guard target >= 0 else { throw UdevViewError("open \(namespace.path)", errno) }
        defer { close(target) }
        guard cmacvtapd_setns_net(target) == 0 else { throw UdevViewError("setns \(namespace.path)", errno) }
        guard cmacvtapd_unshare_mount_namespace() == 0 else { throw UdevViewError("unshare CLONE_NEWNS", errno) }
        guard mount(nil, "/", nil, UInt(MS_REC | MS_PRIVATE), nil) == 0 else {
            throw UdevViewError("make / private", errno)
        }
        // A fresh sysfs shows the devices of the namespace of whoever mounts it.
        guard mount("sysfs", "/sys", "sysfs", 0, nil) == 0 else { throw UdevViewError("mount sysfs", errno) }
        // /run/udev need not exist on the host: a tmpfs over /run holds the mount point.
        guard mount("tmpfs", "/run", "tmpfs", 0, "mode=0755") == 0 else { throw UdevViewError("mount /run", errno) }
        guard mkdir("/run/udev", 0o755) == 0 else { throw UdevViewError("mkdir /run/udev", errno) }
        guard mount(runDirectory, "/run/udev", nil, UInt(MS_BIND), nil) == 0 else {
            throw UdevViewError("bind \(runDirectory) at /run/udev", errno)
        }
    }
}

public struct UdevViewError: Error, CustomStringConvertible {
    public var description: String
    init(_ operation: String, _ code: Int32) {
        description = code == 0 ? operation : "\(operation): \(String(cString: strerror(code)))"
    }
}

extension Sandbox {
    /// The directory the `...WithUdev` runs see at `/run/udev` (`ip netns exec` already runs them in a
    /// mount namespace of their own; the script makes its mounts private, so nothing leaks out).
    public var udevRunDirectory: String { directory.path + "/udev" }

    /// `macvtapd <command>` as `macvtapd(_:_:)` runs it, with `udevRunDirectory` at `/run/udev`
    /// and `--udev on` (in a test namespace `auto` is off: udevd serves PID 1's namespace).
    public func macvtapdWithUdev(_ command: String, _ arguments: [String] = []) async throws -> ChildResult {
        try FileManager.default.createDirectory(atPath: udevRunDirectory, withIntermediateDirectories: true)
        var all = [command] + arguments + ["--udev", "on"]
        all += ["-c", configPath, "--qmp-timeout", "3", "--status-file", statusPath]
        all += ["--control-socket", directory.path + "/run/control.sock"]
        if command == "apply" || command == "run" { all += ["--device-dir", deviceDirectory] }
        return try await ChildProcess.run(
            "/usr/sbin/ip",
            ["netns", "exec", namespace.name, "/bin/sh", "-c", Self.privateUdevScript, udevRunDirectory, binary] + all)
    }
}

/// Announces a processed device the way udevd does after writing its database entry: a "libudev"
/// message multicast to the udev group of the namespace's uevent netlink, in the wire format
/// libudev's monitor parses and filters in the kernel (magic, subsystem hash). Lets a test say
/// "udev is done" at the exact moment it chooses, with no other event around it (`TestUdevd` runs
/// the real udevd, whose timing is its own).
public enum UdevAnnouncer {
    public static func announce(
        in namespace: NetworkNamespace, action: String, name: String, ifindex: Int32, properties: [String: String],
        sequence: UInt64 = 1
    ) async throws {
        var all = properties
        all["ACTION"] = action
        all["DEVPATH"] = "/devices/virtual/net/\(name)"
        all["SUBSYSTEM"] = "net"
        all["INTERFACE"] = name
        all["IFINDEX"] = "\(ifindex)"
        all["SEQNUM"] = "\(sequence)"
        var body: [UInt8] = []
        for (key, value) in all.sorted(by: { $0.key < $1.key }) { body += Array("\(key)=\(value)".utf8) + [0] }

        let headerSize = 40
        var header = Array("libudev".utf8) + [0]
        func append32(_ value: UInt32, bigEndian: Bool) {
            let ordered = bigEndian ? value.bigEndian : value
            withUnsafeBytes(of: ordered) { header += $0 }
        }
        append32(0xfeed_cafe, bigEndian: true)
        append32(UInt32(headerSize), bigEndian: false)
        append32(UInt32(headerSize), bigEndian: false)
        append32(UInt32(body.count), bigEndian: false)
        append32(murmurHash2(Array("net".utf8)), bigEndian: true)
        append32(0, bigEndian: false)
        append32(0, bigEndian: false)
        append32(0, bigEndian: false)
        let message = header + body
        try await namespace.entered {
            let fd = socket(AF_NETLINK, Int32(SOCK_RAW.rawValue) | Int32(SOCK_CLOEXEC.rawValue), NETLINK_KOBJECT_UEVENT)
            guard fd >= 0 else { throw UdevViewError("open uevent netlink", errno) }
            defer { close(fd) }
            var address = sockaddr_nl()
            address.nl_family = sa_family_t(AF_NETLINK)
            address.nl_groups = 2  // udev's group; the kernel's is 1
            let sent = withUnsafePointer(to: &address) { pointer in
                pointer.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    sendto(fd, message, message.count, 0, $0, socklen_t(MemoryLayout<sockaddr_nl>.size))
                }
            }
            guard sent == message.count else { throw UdevViewError("send the udev announcement", errno) }
        }
    }

    /// MurmurHash2 with seed 0, what libudev's socket filter compares the subsystem against.
    static func murmurHash2(_ key: [UInt8]) -> UInt32 {
        let m: UInt32 = 0x5bd1_e995
        var h = UInt32(key.count)
        var index = 0
        while key.count - index >= 4 {
            var k =
                UInt32(key[index]) | UInt32(key[index + 1]) << 8 | UInt32(key[index + 2]) << 16
                | UInt32(key[index + 3]) << 24
            k &*= m
            k ^= k >> 24
            k &*= m
            h &*= m
            h ^= k
            index += 4
        }
        let rest = key.count - index
        if rest >= 3 { h ^= UInt32(key[index + 2]) << 16 }
        if rest >= 2 { h ^= UInt32(key[index + 1]) << 8 }
        if rest >= 1 {
            h ^= UInt32(key[index])
            h &*= m
        }
        h ^= h >> 13
        h &*= m
        h ^= h >> 15
        return h
    }
}

extension Sandbox {
    /// `macvtapd run` as `startDaemon` starts it, with `udevRunDirectory` at `/run/udev` and `--udev on`.
    public func startDaemonWithUdev(_ arguments: [String] = []) async throws -> BackgroundProcess {
        try FileManager.default.createDirectory(atPath: udevRunDirectory, withIntermediateDirectories: true)
        return try await BackgroundProcess.launch(
            "/usr/sbin/ip",
            [
                "netns", "exec", namespace.name, "/bin/sh", "-c", Self.privateUdevScript, udevRunDirectory, binary,
                "run", "--udev", "on", "-c", configPath, "--device-dir", deviceDirectory, "--status-file", statusPath,
                "--metrics-file", "", "--qmp-timeout", "3", "--control-socket", directory.path + "/run/control.sock",
            ] + arguments,
            logPath: directory.path + "/daemon.log")
    }

    static let privateUdevScript =
        "mount --make-rprivate / && mount -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/udev"
        + " && mount --bind \"$0\" /run/udev && exec \"$@\""
}
