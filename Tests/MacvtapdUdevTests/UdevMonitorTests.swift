import MacvtapdTestSupport
import MacvtapdUdev
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// The monitor against real kernel uevents of a test namespace, and against udevd's announcements
/// in their wire format (the real udevd is exercised in the reconciler's end-to-end tests).
@Suite struct UdevMonitorTests {
    static func next(_ iterator: inout AsyncStream<UdevEvent>.Iterator, matching: (String, UdevNetDevice) -> Bool)
        async -> (String, UdevNetDevice)?
    {
        while let event = await iterator.next() {
            if case .device(let action, let device) = event, matching(action, device) { return (action, device) }
        }
        return nil
    }

    @Test func deliversNetEventsOfItsNamespaceAndStopsCleanly() async throws {
        let namespace = try await NetworkNamespace(prefix: "mvtudevmon")
        defer { namespace.discard() }
        let monitor = try await namespace.entered { try UdevMonitor(source: .kernel) }
        defer { monitor.close() }
        var events = monitor.events.makeAsyncIterator()

        try await namespace.ip("link", "add", "tmp0", "type", "veth", "peer", "name", "tmp0p")
        let added = await Self.next(&events) { action, device in action == "add" && device.name == "tmp0" }
        let index = try #require(added?.1.ifindex)
        #expect(added?.1.properties["SUBSYSTEM"] == "net")

        try await namespace.ip("link", "set", "tmp0", "name", "enp9s0")
        let moved = await Self.next(&events) { action, device in action == "move" && device.ifindex == index }
        #expect(moved?.1.name == "enp9s0", "a rename arrives as 'move' under the new name")

        try await namespace.ip("link", "del", "enp9s0")
        let removed = await Self.next(&events) { action, device in action == "remove" && device.ifindex == index }
        #expect(removed != nil)

        let start = ContinuousClock.now
        monitor.close()
        while await events.next() != nil {}
        #expect(ContinuousClock.now - start < .seconds(1), "the stream ends promptly when the monitor is closed")
    }

    @Test func udevSourceDeliversWhatUdevdAnnouncesInitialised() async throws {
        let namespace = try await NetworkNamespace(prefix: "mvtudevmon")
        defer { namespace.discard() }
        let monitor = try await namespace.entered { try UdevMonitor(source: .udev) }
        defer { monitor.close() }
        var events = monitor.events.makeAsyncIterator()

        try await UdevAnnouncer.announce(
            in: namespace, action: "move", name: "enp3s0", ifindex: 7, properties: ["ID_PATH": "pci-0000:03:00.0"])
        let event = await Self.next(&events) { action, _ in action == "move" }
        let device = try #require(event?.1)
        #expect(device.name == "enp3s0")
        #expect(device.ifindex == 7)
        #expect(device.isInitialized, "udevd announces a device once it is done with it")
        #expect(device.properties["ID_PATH"] == "pci-0000:03:00.0")
    }

    @Test func closingTwiceAndDroppingTheConsumerAreSafe() async throws {
        let monitor = try UdevMonitor(source: .kernel)
        monitor.close()
        monitor.close()
        var iterator = monitor.events.makeAsyncIterator()
        #expect(await iterator.next() == nil)
    }

    @Test func environmentDecidesFromTheControlSocketAndTheMode() throws {
        let run = try TemporaryDirectory()
        defer { run.remove() }
        #expect(UdevEnvironment(mode: .on, runDirectory: run.path).resolve().active)
        #expect(!UdevEnvironment(mode: .off, runDirectory: run.path).resolve().active)
        let missing = UdevEnvironment(mode: .auto, runDirectory: run.path).resolve()
        #expect(!missing.active)
        #expect(missing.why.contains("control is missing"), "\(missing.why)")

        try run.write("control", "")
        let present = UdevEnvironment(mode: .auto, runDirectory: run.path).resolve()
        #expect(present.active == Self.inPID1NetworkNamespace(), "\(present.why)")
    }

    @Test func autoIsOffInATestNamespaceEvenWithAControlSocket() async throws {
        let namespace = try await NetworkNamespace(prefix: "mvtudevenv")
        defer { namespace.discard() }
        let run = try TemporaryDirectory()
        defer { run.remove() }
        try run.write("control", "")
        let path = run.path
        let decision = try await namespace.entered { UdevEnvironment(mode: .auto, runDirectory: path).resolve() }
        #expect(!decision.active)
        #expect(decision.why.contains("udevd's network namespace"), "\(decision.why)")
    }

    static func inPID1NetworkNamespace() -> Bool {
        var own = stat()
        var initial = stat()
        guard stat("/proc/thread-self/ns/net", &own) == 0, stat("/proc/1/ns/net", &initial) == 0 else { return false }
        return own.st_ino == initial.st_ino
    }
}
