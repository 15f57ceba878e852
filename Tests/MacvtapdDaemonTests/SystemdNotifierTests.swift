import Foundation
import MacvtapdDaemon
import MacvtapdTestSupport
import Synchronization
import Testing

#if canImport(Glibc)
    import Glibc
#endif

@Suite struct SystemdNotifierTests {
    @Test(arguments: [false, true])
    func sendsDatagrams(abstract: Bool) async throws {
        let socket = try NotifySocket(
            path: abstract ? nil : "/tmp/macvtapd-notify-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        defer { socket.close() }
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.path])
        notifier.ready(status: "3 binding(s): 3 Attached")
        #expect(await socket.receive() == "READY=1\nSTATUS=3 binding(s): 3 Attached")
        notifier.watchdog()
        #expect(await socket.receive() == "WATCHDOG=1")
        #expect(notifier.isDrained)
    }

    /// A PID 1 that reads late: nothing waits, the latest of everything arrives once it reads, and
    /// the STATUS= lines in between are dropped.
    @Test func fullSocketNeverBlocksAndTheLatestArrivesLater() async throws {
        let socket = try NotifySocket()
        defer { socket.close() }
        let filled = try socket.fill()
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.path])
        // On a thread of its own: a blocking send must fail the test, not hang the runner's threads.
        let returned = Mutex(false)
        Thread.detachNewThread {
            notifier.ready(status: "starting")
            for count in 0..<1_000 { notifier.status("\(count) binding(s)") }
            notifier.watchdog()
            returned.withLock { $0 = true }
        }
        #expect(await eventually { returned.withLock { $0 } }, "a notification waited for the full socket")
        #expect(!notifier.isDrained)

        // Exactly the fillers: the retry may deliver the rest while they are being read.
        var fillers: [String?] = []
        for _ in 0..<filled { fillers.append(await socket.receive()) }
        #expect(fillers.allSatisfy { $0 == "X_FILLER=1" })
        #expect(await socket.receive() == "READY=1\nSTATUS=999 binding(s)\nWATCHDOG=1")
        #expect(await eventually { notifier.isDrained })
        #expect(await socket.receive(timeout: .milliseconds(100)) == nil, "the dropped STATUS= lines stay dropped")
    }

    @Test func stoppingIsNotUndoneByALaterReady() async throws {
        let socket = try NotifySocket()
        defer { socket.close() }
        let filled = try socket.fill()
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": socket.path])
        notifier.reloading()
        notifier.stopping()
        notifier.ready()
        for _ in 0..<filled { _ = await socket.receive() }
        #expect(await socket.receive() == "STOPPING=1")
    }

    @Test func silentWithoutSystemd() {
        let notifier = SystemdNotifier(environment: [:])
        #expect(!notifier.isEnabled)
        notifier.ready()
        #expect(notifier.isDrained)
        #expect(notifier.watchdogInterval == nil)
    }

    @Test func nobodyListeningIsIgnored() {
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": "/nonexistent/notify.sock"])
        notifier.ready()
        #expect(notifier.isDrained, "no retry for a socket that is not there")
    }

    @Test func watchdogIntervalIsHalfTheTimeout() {
        let notifier = SystemdNotifier(environment: ["NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000"])
        #expect(notifier.watchdogInterval == .seconds(1))
        let otherProcess = SystemdNotifier(environment: ["WATCHDOG_USEC": "2000000", "WATCHDOG_PID": "1"])
        #expect(otherProcess.watchdogInterval == nil, "the watchdog belongs to another process")
    }
}
