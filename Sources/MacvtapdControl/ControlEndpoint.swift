#if canImport(Glibc)
    import Glibc
#endif

/// The daemon's end of the control socket before anyone is served: the run-directory lock, then a
/// listening unix socket with its mode and group set before it gets its name (bound under a
/// temporary name, then renamed over a stale socket of a daemon that died), so there is no moment
/// when the socket is reachable with the wrong permissions.
public final class ControlEndpoint: Sendable {
    public let socketPath: String
    public let lock: RunLock
    let listener: Int32
    /// Members of this group may connect too (mode 0660); nil: root and the daemon's own user only.
    let group: gid_t?
    /// The socket file we created: unlinked on close only if the path still names it.
    private let inode: ino_t

    public static func open(socketPath: String, group: String?, configPath: String) throws(ControlSetupError)
        -> ControlEndpoint
    {
        guard socketPath.hasPrefix("/") else {
            throw ControlSetupError("the control socket path \(socketPath) must be absolute")
        }
        guard UnixSocket.address(socketPath) != nil else {
            throw ControlSetupError("the control socket path \(socketPath) is longer than 107 bytes")
        }
        let gid = try group.map { name throws(ControlSetupError) in try Self.lookUpGroup(name) }
        let lock = try RunLock.acquire(directory: RunDirectory.of(socketPath), configPath: configPath)
        do {
            let (listener, inode) = try Self.listen(at: socketPath, group: gid)
            return ControlEndpoint(socketPath: socketPath, lock: lock, listener: listener, group: gid, inode: inode)
        } catch {
            lock.release()
            throw error
        }
    }

    private init(socketPath: String, lock: RunLock, listener: Int32, group: gid_t?, inode: ino_t) {
        self.socketPath = socketPath
        self.lock = lock
        self.listener = listener
        self.group = group
        self.inode = inode
    }

    private static func listen(at path: String, group: gid_t?) throws(ControlSetupError) -> (Int32, ino_t) {
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw ControlSetupError("socket: \(errnoText())") }
        let temporary = RunDirectory.of(path) + "/.control.\(getpid())"
        unlink(temporary)
        func fail(_ what: String) -> ControlSetupError {
            let error = ControlSetupError("cannot \(what) the control socket \(path): \(errnoText())")
            Glibc.close(fd)
            unlink(temporary)
            return error
        }
        guard UnixSocket.bind(fd, to: temporary) == 0 else { throw fail("bind") }
        if let group, chown(temporary, geteuid(), group) != 0 { throw fail("chown") }
        guard chmod(temporary, group == nil ? 0o600 : 0o660) == 0 else { throw fail("chmod") }
        guard Glibc.listen(fd, 64) == 0 else { throw fail("listen on") }
        var info = stat()
        guard stat(temporary, &info) == 0 else { throw fail("stat") }
        // The lock is ours, so whatever socket has this name belongs to a daemon that is gone.
        guard rename(temporary, path) == 0 else { throw fail("name") }
        UnixSocket.setNonBlocking(fd)
        return (fd, info.st_ino)
    }

    static func lookUpGroup(_ name: String) throws(ControlSetupError) -> gid_t {
        var entry = Glibc.group()
        var result: UnsafeMutablePointer<Glibc.group>?
        var buffer = [CChar](repeating: 0, count: 16 * 1024)
        let code = getgrnam_r(name, &entry, &buffer, buffer.count, &result)
        guard code == 0, result != nil else {
            if let number = gid_t(name) { return number }
            throw ControlSetupError("the control group \(name) does not exist")
        }
        return entry.gr_gid
    }

    /// Whether `peer` may use the socket: root, the daemon's own user, or a member of the group.
    /// The socket's mode already keeps others out; this is the second lock on the same door.
    func admits(_ peer: Peer) -> Bool {
        if peer.uid == 0 || peer.uid == geteuid() { return true }
        guard let group else { return false }
        return peer.gid == group || peer.supplementaryGroups().contains(group)
    }

    /// Stops listening, removes the socket if it is still ours, and releases the lock.
    public func close() {
        Glibc.close(listener)
        var info = stat()
        if stat(socketPath, &info) == 0, info.st_ino == inode { unlink(socketPath) }
        lock.release()
    }
}
