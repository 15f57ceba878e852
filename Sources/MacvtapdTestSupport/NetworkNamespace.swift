import CMacvtapd
import Foundation
import Glibc
import Synchronization

/// A network namespace created for one test (`ip netns add`), deleted by `delete()` or on deinit.
/// Names are unique per process and per call, so tests can run in parallel.
public final class NetworkNamespace: Sendable {
    public let name: String
    private let deleted = Atomic<Bool>(false)

    /// `/run/netns/NAME`: what `RouteSocket(networkNamespace:)` and friends take.
    public var path: String { "/run/netns/\(name)" }

    public init(prefix: String = "mvtd") async throws {
        poolThreadEntersFixture()
        name = "\(prefix)-\(getpid())-\(NetworkNamespace.counter.add(1, ordering: .relaxed).newValue)"
        try await NetworkNamespaceCommand.run(["ip", "netns", "add", name])
        do {
            try await ip("link", "set", "lo", "up")
        } catch {
            try? await remove()
            throw error
        }
    }

    /// Deleted from the thread that drops the last reference, often one of the cooperative pool's:
    /// the unmount waits for an RCU grace period, so it happens on a thread of its own.
    deinit { discard() }

    /// Removes the namespace as `ip netns del` does (detach its bind mount, unlink the name),
    /// without a child process. Its interfaces go when the last socket and process in it are gone.
    /// Blocks for an RCU grace period (the unmount): async code uses `remove()`, a `defer` `discard()`.
    public func delete() throws {
        guard !deleted.exchange(true, ordering: .relaxed) else { return }
        try Self.delete(path)
    }

    /// `delete()` on a thread of its own.
    public func remove() async throws {
        try await offPool { try self.delete() }
    }

    /// Deletes from a thread of its own without waiting: for a `defer`, which cannot await.
    public func discard() {
        guard !deleted.exchange(true, ordering: .relaxed) else { return }
        let path = path
        Thread.detachNewThread { try? Self.delete(path) }
    }

    private static func delete(_ path: String) throws {
        umount2(path, Int32(MNT_DETACH))
        guard unlink(path) == 0 else {
            throw NetworkNamespaceCommandError(command: ["unlink \(path)"], status: errno, output: "")
        }
    }

    public var exists: Bool { access(path, F_OK) == 0 }

    /// `ip -n NAME ARGS...`
    @discardableResult
    public func ip(_ arguments: String...) async throws -> String {
        try await NetworkNamespaceCommand.run(["ip", "-n", name] + arguments)
    }

    /// Any command inside the namespace (`ip netns exec NAME ...`).
    @discardableResult
    public func exec(_ arguments: [String]) async throws -> String {
        try await NetworkNamespaceCommand.run(["ip", "netns", "exec", name] + arguments)
    }

    /// `withEntered` on a thread of its own, for async code: no thread of the cooperative pool ever
    /// changes namespace, and what `body` waits for (a mount, RTNL) holds none of them.
    public func entered<Result: Sendable>(_ body: @escaping @Sendable () throws -> Result) async throws -> Result {
        try await offPool { try self.withEntered(body) }
    }

    /// Runs `body` with the calling thread inside the namespace; sockets made there stay there.
    /// Synchronous: the thread is switched back before anything else can run on it. Enters on the
    /// calling thread: for threads of their own (benchmarks' timed loops); async code uses `entered`.
    public func withEntered<Result>(_ body: () throws -> Result) throws -> Result {
        let original = open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
        guard original >= 0 else {
            throw NetworkNamespaceCommandError(command: ["open own netns"], status: errno, output: "")
        }
        defer { close(original) }
        let target = open(path, O_RDONLY | O_CLOEXEC)
        guard target >= 0 else {
            throw NetworkNamespaceCommandError(command: ["open \(path)"], status: errno, output: "")
        }
        defer { close(target) }
        guard cmacvtapd_setns_net(target) == 0 else {
            throw NetworkNamespaceCommandError(command: ["setns \(path)"], status: errno, output: "")
        }
        defer {
            if cmacvtapd_setns_net(original) != 0 { fatalError("cannot leave network namespace \(path)") }
        }
        return try body()
    }

    private static let counter = Atomic<UInt64>(0)
}
