import Foundation
import MacvtapdCore
import MacvtapdTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `macvtapd run` whose best-effort outputs have a reader that does not read: systemd's notify
/// socket full, standard error a full pipe. The daemon keeps detaching, attaching and reloading.
@Suite(.serialized) struct SlowReaderEndToEndTests {
    static let nic0 = QEMUNIC(id: "nic0", mac: "52:54:00:d0:00:01", hubID: 10)

    static func ourNetdevs(_ sandbox: Sandbox) async throws -> [String] {
        try await sandbox.network().netdevIDs.filter { $0.hasPrefix("mvtd.") }
    }

    /// Flaps `up0` `times` times, each time waiting for the detach and for frames to flow again,
    /// then moves the NIC to `up1` through the watched config file.
    static func flapsAndReload(_ sandbox: Sandbox, times: Int, log: () -> String) async throws {
        #expect(
            try await eventually(within: .seconds(10)) { try await Self.ourNetdevs(sandbox).count == 2 }, "\(log())")
        for flap in 0..<times {
            try await sandbox.deleteLower("up0")
            let detached = try await eventually(within: .seconds(10)) { try await Self.ourNetdevs(sandbox).isEmpty }
            #expect(detached, "flap \(flap): dead backend detached")
            try await sandbox.addLower("up0")
            let flowing = try await sandbox.frameReachesHub(from: "up0", nic: "nic0", within: .seconds(10))
            #expect(flowing, "flap \(flap): attached again")
            if !detached || !flowing { return }
        }
        try sandbox.writeConfig(bindings: [("nic0", "up1")])
        #expect(try await sandbox.frameReachesHub(from: "up1", nic: "nic0", within: .seconds(10)), "reload applied")
    }

    @Test func unreadNotifySocketDoesNotStopReconciling() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0", "up1"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            let notify = try NotifySocket(path: sandbox.directory.path + "/notify.sock")
            defer { notify.close() }
            // Full before the daemon says anything, as under a busy PID 1; the watchdog pings too.
            let filled = try notify.fill()
            let daemon = try await sandbox.launchDaemon(
                environment: ["NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000"])
            try await Self.flapsAndReload(sandbox, times: 4) { daemon.log() }

            // systemd catches up: it hears that the daemon is ready, with the current STATUS=.
            for _ in 0..<filled { _ = await notify.receive() }
            var heard: [String] = []
            let told = await eventually(within: .seconds(5)) {
                heard += notify.drain()
                return heard.contains { $0.contains("READY=1") }
                    && heard.last { $0.contains("STATUS=") }?.contains("STATUS=1 binding(s): 1 Attached") == true
            }
            #expect(told, "\(heard)")
            #expect(await daemon.stop() == 0, "graceful stop: \(daemon.log())")
        }
    }

    @Test func unreadStandardErrorPipeDoesNotStopReconciling() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0", "up1"]) { sandbox in
            try sandbox.writeConfig(bindings: [("nic0", "up0")])
            var ends: [Int32] = [0, 0]
            #expect(pipe(&ends) == 0)
            let (reader, writer) = (ends[0], ends[1])
            defer { close(reader) }
            for end in ends { _ = fcntl(end, F_SETFD, FD_CLOEXEC) }
            for end in ends { _ = fcntl(end, F_SETFL, O_NONBLOCK) }
            // The smallest pipe (F_SETPIPE_SZ, which Glibc's Swift overlay does not export), full
            // before the daemon logs a line.
            let setPipeSize: Int32 = 1024 + 7
            _ = fcntl(writer, setPipeSize, 4096)
            let filler = [UInt8](repeating: UInt8(ascii: "x"), count: 512)
            while write(writer, filler, filler.count) > 0 {}
            #expect(errno == EAGAIN)
            // The daemon's end blocks, as a pipe's usually does.
            _ = fcntl(writer, F_SETFL, 0)
            let daemon = try await sandbox.launchDaemon(["--log-level", "debug"], stderr: writer)
            close(writer)
            try await Self.flapsAndReload(sandbox, times: 4) { "" }

            // The reader comes back: it gets what was logged while it was away (up to the queue's
            // limit; QueuedOutputTests covers what is dropped past it).
            var text = ""
            let caughtUp = await eventually(within: .seconds(5)) {
                var buffer = [UInt8](repeating: 0, count: 65536)
                while case let count = read(reader, &buffer, buffer.count), count > 0 {
                    text += String(decoding: buffer[..<count], as: UTF8.self)
                }
                return text.components(separatedBy: "configuration loaded").count == 3
            }
            #expect(caughtUp, "the start and the reload: \(text.suffix(2000))")
            #expect(text.contains("binding=web1/nic0"))
            #expect(await daemon.stop() == 0)
        }
    }
}
