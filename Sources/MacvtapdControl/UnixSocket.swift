import CMacvtapd

#if canImport(Glibc)
    import Glibc
#endif

/// The few unix-socket calls the control socket needs, with errors that name the path.
enum UnixSocket {
    /// A `sockaddr_un` for `path`, or nil when the path does not fit `sun_path` (107 bytes).
    static func address(_ path: String) -> sockaddr_un? {
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        let bytes = Array(path.utf8)
        guard bytes.count < MemoryLayout.size(ofValue: address.sun_path) else { return nil }
        withUnsafeMutableBytes(of: &address.sun_path) { raw in
            raw.copyBytes(from: bytes)
            raw[bytes.count] = 0
        }
        return address
    }

    static func bind(_ fd: Int32, to path: String) -> Int32 {
        guard var address = address(path) else {
            errno = ENAMETOOLONG
            return -1
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }

    static func connect(_ fd: Int32, to path: String) -> Int32 {
        guard var address = address(path) else {
            errno = ENAMETOOLONG
            return -1
        }
        return withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size))
            }
        }
    }

    /// Who is on the other end: the kernel's record from connect time (SO_PEERCRED).
    static func peer(_ fd: Int32) -> Peer? {
        var pid = pid_t()
        var uid = uid_t()
        var gid = gid_t()
        guard cmacvtapd_peer_credentials(fd, &pid, &uid, &gid) == 0 else { return nil }
        return Peer(pid: pid, uid: uid, gid: gid)
    }

    static func setNonBlocking(_ fd: Int32) {
        let flags = fcntl(fd, F_GETFL)
        _ = fcntl(fd, F_SETFL, flags | O_NONBLOCK)
    }
}

/// A connected client, as the kernel reports it.
public struct Peer: Sendable, Hashable, CustomStringConvertible {
    public var pid: pid_t
    public var uid: uid_t
    public var gid: gid_t

    public var description: String { "pid \(pid) uid \(uid)" }

    /// The peer's supplementary groups, from /proc (SO_PEERCRED carries only the primary group).
    func supplementaryGroups() -> Set<gid_t> {
        guard let text = ProcFile.read("/proc/\(pid)/status") else { return [] }
        for line in text.split(separator: "\n") where line.hasPrefix("Groups:") {
            return Set(
                line.dropFirst("Groups:".count).split(whereSeparator: { $0 == " " || $0 == "\t" }).compactMap {
                    gid_t($0)
                })
        }
        return []
    }
}

/// Small files read whole (/proc entries, the lock file).
enum ProcFile {
    static func read(_ path: String, limit: Int = 64 * 1024) -> String? {
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        return read(fd: fd, limit: limit)
    }

    static func read(fd: Int32, limit: Int = 64 * 1024) -> String? {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 4096)
        while bytes.count < limit {
            let got = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if got < 0 && errno == EINTR { continue }
            if got <= 0 { break }
            bytes += chunk[..<got]
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}

func errnoText(_ code: Int32 = errno) -> String { String(cString: strerror(code)) }

/// An absolute path with symlinks resolved, or the path as given when it does not resolve: how the
/// CLI and the daemon agree on whether two paths name the same configuration.
public func canonicalPath(_ path: String) -> String {
    guard let resolved = realpath(path, nil) else { return path }
    defer { free(resolved) }
    return String(cString: resolved)
}
