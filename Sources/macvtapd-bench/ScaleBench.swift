import ArgumentParser
import Foundation
import MacvtapdCore
import MacvtapdNetlink
import MacvtapdTestSupport

struct ScaleBench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "scale",
        abstract: "1,000 bindings: converge, no-op resync, a 100-binding lower flap, footprint; beside 1 s polling.",
        discussion: """
            Starts --vms QEMUs with --nics NICs each (paused with -S: no frames are needed) and
            --lowers veth host interfaces in a network namespace; NIC j of VM i is bound to lower
            (i * nics + j) mod lowers. Progress is read from the daemon's metrics textfile
            (bindings by phase), which is rewritten whenever status changes.
            """)

    @Option(help: "QEMU processes.") var vms = 40
    @Option(help: "NICs per QEMU (q35 fits about 28).") var nics = 25
    @Option(help: "Host interfaces.") var lowers = 10
    @Option(help: "Flaps of lower 0.") var flaps = 5
    @Option(help: "Plans through the daemon (and twice as many applies).") var repeats = 5
    @Option(help: "Seconds of idle CPU measurement at the default resync of 30 s (the target is over 60 s).")
    var idleSeconds = 60
    @Option(help: "Seconds of idle CPU measurement of the 1 s polling baseline.") var baselineIdleSeconds = 20
    @Option(
        help: ArgumentHelp(
            "The macvtapd binary to measure (default: the one built next to this bench; `make bench` passes the installed kind, `make release`'s).",
            valueName: "path"))
    var macvtapd: String?

    func run() async throws {
        let total = vms * nics
        print("scale: \(vms) VMs x \(nics) NICs = \(total) bindings over \(lowers) lowers")
        let namespace = try await NetworkNamespace(prefix: "mvtdscale")
        defer { try? namespace.delete() }
        let directory = try TemporaryDirectory()
        defer {
            rmdir(Self.deviceDirectory(for: directory))
            directory.remove()
        }
        try await addLowers((0..<lowers).map { "l\($0)" }, in: namespace)

        var qemus: [QEMUProcess] = []
        do {
            for vm in 0..<vms {
                let devices = (0..<nics).map { nic in
                    QEMUNIC(id: "n\(nic)", mac: String(format: "52:54:%02x:%02x:00:01", vm, nic), hubID: nic + 1)
                }
                qemus.append(try await QEMUProcess.launch(QEMUOptions(nics: devices, paused: true)))
            }
            try await measure(qemus: qemus, namespace: namespace, directory: directory)
        } catch {
            for qemu in qemus { await qemu.terminate() }
            throw error
        }
        for qemu in qemus { await qemu.terminate() }
    }

    func measure(qemus: [QEMUProcess], namespace: NetworkNamespace, directory: TemporaryDirectory) async throws {
        let total = vms * nics
        let binary = try macvtapd ?? ChildProcess.macvtapdBinary()
        let linking = try await ChildProcess.run("/usr/bin/ldd", [binary])
        print(
            "daemon binary: \(binary) (Swift runtime "
                + (linking.stdout.contains("libswiftCore") ? "in shared libraries" : "linked in, as installed") + ")")
        var yaml = "version: 1\nvms:\n"
        for (vm, qemu) in qemus.enumerated() {
            yaml += "  vm\(vm):\n    qmp: \(qemu.qmpSocketPath)\n    nics:\n"
            for nic in 0..<nics { yaml += "      n\(nic): {host: l\((vm * nics + nic) % lowers)}\n" }
        }
        let config = try directory.write("macvtapd.yaml", yaml)
        let metrics = Self.metricsPath(in: directory)
        func attached() -> Int { Int(metric(metrics, "macvtapd_bindings{phase=\"Attached\"}") ?? 0) }
        func hostMissing() -> Int { Int(metric(metrics, "macvtapd_bindings{phase=\"HostMissing\"}") ?? 0) }
        func start(_ extra: [String]) throws -> BackgroundProcess {
            try startDaemon(binary: binary, config: config, namespace: namespace, directory: directory, extra: extra)
        }
        let monitor = try LinkMonitor(networkNamespace: namespace.path)
        let notifications = LinkNotifications(monitor)
        defer { monitor.close() }

        // 0. Footprint without bindings: whole short processes (peak, GNU time), a daemon with an
        // empty configuration (VmRSS and VmHWM two seconds after it started).
        let footprint = try await footprintWithoutBindings(
            binary: binary, config: config, namespace: namespace, directory: directory)

        // 1. Converge from nothing, then no-op resyncs every 5 s.
        let clock = ContinuousClock()
        let qemuPIDs = qemus.map(\.pid)
        let beforeConverge = CPUBreakdown.Snapshot.now(daemon: nil, qemus: qemuPIDs)
        let started = clock.now
        var daemon = try start(["--resync", "5"])
        guard let converged = await waitUntil(timeout: .seconds(120), every: .milliseconds(5), { attached() == total })
        else { throw ChildError("did not converge: \(attached()) attached\n\(daemon.log().suffix(2000))") }
        let convergeTime = converged - started
        let convergeBreakdown = CPUBreakdown(
            from: beforeConverge, to: .now(daemon: daemon.pid, qemus: qemuPIDs), wall: convergeTime)
        let convergeCPU = ProcessStats.cpuSeconds(daemon.pid)
        let memoryConverged = ProcessStats.memory(daemon.pid)
        print(
            "converge \(total) bindings from nothing: \(LatencySummary.milliseconds(convergeTime)), "
                + "VmRSS \(memoryConverged.described), VmHWM \(String(format: "%.1f", memoryConverged.peak)) MiB")

        // Let the converge settle (the first resync overlaps its tail), then measure resyncs alone.
        var lastStamp = metric(metrics, "macvtapd_last_resync_timestamp_seconds") ?? 0
        _ = await waitUntil(timeout: .seconds(15), every: .milliseconds(50)) {
            (metric(metrics, "macvtapd_last_resync_timestamp_seconds") ?? 0) != lastStamp
        }
        lastStamp = metric(metrics, "macvtapd_last_resync_timestamp_seconds") ?? 0
        var resyncs: [Duration] = []
        let cpuBefore = ProcessStats.cpuSeconds(daemon.pid)
        let resyncWindowStart = clock.now
        while resyncs.count < 6, clock.now - resyncWindowStart < .seconds(60) {
            try await Task.sleep(for: .milliseconds(50))
            let stamp = metric(metrics, "macvtapd_last_resync_timestamp_seconds") ?? 0
            if stamp != lastStamp, let seconds = metric(metrics, "macvtapd_last_resync_duration_seconds") {
                lastStamp = stamp
                resyncs.append(.milliseconds(seconds * 1000))
            }
        }
        let resyncCPU = ProcessStats.cpuSeconds(daemon.pid) - cpuBefore
        let resyncWindow = (clock.now - resyncWindowStart).seconds
        // Nil when no resync finished in the window: its CPU would otherwise be reported as one resync's.
        let cpuPerResync = resyncs.isEmpty ? nil : resyncCPU / Double(resyncs.count)
        print(
            "no-op resyncs: \(resyncs.count) in \(Int(resyncWindow)) s; daemon CPU \(Int(resyncCPU * 1000)) ms in that window"
        )

        // 2. Flap lower 0 (total / lowers bindings) with events.
        let flapCPUBefore = ProcessStats.cpuSeconds(daemon.pid)
        var flapBreakdowns: [CPUBreakdown] = []
        let flapEvents = try await flap(
            "l0", count: flaps, expected: total, attached: attached, hostMissing: hostMissing, namespace: namespace,
            notifications: notifications,
            around: { CPUBreakdown.Snapshot.now(daemon: daemon.pid, qemus: qemuPIDs) },
            breakdown: { before, wall in
                flapBreakdowns.append(
                    CPUBreakdown(from: before, to: .now(daemon: daemon.pid, qemus: qemuPIDs), wall: wall))
            })
        let cpuPerFlap = (ProcessStats.cpuSeconds(daemon.pid) - flapCPUBefore) / Double(max(1, flaps))
        await daemon.stop()

        // 2b. `macvtapd plan` of the converged host with no daemon holding the monitors: the whole
        // process, from exec to exit (dump, 40 QMP sessions, plan, render).
        var plans: [Duration] = []
        for _ in 0..<5 {
            let run = try await ChildProcess.run(
                "/usr/sbin/ip",
                [
                    "netns", "exec", namespace.name, binary, "plan", "-c", config,
                    "--status-file", directory.path + "/status.json",
                    "--control-socket", directory.path + "/run/control.sock",
                ])
            guard run.status == 0, run.stdout.contains("No changes: \(total) unchanged") else {
                throw ChildError(
                    "plan of the converged host: exit \(run.status)\n\(run.stdout.suffix(500))\(run.stderr)")
            }
            plans.append(.milliseconds(run.seconds * 1000))
        }

        // 3. Idle footprint with the default resync; the restart adopts everything. Config changes
        // below go through `apply` alone, so the daemon does not watch the file.
        unlink(metrics)
        let restarted = clock.now
        daemon = try start(["--no-watch-config"])
        guard let adopted = await waitUntil(timeout: .seconds(120), every: .milliseconds(5), { attached() == total })
        else { throw ChildError("restart did not adopt: \(daemon.log().suffix(2000))") }
        let adoptTime = adopted - restarted
        let throughDaemon = try await planAndApplyThroughDaemon(
            binary: binary, config: config, yaml: yaml, total: total, metrics: metrics, namespace: namespace,
            directory: directory)
        try await Task.sleep(for: .seconds(1))
        let idleCPU = try await cpuFraction(daemon.pid, over: .seconds(idleSeconds), resyncsIn: metrics)
        let memoryIdle = ProcessStats.memory(daemon.pid)
        await daemon.stop()

        // 4. The baseline: no events, a resync every second.
        unlink(metrics)
        daemon = try start(["--no-events", "--resync", "1"])
        _ = await waitUntil(timeout: .seconds(120), every: .milliseconds(5)) { attached() == total }
        let flapPolling = try await flap(
            "l0", count: max(2, flaps / 2), expected: total, attached: attached, hostMissing: hostMissing,
            namespace: namespace,
            notifications: notifications)
        let (idlePolling, idlePollingTicks, resyncsPolling) = try await cpuFraction(
            daemon.pid, over: .seconds(baselineIdleSeconds), resyncsIn: metrics)
        let memoryPolling = ProcessStats.memory(daemon.pid)
        await daemon.stop()

        print(ResultRow.header())
        print(
            ResultRow(
                measure: "converge \(total) bindings from nothing ¹", macvtapd: LatencySummary([convergeTime]),
                baseline: nil, target: "≤ 1.5 s"
            ).markdown)
        print(
            ResultRow(
                measure: "restart adopts \(total) bindings (no changes) ²", macvtapd: LatencySummary([adoptTime]),
                baseline: nil, target: ""
            ).markdown)
        print(
            ResultRow(
                measure: "`macvtapd plan` of the converged host, no daemon (whole process) ³",
                macvtapd: LatencySummary(plans), baseline: nil, target: "≤ 300 ms"
            ).markdown)
        print(
            ResultRow(
                measure: "`macvtapd plan` of the converged host through the running daemon (whole process) ³",
                macvtapd: LatencySummary(throughDaemon.plans), baseline: LatencySummary(plans), target: "≤ 100 ms"
            ).markdown)
        print(
            ResultRow(
                measure: "`macvtapd apply` of a one-binding move through the daemon (whole process) ³",
                macvtapd: LatencySummary(throughDaemon.applies), baseline: nil, target: ""
            ).markdown)
        print(
            ResultRow(
                measure: "… of which beyond the replace itself (apply − the daemon's replace time) ³",
                macvtapd: LatencySummary(throughDaemon.overheads), baseline: nil, target: "≤ 50 ms"
            ).markdown)
        print(
            ResultRow(
                measure: "no-op resync of \(total) bindings ⁴",
                macvtapd: resyncs.isEmpty ? nil : LatencySummary(resyncs),
                baseline: resyncsPolling.isEmpty ? nil : LatencySummary(resyncsPolling), target: "≤ 100 ms"
            ).markdown)
        print(
            ResultRow(
                measure: "flap of a lower carrying \(total / lowers) bindings → all reattached ⁵",
                macvtapd: LatencySummary(flapEvents), baseline: LatencySummary(flapPolling), target: "p99 ≤ 300 ms"
            ).markdown)
        print("")
        print("| footprint | macvtapd (events, resync 30 s) | baseline (resync 1 s) | target |")
        print("|---|---|---|---|")
        // VmRSS as `ps` shows it, at stated moments, and VmHWM beside it: the daemon's resident set
        // depends on when it is read (a converge's peak, what the allocator keeps after applies).
        print(
            "| RSS (VmRSS, as `ps` shows it) at \(total) bindings, after the idle window ⁹: the restarted daemon "
                + "adopted them, answered \(repeats) plans and \(repeats * 2) applies, then idled \(idleSeconds) s "
                + "| \(memoryIdle.described) | \(memoryPolling.described), after its flaps and "
                + "\(baselineIdleSeconds) s idle | ≤ 16 MiB |")
        print(
            "| RSS at \(total) bindings right after converging from nothing (first daemon) ⁹ "
                + "| \(memoryConverged.described) | | |")
        print(
            String(
                format:
                    "| peak RSS (VmHWM) of those daemons ⁹ | %.1f MiB converging, %.1f MiB restarted | %.1f MiB | |",
                memoryConverged.peak, memoryIdle.peak, memoryPolling.peak))
        print(
            "| RSS with no bindings (`vms: {}`), 2 s after start ⁹ | \(footprint.emptyDaemon.described), "
                + String(format: "VmHWM %.1f MiB", footprint.emptyDaemon.peak) + " | | |")
        print(
            String(
                format: "| peak RSS of `macvtapd --version`, of `macvtapd validate` of the %d-binding file "
                    + "(whole processes, median of 5) ⁹ | %.1f MiB, %.1f MiB | | |",
                total, footprint.versionPeak, footprint.validatePeak))
        print(
            String(
                format:
                    "| CPU while idle ⁶ | %.3f %% over %d s (ticks: %.3f %%) | %.3f %% over %d s (ticks: %.3f %%) "
                    + "| ≤ 0.05 %% over 60 s |",
                idleCPU.run * 100, idleSeconds, idleCPU.ticks * 100, idlePolling * 100, baselineIdleSeconds,
                idlePollingTicks * 100))
        print(
            "| CPU per no-op resync ⁷ | \(cpuPerResync.map { String(format: "%.1f ms", $0 * 1000) } ?? "– (no resync finished)") | | |"
        )
        print(String(format: "| CPU to converge from nothing ⁸ | %.0f ms | | |", convergeCPU * 1000))
        print(String(format: "| CPU per flap (delete + return) ⁸ | %.0f ms | | |", cpuPerFlap * 1000))
        print("")
        // Where the wall time of the converge and of the flaps' returns went, machine-wide.
        let cores = sysconf(Int32(_SC_NPROCESSORS_ONLN))
        print("Where the time goes ¹⁰:")
        print("- converge: " + convergeBreakdown.described(cores: cores, qemus: vms, bindings: total))
        if let median = flapBreakdowns.sorted(by: { $0.wall < $1.wall }).dropFirst(flapBreakdowns.count / 2).first {
            print(
                "- median flap return: "
                    + median.described(cores: cores, qemus: vms, bindings: total / lowers))
        }
        print("")
        print(Self.notes(total: total, lowers: lowers, flaps: flaps, idleSeconds: idleSeconds))
    }

    /// The daemons' private tap nodes go under /dev (devtmpfs), as with the default
    /// `--device-dir /dev/macvtapd`, not into the bench's directory under /tmp: on ext4 each
    /// node's mknod + unlink cost about 0.36 ms of kernel time in a converge (the inode allocator
    /// skips recently deleted inodes), a cost an installed daemon does not pay.
    static func deviceDirectory(for directory: TemporaryDirectory) -> String {
        "/dev/macvtapd-bench." + (directory.path.split(separator: "/").last.map(String.init) ?? "\(getpid())")
    }

    static func metricsPath(in directory: TemporaryDirectory, prefix: String = "") -> String {
        directory.path + "/\(prefix)macvtapd.prom"
    }

    /// `macvtapd run` in the bench's namespace, its files in `directory`, each name led by `prefix`
    /// (the bench's daemons and the empty one of the footprint rows keep apart).
    func startDaemon(
        binary: String, config: String, namespace: NetworkNamespace, directory: TemporaryDirectory,
        prefix: String = "", extra: [String] = []
    ) throws -> BackgroundProcess {
        try BackgroundProcess.start(
            "/usr/sbin/ip",
            [
                "netns", "exec", namespace.name, binary, "run", "-c", config,
                "--status-file", directory.path + "/\(prefix)status.json",
                "--metrics-file", Self.metricsPath(in: directory, prefix: prefix),
                "--control-socket", directory.path + "/\(prefix)run/control.sock",
                "--device-dir", Self.deviceDirectory(for: directory), "--log-level", "warning",
            ] + extra,
            logPath: directory.path + "/\(prefix)daemon.log")
    }

    func addLowers(_ names: [String], in namespace: NetworkNamespace) async throws {
        let script = names.map {
            "ip link add \($0) type veth peer name \($0)p && ip link set \($0)p up && ip link set \($0) up"
        }
        .joined(separator: " && ")
        try await namespace.exec(["sh", "-c", script])
    }

    /// Deletes `lower`, waits for its bindings to be detached, adds it back and times from its
    /// RTM_NEWLINK until every binding is attached again.
    func flap(
        _ lower: String, count: Int, expected: Int, attached: () -> Int, hostMissing: () -> Int,
        namespace: NetworkNamespace,
        notifications: LinkNotifications, around snapshot: () -> CPUBreakdown.Snapshot? = { nil },
        breakdown: (CPUBreakdown.Snapshot, Duration) -> Void = { _, _ in }
    ) async throws -> [Duration] {
        var samples: [Duration] = []
        for _ in 0..<count {
            try await namespace.ip("link", "del", lower)
            // Detached: the lower's bindings are HostMissing, which the daemon records once their
            // dead backends are gone from QEMU. Not merely "not Attached": NoCarrier comes first
            // (the lower goes down before it goes), and adding the lower back then measured the
            // return together with the detaches still under way.
            guard
                await waitUntil(
                    timeout: .seconds(60), every: .milliseconds(5),
                    { attached() <= expected - expected / lowers && hostMissing() >= expected / lowers })
                    != nil
            else {
                throw ChildError(
                    "bindings of \(lower) not detached: \(attached()) attached, \(hostMissing()) HostMissing")
            }
            let before = snapshot()
            let adding = ContinuousClock.now
            try await addLowers([lower], in: namespace)
            let added = try await notifications.added(lower)
            guard let done = await waitUntil(timeout: .seconds(60), every: .milliseconds(2), { attached() == expected })
            else { throw ChildError("bindings of \(lower) not reattached: \(attached()) attached") }
            samples.append(done - added)
            // From the bench's `ip link add` (the snapshot just before it) to all Attached.
            if let before { breakdown(before, done - adding) }
        }
        return samples
    }

    /// The daemon's CPU time (utime + stime from /proc/PID/stat) over `window` as a fraction of
    /// it, and the durations of the resyncs that finished in it (from the metrics textfile).
    /// The share of one CPU the process used over `window`, from its threads' schedstat and (in
    /// clock ticks) from utime + stime, with the resyncs that finished meanwhile.
    func cpuFraction(_ pid: pid_t, over window: Duration, resyncsIn metrics: String) async throws
        -> (run: Double, ticks: Double, resyncs: [Duration])
    {
        let before = ProcessStats.cpuSeconds(pid)
        let runBefore = ProcessStats.runSeconds(pid)
        let start = ContinuousClock.now
        var lastStamp = metric(metrics, "macvtapd_last_resync_timestamp_seconds") ?? 0
        var resyncs: [Duration] = []
        while ContinuousClock.now - start < window {
            try await Task.sleep(for: .milliseconds(250))
            let stamp = metric(metrics, "macvtapd_last_resync_timestamp_seconds") ?? 0
            if stamp != lastStamp, let seconds = metric(metrics, "macvtapd_last_resync_duration_seconds") {
                lastStamp = stamp
                resyncs.append(.milliseconds(seconds * 1000))
            }
        }
        let wall = (ContinuousClock.now - start).seconds
        return (
            ProcessStats.runSeconds(from: runBefore, to: ProcessStats.runSeconds(pid)) / wall,
            (ProcessStats.cpuSeconds(pid) - before) / wall, resyncs
        )
    }
}
