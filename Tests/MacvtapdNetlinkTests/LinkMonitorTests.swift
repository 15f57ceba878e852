import Glibc
import MacvtapdConfig
import MacvtapdCore
import MacvtapdNetlink
import MacvtapdTestSupport
import Testing

/// User (non-kernel) NETLINK_ROUTE sockets of a namespace, from its /proc/net/netlink: only this
/// test uses its namespace, so the count is exact even with other tests running. Read from inside
/// the namespace, on a thread of its own.
func userRouteSockets(in namespace: NetworkNamespace) async throws -> Int {
    try await namespace.entered {
        let fd = open("/proc/thread-self/net/netlink", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else {
            throw NetlinkError(operation: "open /proc/thread-self/net/netlink", interface: nil, errno: errno)
        }
        defer { close(fd) }
        var text: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 8192)
        while true {
            let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if count <= 0 { break }
            text += chunk[0..<count]
        }
        return String(decoding: text, as: UTF8.self).split(separator: "\n").dropFirst().filter { line in
            let columns = line.split(separator: " ")
            return columns.count > 2 && columns[1] == "0" && columns[2] != "0"
        }.count
    }
}

/// A child spawned by a parallel test holds copies of every descriptor between its fork and its
/// exec (close-on-exec closes them only then), so a closed socket may linger for that instant.
func settledUserRouteSockets(in namespace: NetworkNamespace, expecting expected: Int) async throws -> Int {
    let deadline = ContinuousClock.now + .seconds(2)
    var count = try await userRouteSockets(in: namespace)
    while count != expected && ContinuousClock.now < deadline {
        try await Task.sleep(for: .milliseconds(2))
        count = try await userRouteSockets(in: namespace)
    }
    return count
}

@Suite("Link monitor")
struct LinkMonitorTests {
    @Test func creationAndLowerDeletionAreReported() async throws {
        try await NetlinkTestHost.with { host in
            let monitor = try LinkMonitor(networkNamespace: host.namespace.path)
            defer { monitor.close() }
            let macvtap = try await host.route.createMacvtap(host.macvtap())
            // Deleting the lower takes its macvtaps with it.
            try await host.route.deleteLink(index: host.lower.index)
            var deleted: Set<String> = []
            let seen = await events(from: monitor) { event in
                if case .deleted(let link) = event { deleted.insert(link.name) }
                return deleted.isSuperset(of: ["mvt0", "lower0"])
            }
            #expect(deleted.isSuperset(of: ["mvt0", "lower0"]), "saw \(seen)")
            let added = seen.compactMap { event -> Link? in
                if case .added(let link) = event { return link }
                return nil
            }
            #expect(added.map(\.name).first == "mvt0")
            #expect(added.first?.index == macvtap.index)
            #expect(!seen.contains(.resyncNeeded))
            let removed = seen.compactMap { event -> Link? in
                if case .deleted(let link) = event, link.name == "mvt0" { return link }
                return nil
            }
            #expect(removed.first?.kind == "macvtap")
            #expect(removed.first?.alias == "macvtapd:vm/nic0", "a deletion still says whose it was")
            await #expect(throws: NetlinkError.self) { try await host.route.link(index: macvtap.index) }
        }
    }

    @Test func changesAreReportedAsChanged() async throws {
        try await NetlinkTestHost.with { host in
            let macvtap = try await host.route.createMacvtap(host.macvtap())
            let monitor = try LinkMonitor(networkNamespace: host.namespace.path)
            defer { monitor.close() }
            try await host.route.setAlias("macvtapd:moved/nic9", index: macvtap.index)
            let seen = await events(from: monitor) { event in
                if case .changed(let link) = event { return link.alias == "macvtapd:moved/nic9" }
                return false
            }
            #expect(seen.last == .changed(try await host.route.link(index: macvtap.index)))
        }
    }

    @Test func kernelOverflowSurfacesAsResyncNeeded() async throws {
        try await NetlinkTestHost.with { host in
            // Subscribed but not yet read: the smallest receive buffer the kernel allows holds two or
            // three link messages, so the kernel must drop some of the twenty creations.
            let monitor = try LinkMonitor(
                networkNamespace: host.namespace.path, receiveBufferSize: 1,
                eventBufferLimit: LinkMonitor.defaultEventBufferLimit, startReading: false)
            defer { monitor.close() }
            for index in 0..<20 {
                _ = try await host.route.createMacvtap(host.macvtap("mvt\(index)", address: nil, alias: nil))
            }
            try monitor.startReading()
            let seen = await events(from: monitor) { $0 == .resyncNeeded }
            #expect(seen.last == .resyncNeeded, "saw \(seen.count) events, none a resync notice")
            #expect(seen.count < 20)
        }
    }

    @Test func monitorThatNeverStartedClosesCleanly() async throws {
        try await NetlinkTestHost.with { host in
            let monitor = try LinkMonitor(
                networkNamespace: host.namespace.path, receiveBufferSize: nil, eventBufferLimit: 1, startReading: false)
            #expect(try await settledUserRouteSockets(in: host.namespace, expecting: 2) == 2)
            monitor.close()
            #expect(try await settledUserRouteSockets(in: host.namespace, expecting: 1) == 1)
            for await event in monitor.events { Issue.record("unexpected \(event)") }
        }
    }

    @Test func slowConsumerOverflowSurfacesAsResyncNeeded() async throws {
        try await NetlinkTestHost.with { host in
            let monitor = try LinkMonitor(networkNamespace: host.namespace.path, eventBufferLimit: 2)
            defer { monitor.close() }
            for index in 0..<5 {
                _ = try await host.route.createMacvtap(host.macvtap("mvt\(index)", address: nil, alias: nil))
            }
            let seen = await events(from: monitor) { $0 == .resyncNeeded }
            // Two buffered events (more if the reader was still delivering when we started reading),
            // then the notice for what had to be dropped.
            #expect(seen.last == .resyncNeeded, "\(seen)")
            #expect(seen.count >= 3)
            #expect(!seen.dropLast().contains(.resyncNeeded))
        }
    }

    @Test func closeEndsTheStreamAndFreesEverything() async throws {
        try await NetlinkTestHost.with { host in
            #expect(try await settledUserRouteSockets(in: host.namespace, expecting: 1) == 1, "the host's route socket")
            let monitor = try LinkMonitor(networkNamespace: host.namespace.path)
            #expect(try await settledUserRouteSockets(in: host.namespace, expecting: 2) == 2)
            let consumer = Task {
                var count = 0
                for await _ in monitor.events { count += 1 }
                return count
            }
            monitor.close()
            _ = await consumer.value
            #expect(try await settledUserRouteSockets(in: host.namespace, expecting: 1) == 1)
            monitor.close()

            do {
                let dropped = try LinkMonitor(networkNamespace: host.namespace.path)
                #expect(try await settledUserRouteSockets(in: host.namespace, expecting: 2) == 2)
                _ = dropped
            }
            #expect(try await settledUserRouteSockets(in: host.namespace, expecting: 1) == 1, "deinit closes too")

            let cancelled = try LinkMonitor(networkNamespace: host.namespace.path)
            let iteration = Task { for await _ in cancelled.events {} }
            iteration.cancel()
            await iteration.value
            cancelled.close()
            #expect(
                try await settledUserRouteSockets(in: host.namespace, expecting: 1) == 1,
                "a cancelled consumer stops the reader")

            host.route.close()
            #expect(try await settledUserRouteSockets(in: host.namespace, expecting: 0) == 0)
        }
    }

    @Test func tapDescriptorIsClosedExactlyOnceAndCanBeTaken() async throws {
        try await NetlinkTestHost.with { host in
            let macvtap = try await host.route.createMacvtap(host.macvtap())
            let tap = try await host.device.open(macvtap)
            let directory = host.runtimeDirectory
            #expect(openDescriptors(under: directory) == 1)
            await tap.closeOffPool()
            await tap.closeOffPool()
            #expect(openDescriptors(under: directory) == 0)
            #expect(throws: FileDescriptorClosedError.self) { try tap.withRawValue { $0 } }

            let taken = try await host.device.open(macvtap)
            let raw = try #require(taken.take())
            #expect(taken.take() == nil)
            await taken.closeOffPool()
            #expect(openDescriptors(under: directory) == 1, "taken means the caller owns it now")
            await offPool { _ = close(raw) }
            #expect(openDescriptors(under: directory) == 0)
            #expect(host.runtimeDirectoryEntries().isEmpty)
        }
    }
}

@Suite("Own namespace")
struct OwnNamespaceTests {
    /// Read-only: the process's own namespace is shared with everything else on the machine.
    @Test(.timeLimit(.minutes(1)))
    func socketAndMonitorWithoutANamespacePathUseTheCallersNamespace() async throws {
        let route = try RouteSocket()
        defer { route.close() }
        let loopback = try await route.link(named: "lo")
        #expect(loopback.index == 1)
        #expect(try await route.links().contains { $0.name == "lo" })
        let monitor = try LinkMonitor()
        monitor.close()
        // The stream ends once the monitor is closed (the loop finishes). It may first hand out
        // what the kernel sent before the close: other tests make links in this shared namespace
        // at any moment (ProbeTap), so their number is not this test's to check.
        for await _ in monitor.events {}
    }

    @Test func unknownNamespacePathIsAClearError() {
        let error = #expect(throws: NetlinkError.self) { try RouteSocket(networkNamespace: "/run/netns/mvtd-none") }
        #expect(error?.errno == ENOENT)
        #expect(error?.operation == "open network namespace /run/netns/mvtd-none")
    }
}

/// Descriptors of this process opened through a node under `directory` (one test's private
/// runtime directory): exact even with other tests opening taps, whose device numbers a deleted
/// macvtap hands on to the next one.
func openDescriptors(under directory: String) -> Int {
    guard let listing = opendir("/proc/self/fd") else { return -1 }
    defer { closedir(listing) }
    var count = 0
    while let entry = readdir(listing) {
        let name = direntName(entry)
        guard Int32(name) != nil else { continue }
        var target = [CChar](repeating: 0, count: 4096)
        let length = readlink("/proc/self/fd/\(name)", &target, target.count - 1)
        guard length > 0 else { continue }
        let path = String(decoding: target[0..<length].map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if path.hasPrefix(directory + "/") { count += 1 }
    }
    return count
}
