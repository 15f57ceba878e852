import MacvtapdTestSupport

/// `plan` and `apply` through the running daemon, whole CLI processes.
extension ScaleBench {
    /// With the daemon holding every monitor: `plan` of the converged host through it, and `apply`
    /// of a one-binding move (vm0/n0 between l0 and l1, back and forth), each a whole CLI process.
    /// The apply's share beyond the daemon's own work is the command's time minus the binding's
    /// steps up to its attach (the `macvtapd_attach_duration_seconds` the apply added).
    func planAndApplyThroughDaemon(
        binary: String, config: String, yaml: String, total: Int, metrics: String, namespace: NetworkNamespace,
        directory: TemporaryDirectory
    ) async throws -> (plans: [Duration], applies: [Duration], overheads: [Duration]) {
        let socket = ["--control-socket", directory.path + "/run/control.sock"]
        var plans: [Duration] = []
        for _ in 0..<repeats {
            let run = try await ChildProcess.run(
                "/usr/sbin/ip", ["netns", "exec", namespace.name, binary, "plan", "-c", config] + socket)
            guard run.status == 0, run.stdout.contains("No changes: \(total) unchanged"),
                run.stdout.contains("running macvtapd daemon")
            else {
                throw ChildError(
                    "plan through the daemon: exit \(run.status)\n\(run.stdout.suffix(500))\(run.stderr)")
            }
            plans.append(.milliseconds(run.seconds * 1000))
        }
        let moved = yaml.replacing("      n0: {host: l0}\n", with: "      n0: {host: l1}\n", maxReplacements: 1)
        var applies: [Duration] = []
        var overheads: [Duration] = []
        for round in 0..<(repeats * 2) {
            _ = try directory.write("macvtapd.yaml", round % 2 == 0 ? moved : yaml)
            let countBefore = metric(metrics, "macvtapd_attach_duration_seconds_count") ?? 0
            let sumBefore = metric(metrics, "macvtapd_attach_duration_seconds_sum") ?? 0
            let run = try await ChildProcess.run(
                "/usr/sbin/ip", ["netns", "exec", namespace.name, binary, "apply", "-c", config] + socket)
            guard run.status == 0, run.stdout.contains("Applied by"), run.stdout.contains("1 binding(s) changed")
            else {
                throw ChildError("apply through the daemon: exit \(run.status)\n\(run.stdout.suffix(800))\(run.stderr)")
            }
            let elapsed = Duration.milliseconds(run.seconds * 1000)
            applies.append(elapsed)
            // The metrics file is written off the control loop, shortly after the apply returns.
            let counted = await waitUntil(timeout: .seconds(5), every: .milliseconds(5)) {
                (metric(metrics, "macvtapd_attach_duration_seconds_count") ?? 0) == countBefore + 1
            }
            guard counted != nil else { throw ChildError("apply through the daemon: no attach counted in \(metrics)") }
            let work = (metric(metrics, "macvtapd_attach_duration_seconds_sum") ?? 0) - sumBefore
            overheads.append(elapsed - .milliseconds(work * 1000))
        }
        return (plans, applies, overheads)
    }
}
