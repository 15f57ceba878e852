import Foundation
import MacvtapdCore
import MacvtapdQMP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// ICMP echoes from a client every `interval` until `stop()`, on a thread of its own, with the wall
/// time each was sent and each reply arrived.
public final class PingStream: Sendable {
    public struct Echo: Sendable {
        public let sent: Int64
        public let replied: Int64?
    }

    public let target: String
    private let stopping = Atomic<Bool>(false)
    private let result = Mutex<[Echo]?>(nil)

    public init(_ pinger: ICMPPinger, interval: Duration) {
        target = pinger.target
        Thread { [self] in run(pinger, interval: interval) }.start()
    }

    /// Stops sending, waits 200 ms for late replies, and returns every echo in send order.
    public func stop() async -> [Echo] {
        stopping.store(true, ordering: .relaxed)
        while true {
            if let echoes = result.withLock({ $0 }) { return echoes }
            try? await Task.sleep(for: .milliseconds(5))
        }
    }

    private func run(_ pinger: ICMPPinger, interval: Duration) {
        _ = pinger.receiveReplies(timeout: .zero)
        var sent: [(sequence: UInt16, at: Int64)] = []
        var replies: [UInt16: Int64] = [:]
        let clock = ContinuousClock()
        func collect(until deadline: ContinuousClock.Instant) {
            while clock.now < deadline {
                let got = pinger.receiveReplies(timeout: deadline - clock.now)
                let now = WallClock.now()
                for sequence in got where replies[sequence] == nil { replies[sequence] = now }
            }
        }
        var next = clock.now
        while !stopping.load(ordering: .relaxed) {
            sent.append((pinger.send(), WallClock.now()))
            next += interval
            collect(until: next)
        }
        collect(until: clock.now + .milliseconds(200))
        // Sequence numbers wrap at 65,536 echoes (over 2 minutes at 2 ms): a stream is shorter.
        let echoes = sent.map { Echo(sent: $0.at, replied: replies[$0.sequence]) }
        result.withLock { $0 = echoes }
    }

    /// The longest time without a reply, from the reply before it to the one that ended it (by
    /// arrival: replies that QEMU delivers late in a burst do not hide a silence). Nil when fewer
    /// than two replies arrived.
    public static func longestSilence(_ echoes: [Echo]) -> (from: Int64, to: Int64)? {
        let arrivals = echoes.compactMap(\.replied).sorted()
        guard arrivals.count > 1 else { return nil }
        var longest = (from: arrivals[0], to: arrivals[1])
        for (earlier, later) in zip(arrivals, arrivals.dropFirst()) where later - earlier > longest.to - longest.from {
            longest = (earlier, later)
        }
        return longest
    }

    /// Echoes sent before `instant` that were not answered within `patience`: lost, for a client.
    public static func lost(_ echoes: [Echo], sentBefore instant: Int64, patience: Duration) -> [Echo] {
        let limit = patience.components.seconds * 1_000_000 + patience.components.attoseconds / 1_000_000_000_000
        return echoes.filter { echo in
            guard echo.sent < instant else { return false }
            guard let replied = echo.replied else { return true }
            return replied - echo.sent > limit
        }
    }
}
