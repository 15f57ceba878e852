import MacvtapdCore
import MacvtapdNetlink
import Testing

@testable import MacvtapdReconciler

#if canImport(Glibc)
    import Glibc
#endif

/// `TapKeeper`'s bookkeeping with real descriptors (socket pairs stand in for taps): what it keeps, what
/// it closes at once, and that every close has happened once `drain` returns.
struct TapKeeperTests {
    static func backend(_ vm: String, _ ifindex: Int32) -> VMBackend {
        VMBackend(vm: vm, ids: Ownership.BackendIDs(nic: "nic0", ifindex: ifindex))
    }

    /// One end of a socket pair to keep, and the other, whose send fails (EPIPE, no signal) once
    /// the kept end is closed. Close-on-exec: other tests spawn QEMU and daemons meanwhile, and a
    /// child holding a copy of the kept end would keep it open after the keeper's close.
    static func socketPair() throws -> (kept: FileDescriptor, writer: Int32) {
        var ends: [Int32] = [-1, -1]
        try #require(
            socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0, &ends) == 0)
        return (FileDescriptor(adopting: ends[0]), ends[1])
    }

    /// Whether the end paired with `writer` is still open anywhere.
    static func readerOpen(_ writer: Int32) -> Bool {
        var byte: UInt8 = 0
        return send(writer, &byte, 1, Int32(MSG_NOSIGNAL | MSG_DONTWAIT)) == 1
    }

    @Test func pastItsCapacityATapIsClosedInsteadOfKept() async throws {
        let keeper = TapKeeper(capacity: 2)
        let pairs = try (0..<3).map { _ in try Self.socketPair() }
        defer { for pair in pairs { close(pair.writer) } }
        for (index, pair) in pairs.enumerated() {
            keeper.keep(pair.kept, for: Self.backend("web1", Int32(10 + index)))
        }
        await keeper.drain()
        #expect(keeper.backends(of: "web1") == [Self.backend("web1", 10).ids, Self.backend("web1", 11).ids])
        #expect(Self.readerOpen(pairs[0].writer) && Self.readerOpen(pairs[1].writer), "kept")
        #expect(!Self.readerOpen(pairs[2].writer), "the third was closed: the keeper was full")
    }

    @Test func aSecondTapForTheSameBackendReplacesTheFirst() async throws {
        let keeper = TapKeeper(capacity: 1)
        let first = try Self.socketPair()
        let second = try Self.socketPair()
        defer { for writer in [first.writer, second.writer] { close(writer) } }
        keeper.keep(first.kept, for: Self.backend("web1", 10))
        // A restarted QEMU given the same macvtap again: a full keeper still takes it.
        keeper.keep(second.kept, for: Self.backend("web1", 10))
        await keeper.drain()
        #expect(!Self.readerOpen(first.writer), "the first was let go")
        #expect(Self.readerOpen(second.writer), "the second is kept")
    }

    @Test func releaseLetsGoOnlyTheGoneBackendsOfThatVM() async throws {
        let keeper = TapKeeper(capacity: 8)
        let web10 = try Self.socketPair()
        let web11 = try Self.socketPair()
        let db10 = try Self.socketPair()
        defer { for writer in [web10.writer, web11.writer, db10.writer] { close(writer) } }
        keeper.keep(web10.kept, for: Self.backend("web1", 10))
        keeper.keep(web11.kept, for: Self.backend("web1", 11))
        keeper.keep(db10.kept, for: Self.backend("db1", 10))
        keeper.release(vm: "web1") { $0.ifindex == 10 }
        await keeper.drain()
        #expect(!Self.readerOpen(web10.writer), "web1's backend on ifindex 10 went")
        #expect(Self.readerOpen(web11.writer) && Self.readerOpen(db10.writer), "the rest stay, db1's too")
        #expect(keeper.backends(of: "web1") == [Self.backend("web1", 11).ids])
        #expect(keeper.backends(of: "db1") == [Self.backend("db1", 10).ids])
    }
}
