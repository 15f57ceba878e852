import Foundation
import MacvtapdCore
import MacvtapdQMP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// One live migration as QEMU reports it.
public struct MigrationRecord: Sendable {
    /// `query-migrate` → `downtime`: how long the guest was stopped, by QEMU's own count.
    public var downtime: Duration
    /// `query-migrate` → `total-time`.
    public var totalTime: Duration
    /// When the migration command was sent (wall µs).
    public var startedAt: Int64
    /// The source's STOP (its final stage began; wall µs, QEMU's stamp).
    public var sourceStoppedAt: Int64
    /// The destination's RESUME: the handover (wall µs, QEMU's stamp).
    public var resumedAt: Int64
}

public enum LiveMigration {
    /// The configuration for a guest's QEMU on one host: an extra monitor at `monitor` (the path the
    /// host's macvtapd is configured with, the same for every QEMU of the VM on that host), and for
    /// a destination `-incoming unix:<incoming>`.
    public static func configuration(_ base: GuestConfiguration, monitor: String, incoming: String? = nil)
        -> GuestConfiguration
    {
        var configuration = base
        configuration.extraQEMUArguments += ["-qmp", "unix:\(monitor),server=on,wait=off"]
        if let incoming { configuration.extraQEMUArguments += ["-incoming", "unix:\(incoming)"] }
        return configuration
    }

    /// Migrates `source` to `destination` (started with `-incoming unix:<incoming>`) over QMP
    /// `migrate`, through each VM's test monitor, and waits for the destination's RESUME.
    public static func migrate(
        _ source: GuestVM, to destination: GuestVM, incoming: String, timeout: Duration = .seconds(30)
    ) async throws -> MigrationRecord {
        let from = try await QMPClient.connect(to: source.testQMPSocketPath)
        let to: QMPClient
        do {
            to = try await QMPClient.connect(to: destination.testQMPSocketPath)
        } catch {
            await from.close()
            throw error
        }
        let stamps = HandoverStamps()
        let watchers = [
            Task {
                for await event in from.events where event.name == "STOP" {
                    stamps.value.withLock { $0.stop = $0.stop ?? event.timestampMicroseconds }
                }
            },
            Task {
                for await event in to.events where event.name == "RESUME" {
                    stamps.value.withLock { $0.resume = $0.resume ?? event.timestampMicroseconds }
                }
            },
        ]
        func finish() async {
            await from.close()
            await to.close()
            for watcher in watchers { await watcher.value }
        }
        do {
            let startedAt = WallClock.now()
            try await from.execute("migrate", arguments: .object(["uri": .string("unix:\(incoming)")]))
            let deadline = ContinuousClock.now + timeout
            var info: JSONValue = .object([:])
            while true {
                info = try await from.execute("query-migrate")
                let status = info["status"]?.stringValue ?? "none"
                if status == "completed" { break }
                if ["failed", "cancelled"].contains(status) || ContinuousClock.now > deadline {
                    throw ChildError("migration \(status): \(info)")
                }
                try await Task.sleep(for: .milliseconds(10))
            }
            while stamps.value.withLock({ $0.stop == nil || $0.resume == nil }) {
                guard ContinuousClock.now < deadline else {
                    throw ChildError(
                        "no STOP on the source or no RESUME on the destination: \(stamps.value.withLock { $0 })")
                }
                try await Task.sleep(for: .milliseconds(2))
            }
            let (stop, resume) = stamps.value.withLock { $0 }
            await finish()
            return MigrationRecord(
                downtime: .milliseconds(info["downtime"]?.intValue ?? -1),
                totalTime: .milliseconds(info["total-time"]?.intValue ?? -1), startedAt: startedAt,
                sourceStoppedAt: stop ?? 0, resumedAt: resume ?? 0)
        } catch {
            await finish()
            throw error
        }
    }
}

/// The STOP and RESUME stamps of one migration, filled by the event watchers.
private final class HandoverStamps: Sendable {
    let value = Mutex<(stop: Int64?, resume: Int64?)>((nil, nil))
}
