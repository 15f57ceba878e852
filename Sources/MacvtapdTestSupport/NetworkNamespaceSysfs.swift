import Glibc
import Synchronization

/// sysfs as seen from a test namespace, mounted in a temporary directory of our mount namespace
/// (sysfs shows the network devices of the namespace of whoever mounts it).
public final class NetworkNamespaceSysfs: Sendable {
    public let path: String
    private let mounted = Atomic<Bool>(true)

    public init(of namespace: NetworkNamespace) throws {
        // Under a directory of their own, not directly in /tmp: removing a directory that is still a
        // mount point in another mount namespace (an `ip netns exec` child's copy) waits for an RCU
        // grace period with its parent locked, and every mkdtemp and rmdir in that parent waits too
        // (the pool probe saw both pool threads stuck in rmdir and mkdir in /tmp).
        mkdir(Self.parent, 0o755)
        var template = Array((Self.parent + "/XXXXXX").utf8CString)
        guard let made = mkdtemp(&template) else {
            throw NetworkNamespaceCommandError(command: ["mkdtemp"], status: errno, output: "")
        }
        let path = String(cString: made)
        do {
            try namespace.withEntered {
                guard mount("sysfs", path, "sysfs", 0, nil) == 0 else {
                    throw NetworkNamespaceCommandError(command: ["mount sysfs at \(path)"], status: errno, output: "")
                }
            }
        } catch {
            rmdir(path)
            throw error
        }
        self.path = path
    }

    static let parent = "/tmp/mvtd-sysfs"

    deinit { unmount() }

    public func unmount() {
        guard mounted.exchange(false, ordering: .relaxed) else { return }
        umount2(path, Int32(MNT_DETACH))
        rmdir(path)
    }
}
