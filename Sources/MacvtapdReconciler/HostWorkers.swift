import Dispatch
import MacvtapdNetlink
import Synchronization

/// Runs the host's blocking work (rtnetlink requests, opening tap devices) on threads of its own,
/// each with its own rtnetlink socket, so that it never holds one of Swift's cooperative threads
/// (two on a two-core machine: one kernel round trip there stalls half of the daemon) and
/// requests for different bindings need not queue behind each other on one socket. The kernel
/// serialises most link changes on RTNL anyway; a second request already waiting there keeps it
/// busy while our side handles the first one's reply.
final class HostWorkers: Sendable {
    private let lanes: [(queue: DispatchQueue, socket: RouteSocket)]
    private let next = Atomic<Int>(0)

    /// `width` sockets, opened in the calling thread's network namespace.
    init(width: Int) throws {
        lanes = try (0..<max(1, width)).map { index in
            (DispatchQueue(label: "macvtapd.host.\(index)"), try RouteSocket())
        }
    }

    /// Runs `body` on the next lane (round robin) and returns its result.
    func run<T: Sendable>(_ body: @escaping @Sendable (RouteSocket) throws -> T) async throws -> T {
        let lane = lanes[next.add(1, ordering: .relaxed).oldValue % lanes.count]
        return try await withCheckedThrowingContinuation { continuation in
            lane.queue.async {
                continuation.resume(with: Result { try body(lane.socket) })
            }
        }
    }
}
