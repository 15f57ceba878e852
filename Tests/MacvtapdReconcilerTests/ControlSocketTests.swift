import Foundation
import MacvtapdCore
import MacvtapdTestSupport
import Testing

#if canImport(Glibc)
    import Glibc
#endif

/// `plan`, `apply` and `status` through the control socket of a real `macvtapd run`, with a real
/// QEMU and veth host interfaces; and the socket as a way in: silent, malformed, oversized and
/// unprivileged clients, a second daemon, a daemon killed or restarted under a waiting CLI.
@Suite(.serialized) struct ControlSocketTests {
    static let nic0 = QEMUNIC(id: "nic0", mac: "52:54:00:c0:00:00", hubID: 10)

    static func phase(_ sandbox: Sandbox) -> Phase? {
        (try? sandbox.status())?.binding(BindingKey(vm: "web1", nic: "nic0"))?.phase
    }

    static func ourNetdevs(_ sandbox: Sandbox) async throws -> [String] {
        try await sandbox.network().netdevIDs.filter { $0.hasPrefix("mvtd.") }.sorted()
    }

    /// `macvtapd <arguments>` in the sandbox's namespace with exactly these arguments (the sandbox's
    /// own helper adds its config, which a candidate file must replace).
    static func cli(_ sandbox: Sandbox, _ arguments: [String]) async throws -> ChildResult {
        try await ChildProcess.run(
            "/usr/sbin/ip",
            ["netns", "exec", sandbox.namespace.name, sandbox.binary] + arguments + [
                "--control-socket", sandbox.controlSocketPath, "--status-file", sandbox.statusPath,
            ])
    }

    static func config(_ sandbox: Sandbox, lower: String, ghost: String? = nil) -> String {
        var yaml =
            "version: 1\nvms:\n  web1:\n    qmp: \(sandbox.qmpPath)\n    nics:\n      nic0:\n        host: \(lower)\n"
        if let ghost { yaml += "  ghost:\n    qmp: \(ghost)\n    nics:\n      nic0:\n        host: \(lower)\n" }
        return yaml
    }

    static func isLive(_ sandbox: Sandbox, pid: pid_t) async throws -> Bool {
        let status = try await sandbox.macvtapd("status")
        return status.status == 0 && status.stdout.contains("Live from the running macvtapd daemon (pid \(pid),")
    }

    @Test func planAndApplyGoThroughTheRunningDaemon() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0", "up1"]) { sandbox in
            try sandbox.writeConfig(Self.config(sandbox, lower: "up0"))
            // Only apply reloads here: the test changes the file and then asks for it.
            let daemon = try await sandbox.launchDaemon(["--no-watch-config"])
            #expect(await eventually(within: .seconds(10)) { Self.phase(sandbox) == .attached }, "\(daemon.log())")
            let netdevs = try await Self.ourNetdevs(sandbox)
            let macvtaps = try await sandbox.macvtaps().map(\.name)

            // The running config: the daemon answers from its own observations, fast.
            let started = ContinuousClock.now
            let plan = try await sandbox.macvtapd("plan", ["--detailed-exitcode"])
            let took = ContinuousClock.now - started
            #expect(plan.status == 0, "\(plan.stdout)\(plan.stderr)")
            #expect(plan.stdout.contains("Plan made by the running macvtapd daemon (pid \(daemon.pid), config "))
            #expect(plan.stdout.contains("web1/nic0  Attached: "), "\(plan.stdout)")
            #expect(plan.stdout.contains("No changes: 1 unchanged, 0 waiting."))
            #expect(took < .seconds(1), "plan through the daemon took \(took)")

            // A candidate that moves the NIC: the replace is shown, nothing changes.
            let candidate = try sandbox.directory.write("candidate.yaml", Self.config(sandbox, lower: "up1"))
            let moved = try await Self.cli(sandbox, ["plan", "-c", candidate, "--detailed-exitcode"])
            #expect(moved.status == 2, "\(moved.stdout)\(moved.stderr)")
            #expect(moved.stdout.contains("-/+ web1/nic0  host changed from up0 to up1"), "\(moved.stdout)")
            #expect(moved.stdout.contains("+ create macvtap"))
            #expect(moved.stdout.contains("Plan: 0 to create, 0 to update, 1 to replace, 0 to destroy"))

            let json = try await Self.cli(sandbox, ["plan", "-c", candidate, "--json"])
            #expect(json.status == 0, "\(json.stderr)")
            let document = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
            #expect(document?["format_version"] as? Int == 1)
            #expect(document?["changes"] as? Bool == true)
            let binding = (document?["bindings"] as? [[String: Any]])?.first
            #expect(binding?["change"] as? String == "replace")
            #expect(binding?["lower"] as? String == "up1")
            #expect(json.stderr.contains("Plan made by the running macvtapd daemon (pid \(daemon.pid)"))

            // apply of another file: refused, naming the daemon's config; nothing changes.
            let refused = try await Self.cli(sandbox, ["apply", "-c", candidate])
            #expect(refused.status == 1)
            #expect(refused.stderr.contains("running daemon (pid \(daemon.pid))"), "\(refused.stderr)")
            #expect(refused.stderr.contains("reads \(canonical(sandbox.configPath))"), "\(refused.stderr)")
            #expect(refused.stderr.contains("refusing to apply \(candidate)"))
            #expect(try await Self.ourNetdevs(sandbox) == netdevs, "plans and a refused apply change nothing")
            #expect(try await sandbox.macvtaps().map(\.name) == macvtaps)
            #expect(try await sandbox.frameReachesHub(from: "up0", nic: "nic0"))

            // The daemon's own file changed: apply makes it reload now, waits, and reports.
            try sandbox.writeConfig(Self.config(sandbox, lower: "up1"))
            let applied = try await sandbox.macvtapd("apply")
            #expect(applied.status == 0, "\(applied.stdout)\(applied.stderr)\n\(daemon.log())")
            #expect(applied.stdout.contains("Applied by the running macvtapd daemon (pid \(daemon.pid)"))
            #expect(applied.stdout.contains("-/+ web1/nic0  host changed from up0 to up1"), "\(applied.stdout)")
            #expect(applied.stdout.contains("web1/nic0: Attached"))
            #expect(applied.stdout.contains("Apply complete: 1 binding(s) changed, 0 failed, 0 waiting"))
            #expect(try await sandbox.frameReachesHub(from: "up1", nic: "nic0"))
            let again = try await sandbox.macvtapd("apply")
            #expect(again.status == 0)
            #expect(again.stdout.contains("Apply complete: 0 binding(s) changed"), "idempotent: \(again.stdout)")

            // An invalid file: the daemon validates it as it reloads it, and the CLI reports its
            // errors with file, line and column, as without a daemon; nothing changes.
            let settledNetdevs = try await Self.ourNetdevs(sandbox)
            try sandbox.writeConfig(
                Self.config(sandbox, lower: "up0").replacingOccurrences(of: "host: up0", with: "hots: up0"))
            let invalid = try await sandbox.macvtapd("apply")
            #expect(invalid.status == 1, "\(invalid.stdout)\(invalid.stderr)")
            #expect(
                invalid.stderr.contains("\(sandbox.configPath):7:9: error: unknown key 'hots'"), "\(invalid.stderr)")
            #expect(invalid.stderr.hasSuffix("\(sandbox.configPath): invalid configuration; nothing was changed\n"))
            #expect(!invalid.stdout.contains("Applied by"), "\(invalid.stdout)")
            #expect(daemon.log().contains("configuration rejected; the last good desired state stays"))
            #expect(try await Self.ourNetdevs(sandbox) == settledNetdevs, "an invalid file changes nothing")
            #expect(try await sandbox.frameReachesHub(from: "up1", nic: "nic0"))
            #expect(try await Self.isLive(sandbox, pid: daemon.pid))
            try sandbox.writeConfig(Self.config(sandbox, lower: "up1"))

            // No daemon: plan observes directly again (the daemon released the VM's monitor).
            #expect(await daemon.stop() == 0)
            #expect(!FileManager.default.fileExists(atPath: sandbox.controlSocketPath), "socket removed on stop")
            let direct = try await sandbox.macvtapd("plan", ["--detailed-exitcode"])
            #expect(direct.status == 0, "\(direct.stdout)\(direct.stderr)")
            #expect(!direct.stdout.contains("Plan made by"))
            #expect(direct.stdout.contains("web1/nic0  Attached: "))
            let status = try await sandbox.macvtapd("status")
            #expect(status.stdout.hasPrefix("From \(sandbox.statusPath), written "), "\(status.stdout)")
            #expect(status.stdout.contains("no daemon is running"))
        }
    }

    @Test func silentAndMalformedClientsNeverDelayReconciling() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(Self.config(sandbox, lower: "up0"))
            let daemon = try await sandbox.launchDaemon()
            #expect(await eventually(within: .seconds(10)) { Self.phase(sandbox) == .attached }, "\(daemon.log())")
            #expect(try await eventually(within: .seconds(5)) { try await Self.isLive(sandbox, pid: daemon.pid) })

            let silent = try RawControlClient(socket: sandbox.controlSocketPath)
            defer { silent.close() }
            let connected = ContinuousClock.now
            // Reconciling goes on while the silent client holds its connection.
            try await sandbox.deleteLower("up0")
            #expect(try await eventually(within: .seconds(3)) { try await Self.ourNetdevs(sandbox).isEmpty })
            try await sandbox.addLower("up0")
            #expect(try await sandbox.frameReachesHub(from: "up0", nic: "nic0"))

            // Two CLIs at once, while the silent one still waits.
            let results = try await withThrowingTaskGroup(of: ChildResult.self) { group in
                group.addTask { try await sandbox.macvtapd("plan") }
                group.addTask { try await sandbox.macvtapd("status") }
                var all: [ChildResult] = []
                for try await result in group { all.append(result) }
                return all
            }
            for result in results {
                #expect(result.status == 0, "\(result.stderr)")
                #expect(result.stdout.contains("the running macvtapd daemon (pid \(daemon.pid)"), "\(result.stdout)")
            }
            #expect(ContinuousClock.now - connected < .seconds(5), "the checks above ran before the request timeout")

            // Malformed calls get a clear error each.
            func reply(to message: String) async throws -> String? {
                let client = try RawControlClient(socket: sandbox.controlSocketPath)
                defer { client.close() }
                await client.send(Array(message.utf8) + [0])
                return await client.receive()
            }
            let garbage = try await reply(to: "not json")
            #expect(garbage?.contains("\"error\":\"io.macvtapd.InvalidRequest\"") == true, "\(garbage ?? "nothing")")
            #expect(garbage?.contains("not a varlink call") == true)
            let unknown = try await reply(to: #"{"method":"io.macvtapd.Destroy"}"#)
            #expect(unknown?.contains("org.varlink.service.MethodNotFound") == true, "\(unknown ?? "nothing")")
            #expect(unknown?.contains("io.macvtapd.Destroy") == true)
            let wrongType = try await reply(to: #"{"method":"io.macvtapd.Plan","parameters":{"files":42}}"#)
            #expect(wrongType?.contains("org.varlink.service.InvalidParameter") == true, "\(wrongType ?? "nothing")")
            #expect(wrongType?.contains("\"parameter\":\"files\"") == true)
            let invalid = try await reply(
                to:
                    #"{"method":"io.macvtapd.Plan","parameters":{"files":[{"path":"x.yaml","content":"version: 2\n"}]}}"#
            )
            #expect(invalid?.contains("io.macvtapd.ConfigInvalid") == true, "\(invalid ?? "nothing")")
            #expect(invalid?.contains("x.yaml:1:") == true)
            let info = try await reply(to: #"{"method":"org.varlink.service.GetInfo"}"#)
            #expect(info?.contains("\"interfaces\":[\"org.varlink.service\",\"io.macvtapd\"]") == true, "\(info ?? "")")

            // Larger than the limit (4 MiB) without an end: refused before decoding, and closed.
            let flood = try RawControlClient(socket: sandbox.controlSocketPath)
            defer { flood.close() }
            let sent = await flood.send([UInt8](repeating: UInt8(ascii: "a"), count: 5 << 20))
            #expect(sent < 5 << 20, "the daemon stopped reading")
            let tooLarge = await flood.receive()
            #expect(tooLarge?.contains("io.macvtapd.RequestTooLarge") == true, "\(tooLarge ?? "nothing")")
            #expect(tooLarge?.contains("\"limit\":4194304") == true)
            #expect(await flood.isClosed())

            // The silent client is told why and dropped once its 5 s are up.
            let told = await silent.receive(timeout: .seconds(8))
            #expect(told?.contains("io.macvtapd.RequestTimeout") == true, "\(told ?? "nothing")")
            #expect(told?.contains("no call arrived within 5.0 s") == true)
            #expect(await silent.isClosed())
            #expect(try await Self.isLive(sandbox, pid: daemon.pid))
            #expect(await daemon.stop() == 0, "\(daemon.log())")
        }
    }

    @Test func connectionsBeyondTheLimitAreToldBusyAndTheNextCallIsServed() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(Self.config(sandbox, lower: "up0"))
            let daemon = try await sandbox.launchDaemon()
            #expect(try await eventually(within: .seconds(10)) { try await Self.isLive(sandbox, pid: daemon.pid) })

            // 16 connections that say nothing hold every slot (the limit, ControlProtocol.Limits).
            var held: [RawControlClient] = []
            defer { for client in held { client.close() } }
            for _ in 0..<16 { held.append(try RawControlClient(socket: sandbox.controlSocketPath)) }
            let extra = try RawControlClient(socket: sandbox.controlSocketPath)
            defer { extra.close() }
            let busy = await extra.receive(timeout: .seconds(3))
            #expect(busy?.contains("\"error\":\"io.macvtapd.Busy\"") == true, "\(busy ?? "nothing")")
            #expect(busy?.contains("\"limit\":16") == true)
            #expect(await extra.isClosed())

            // Slots free again once the silent ones go; reconciling never waited on any of them.
            for client in held { client.close() }
            held = []
            #expect(
                try await eventually(within: .seconds(5)) { try await Self.isLive(sandbox, pid: daemon.pid) },
                "a call is served once connections are free")
            #expect(await daemon.stop() == 0, "\(daemon.log())")
        }
    }

    @Test func oneDaemonPerRunDirectoryAndAKilledOneNeverBlocksTheNext() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(Self.config(sandbox, lower: "up0"))
            let first = try await sandbox.launchDaemon()
            #expect(await eventually(within: .seconds(10)) { Self.phase(sandbox) == .attached }, "\(first.log())")
            #expect(try await eventually(within: .seconds(5)) { try await Self.isLive(sandbox, pid: first.pid) })

            let second = try await sandbox.macvtapd("run", ["--metrics-file", ""])
            #expect(second.status == 1)
            #expect(second.stderr.contains("another macvtapd already runs"), "\(second.stderr)")
            #expect(second.stderr.contains("(pid \(first.pid), config \(canonical(sandbox.configPath))"))
            #expect(try await Self.isLive(sandbox, pid: first.pid), "the first one still answers")

            // Killed: its socket and lock file stay behind, and block nothing.
            await first.stop(signal: SIGKILL)
            #expect(FileManager.default.fileExists(atPath: sandbox.controlSocketPath))
            let stale = try await sandbox.macvtapd("status")
            #expect(stale.status == 0)
            #expect(stale.stdout.contains("no daemon is running"), "\(stale.stdout)")
            #expect(stale.stdout.contains("web1/nic0  Attached"))

            let next = try await sandbox.launchDaemon()
            #expect(try await eventually(within: .seconds(5)) { try await Self.isLive(sandbox, pid: next.pid) })
            #expect(await next.stop() == 0, "\(next.log())")
        }
    }

    @Test func aHungVMIsNeverNoChangesAndARestartEndsAWaitingApplyClearly() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(Self.config(sandbox, lower: "up0"))
            let daemon = try await sandbox.launchDaemon(["--no-watch-config"])
            #expect(await eventually(within: .seconds(10)) { Self.phase(sandbox) == .attached }, "\(daemon.log())")
            // A VM whose monitor accepts and never greets: a hung QEMU.
            let ghost = try SilentListener(path: sandbox.directory.path + "/ghost.qmp")
            defer { ghost.close() }
            try sandbox.writeConfig(Self.config(sandbox, lower: "up0", ghost: ghost.path))

            let plan = try await sandbox.macvtapd("plan", ["--detailed-exitcode"])
            #expect(plan.status == 1, "unknown is not 'no changes': \(plan.stdout)\(plan.stderr)")
            #expect(plan.stdout.contains("No changes known: 1 unchanged, 0 waiting, 1 unknown (VM not answering)."))
            #expect(plan.stderr.contains("1 binding(s) could not be planned"))

            // apply waits for the new VM's first connect (up to the 3 s QMP timeout); the daemon
            // restarts meanwhile.
            let apply = Task { try await sandbox.macvtapd("apply") }
            #expect(await eventually(within: .seconds(3)) { daemon.log().contains("apply requested") })
            #expect(await daemon.stop() == 0)
            let fresh = try await sandbox.launchDaemon(["--no-watch-config"])
            let result = try await apply.value
            #expect(result.status == 1)
            #expect(result.stderr.contains("stopped"), "\(result.stdout)\(result.stderr)")
            #expect(try await eventually(within: .seconds(5)) { try await Self.isLive(sandbox, pid: fresh.pid) })
            #expect(await fresh.stop() == 0)
        }
    }

    @Test func onlyRootOrTheGrantedGroupMayConnect() async throws {
        try await Sandbox.with(nics: [Self.nic0], lowers: ["up0"]) { sandbox in
            try sandbox.writeConfig(Self.config(sandbox, lower: "up0"))
            func status(as user: Int) async throws -> ChildResult {
                try await ChildProcess.run(
                    "/usr/bin/setpriv",
                    [
                        "--reuid=\(user)", "--regid=\(user)", "--clear-groups", sandbox.binary, "status",
                        "--control-socket", sandbox.controlSocketPath, "--status-file", sandbox.statusPath,
                    ])
            }
            let rootOnly = try await sandbox.launchDaemon()
            #expect(try await eventually(within: .seconds(5)) { try await Self.isLive(sandbox, pid: rootOnly.pid) })
            var info = stat()
            #expect(stat(sandbox.controlSocketPath, &info) == 0 && info.st_mode & 0o777 == 0o600)
            let outsider = try await status(as: 65534)
            #expect(outsider.status == 1)
            #expect(outsider.stderr.contains("Permission denied"), "\(outsider.stderr)")
            #expect(outsider.stderr.contains("--control-group"))
            #expect(await rootOnly.stop() == 0)

            let granted = try await sandbox.launchDaemon(["--control-group", "65534"])
            #expect(try await eventually(within: .seconds(5)) { try await Self.isLive(sandbox, pid: granted.pid) })
            #expect(
                stat(sandbox.controlSocketPath, &info) == 0 && info.st_mode & 0o777 == 0o660 && info.st_gid == 65534)
            let member = try await status(as: 65534)
            #expect(member.status == 0, "\(member.stderr)")
            #expect(member.stdout.contains("Live from the running macvtapd daemon (pid \(granted.pid)"))
            // With the socket's mode widened behind the daemon's back, its own check still refuses.
            chmod(sandbox.controlSocketPath, 0o666)
            let stranger = try await status(as: 65533)
            #expect(stranger.status == 1)
            #expect(stranger.stderr.contains("uid 65533 may not use this socket"), "\(stranger.stderr)")
            #expect(await granted.stop() == 0)
        }
    }
}

/// A path with symlinks resolved, as the daemon names its configuration.
private func canonical(_ path: String) -> String {
    guard let resolved = realpath(path, nil) else { return path }
    defer { free(resolved) }
    return String(cString: resolved)
}
