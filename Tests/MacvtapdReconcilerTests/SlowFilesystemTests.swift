import Logging
import MacvtapdCore
import MacvtapdTestSupport
import Testing

@testable import MacvtapdReconciler

#if canImport(Glibc)
    import Glibc
#endif

/// The status and metrics files on a filesystem that stops answering: reconciling goes on.
@Suite struct SlowFilesystemTests {
    static func isFIFO(_ path: String) -> Bool {
        var info = stat()
        return lstat(path, &info) == 0 && info.st_mode & S_IFMT == S_IFIFO
    }

    @Test func wedgedStatusAndMetricsWritesDoNotStallReconciling() async throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        let statusPath = directory.path + "/status.json"
        let metricsPath = directory.path + "/macvtapd.prom"
        // A FIFO at the temporary name AtomicFile opens: opening it for writing waits for a reader
        // that does not come, as a write to a hung mount waits for the server.
        let wedged = [statusPath, metricsPath].map { "\($0).tmp.\(getpid())" }
        for path in wedged { #expect(mkfifo(path, 0o600) == 0) }

        let world = ControllerTests.Fixture()
        let controller = Controller(
            host: world.host, connector: EmbeddedConnector(vms: ["web1": world.web1, "db1": world.db1]),
            store: StatusStore(path: statusPath),
            logger: Logger(label: "test", factory: { _ in SwiftLogNoOpLogHandler() }),
            options: .init(metricsPath: metricsPath))
        await controller.setDesired(world.desired, config: nil)
        let running = Task { await controller.run() }

        // Only the in-memory world is asked: a stalled controller would never answer an await.
        #expect(await eventually { world.web1.netdevIDs.count == 2 })
        for flap in 0..<3 {
            world.host.removeLower("eth0")
            #expect(await eventually { world.web1.netdevIDs.isEmpty }, "flap \(flap): detached")
            world.host.addLower("eth0")
            #expect(await eventually { world.web1.netdevIDs.count == 2 }, "flap \(flap): attached")
        }
        #expect(wedged.allSatisfy(Self.isFIFO), "the writes are still waiting")

        // The filesystem answers again: the waiting writes finish (renaming the FIFOs into place),
        // and the write at stop replaces them with the latest status.
        let readers = wedged.map { open($0, O_RDONLY | O_NONBLOCK | O_CLOEXEC) }
        #expect(await eventually { !wedged.contains(where: Self.isFIFO) })
        for reader in readers { close(reader) }
        await controller.stop()
        await running.value
        #expect(!Self.isFIFO(statusPath))
        let status = try StatusStore(path: statusPath).read()
        #expect(status?.binding(.init(vm: "web1", nic: "nic0"))?.phase == .attached)
    }
}
