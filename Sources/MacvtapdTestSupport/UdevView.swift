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
    init(_ operation: String, _ code: Int32) { description = "\(operation): \(String(cString: strerror(code)))" }
}

extension Sandbox {
    /// The shell words that give `macvtapd` this sandbox's udev run directory at `/run/udev`
    /// (inside `ip netns exec`, which already runs it in a mount namespace of its own).
    public var udevRunDirectory: String { directory.path + "/udev" }

    /// `macvtapd <command>` as `macvtapd(_:_:)` runs it, with `udevRunDirectory` at `/run/udev`
    /// and `--udev on` (in a test namespace `auto` is off: udevd serves PID 1's namespace).
    public func macvtapdWithUdev(_ command: String, _ arguments: [String] = []) async throws -> ChildResult {
        try FileManager.default.createDirectory(atPath: udevRunDirectory, withIntermediateDirectories: true)
        var all = [command] + arguments + ["--udev", "on"]
        all += ["-c", configPath, "--device-dir", deviceDirectory, "--qmp-timeout", "3", "--status-file", statusPath]
        let script =
            "mount --make-rprivate / && mount -t tmpfs -o mode=0755 tmpfs /run && mkdir /run/udev"
            + " && mount --bind \"$0\" /run/udev && exec \"$@\""
        return try await ChildProcess.run(
            "/usr/sbin/ip", ["netns", "exec", namespace.name, "/bin/sh", "-c", script, udevRunDirectory, binary] + all)
    }
}
