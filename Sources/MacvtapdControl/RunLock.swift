#if canImport(Glibc)
    import Glibc
#endif

/// One daemon per run directory: an flock on `<run directory>/macvtapd.lock`, held for the daemon's
/// life. The kernel drops the lock when its holder dies, however it dies, so a lock file left by a
/// killed daemon never blocks a restart. The file says who holds it (pid, config), for the
/// refusal a second daemon prints.
public final class RunLock: Sendable {
    public let path: String
    private let fd: Int32

    /// Takes the lock, or throws naming the daemon that holds it.
    public static func acquire(directory: String, configPath: String) throws(ControlSetupError) -> RunLock {
        try RunDirectory.create(directory)
        let path = directory + "/macvtapd.lock"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o644)
        guard fd >= 0 else { throw ControlSetupError("cannot open the lock \(path): \(errnoText())") }
        guard flock(fd, LOCK_EX | LOCK_NB) == 0 else {
            let why = errno
            let holder = ProcFile.read(fd: fd).map(Holder.init(text:))
            close(fd)
            if why == EWOULDBLOCK, let holder {
                throw ControlSetupError(
                    "another macvtapd already runs with the run directory \(directory) (pid \(holder.pid ?? "?"), "
                        + "config \(holder.config ?? "?"); it holds \(path)); stop it first, or give this one another "
                        + "--control-socket directory")
            }
            throw ControlSetupError("cannot lock \(path): \(errnoText(why))")
        }
        let text = "pid=\(getpid())\nconfig=\(configPath)\n"
        _ = ftruncate(fd, 0)
        _ = text.utf8CString.withUnsafeBufferPointer { pwrite(fd, $0.baseAddress, $0.count - 1, 0) }
        return RunLock(path: path, fd: fd)
    }

    private init(path: String, fd: Int32) {
        self.path = path
        self.fd = fd
    }

    /// Releases the lock (closing is enough; the file stays for the next daemon to reuse).
    public func release() { close(fd) }

    struct Holder {
        var pid: String?
        var config: String?

        init(text: String) {
            for line in text.split(separator: "\n") {
                if line.hasPrefix("pid=") { pid = String(line.dropFirst(4)) }
                if line.hasPrefix("config=") { config = String(line.dropFirst(7)) }
            }
        }
    }
}

enum RunDirectory {
    /// `mkdir -p` with mode 0755: the socket's own mode guards it, the directory only holds it.
    static func create(_ directory: String) throws(ControlSetupError) {
        var prefix = ""
        for component in directory.split(separator: "/", omittingEmptySubsequences: true) {
            prefix += "/" + component
            if mkdir(prefix, 0o755) != 0 && errno != EEXIST {
                throw ControlSetupError("cannot create the run directory \(prefix): \(errnoText())")
            }
        }
    }

    static func of(_ socketPath: String) -> String {
        guard let slash = socketPath.lastIndex(of: "/") else { return "." }
        return slash == socketPath.startIndex ? "/" : String(socketPath[..<slash])
    }
}

public struct ControlSetupError: Error, CustomStringConvertible, Sendable {
    public var description: String
    public init(_ description: String) { self.description = description }
}
