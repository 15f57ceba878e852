import Foundation
import MacvtapdCore
import MacvtapdQMP
import MacvtapdReconciler
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// What the soak checks once the world is quiet.
extension Soak {
    func quiesceAndCheck(round: Int) async throws {
        checkDaemonAlive()
        // Every lower back with carrier, every VM running, a foreign macvtap present, the daemon up
        // with a valid config on disk.
        for lower in model.lowers {
            switch lower.state {
            case .absent: try await addLower(lower.name)
            case .away(let other): try await renameBack(lower.name, from: other)
            case .present: break
            }
            if !model.lower(lower.name).peerUp {
                try await sh("ip link set \(lower.name)p up")
                model.update(lower.name) { $0.peerUp = true }
            }
        }
        for (name, state) in model.vmStates.sorted(by: { $0.key < $1.key }) {
            switch state {
            case .dead: try await vm(name).launch()
            case .paused: try await vm(name).command("cont")
            case .running: break
            }
            model.vmStates[name] = .running
        }
        if model.foreign.isEmpty { try await addForeign(on: random.pick(Self.lowerNames)) }
        if model.diskInvalid { try writeConfig(model.config, atomic: true) }
        if !model.daemonRunning { try startDaemon() }
        let quiet = ContinuousClock.now

        guard let converged = await converge(since: quiet) else { return }
        report.convergence.append(converged)
        let slow = converged > options.convergenceTarget ? " (over the \(options.convergenceTarget) target)" : ""
        options.log("round \(round): converged \(LatencySummary.milliseconds(converged)) after quiescence\(slow)")

        try await checkFrames()
        try await checkCPU()
        try await checkForeign()
        await checkNotify()
        try await checkResyncsAndRestart()
        checkDaemonAlive()
    }

    /// Polls until the host matches the model; the time it took, or nil (a failure) past the bound.
    func converge(since start: ContinuousClock.Instant) async -> Duration? {
        var problems: [String] = []
        while ContinuousClock.now - start < options.convergenceBound {
            problems = await self.problems()
            if problems.isEmpty { return ContinuousClock.now - start }
            try? await Task.sleep(for: .milliseconds(20))
        }
        fail(
            "not converged \(options.convergenceBound) after quiescence:\n  " + problems.joined(separator: "\n  ")
                + "\n  config: \(describe(model.config))")
        return nil
    }

    /// How the host, the VMs and the status file differ from the desired state; empty when converged.
    func problems() async -> [String] {
        var problems: [String] = []
        let links: [SoakLink]
        do {
            links = try await SoakLink.all(in: sandbox.namespace)
        } catch {
            return ["ip link: \(error)"]
        }
        var networks: [String: NetworkInfo] = [:]
        for vm in vms {
            do {
                networks[vm.name] = try await vm.network()
            } catch {
                problems.append("info network of \(vm.name): \(error)")
            }
        }
        let status = try? StatusStore(path: sandbox.statusPath).read()
        // A fresh daemon adopting a converged host changes nothing; its first status write says it
        // has looked.
        if let updated = status?.updated, updated < daemonStartedAt {
            problems.append("status not yet written by the running daemon")
        }
        if status?.config?.valid != true {
            problems.append("status: config not valid: \(String(describing: status?.config))")
        }

        let desired = model.config.bindings
        let owned = links.filter { $0.owner != nil }
        for (key, spec) in desired {
            let nic = model.nic(key)
            let mine = owned.filter { $0.owner == key }
            guard mine.count == 1, let macvtap = mine.first else {
                problems.append("\(key): \(mine.count) owned macvtaps, want 1")
                continue
            }
            if macvtap.link != spec.lower {
                problems.append("\(key): macvtap on \(macvtap.link ?? "?"), want \(spec.lower)")
            }
            if macvtap.mode != spec.mode.rawValue {
                problems.append("\(key): mode \(macvtap.mode ?? "?"), want \(spec.mode.rawValue)")
            }
            if macvtap.mac != spec.macvtapMAC(of: nic) {
                problems.append("\(key): MAC \(macvtap.mac?.description ?? "?"), want \(spec.macvtapMAC(of: nic))")
            }
            if !macvtap.up { problems.append("\(key): macvtap \(macvtap.name) is down") }
            if let network = networks[key.vm] {
                let ids = Ownership.BackendIDs(nic: key.nic, ifindex: macvtap.ifindex)
                let ours = network.netdevIDs.filter { $0.hasPrefix("mvtd.\(key.nic).") }.sorted()
                if ours != [ids.port, ids.tap].sorted() {
                    problems.append("\(key): backends \(ours), want \([ids.port, ids.tap].sorted())")
                } else if network.hub(nic.hub)?.port(ids.port)?.peer?.id != ids.tap {
                    problems.append("\(key): \(ids.port) is not on hub \(nic.hub) with \(ids.tap)")
                }
            }
            let binding = status?.binding(key)
            if binding?.phase != .attached || binding?.lower != spec.lower || binding?.macvtap != macvtap.name
                || binding?.guestLink != true
            {
                problems.append(
                    "\(key): status \(binding.map { "\($0.phase.rawValue) lower \($0.lower ?? "-") macvtap \($0.macvtap ?? "-") link \(String(describing: $0.guestLink)): \($0.message)" } ?? "missing")"
                )
            }
        }
        let wanted = Set(desired.map(\.key))
        for orphan in owned where !wanted.contains(orphan.owner!) {
            problems.append("orphan macvtap \(orphan.name) of \(orphan.owner!)")
        }
        for (vm, network) in networks {
            for id in network.netdevIDs where id.hasPrefix("mvtd.") {
                if let parsed = Ownership.parseBackendID(id), wanted.contains(BindingKey(vm: vm, nic: parsed.ids.nic)) {
                    continue
                }
                problems.append("orphan backend \(id) in \(vm)")
            }
        }
        for binding in status?.bindings ?? [] where !wanted.contains(binding.key) {
            problems.append("status lists \(binding.key) (\(binding.phase.rawValue)), which is not desired")
        }
        return problems
    }

    /// Frames sent into each desired binding's lower (from its peer) reach the NIC's hub probe.
    func checkFrames() async throws {
        var reached = 0
        for (key, spec) in model.config.bindings {
            let nic = model.nic(key)
            let socket = try await PacketSocket.open(interface: spec.lower + "p", in: sandbox.namespace)
            defer { socket.close() }
            let marker = EthernetFrame.uniqueMarker()
            let frame = EthernetFrame.make(destination: spec.macvtapMAC(of: nic).bytes, payload: marker)
            let probe = vm(key.vm).probes[key.nic]!
            let deadline = ContinuousClock.now + .seconds(3)
            var seen = false
            while !seen && ContinuousClock.now < deadline {
                try socket.send(frame)
                seen = await probe.receive(timeout: .milliseconds(100), matching: FrameFilter(marker: marker)) != nil
            }
            if seen { reached += 1 } else { fail("\(key): no frame from \(spec.lower) reached the NIC's hub") }
        }
        note("frames reach every VM's hub through its lower: \(reached)/\(model.config.bindings.count)")
    }

    /// No QEMU spins (a backend on a dead fd costs ~90% of a core; idle under TCG is ~10%).
    func checkCPU() async throws {
        var figures: [String] = []
        for vm in vms {
            let cpu = try await vm.cpu()
            figures.append(String(format: "%@ %.0f%%", vm.name, cpu * 100))
            if cpu > 0.5 { fail("QEMU of \(vm.name) spins: \(Int(cpu * 100))% of a core over 1 s") }
        }
        note("QEMU CPU over 1 s: " + figures.joined(separator: ", "))
    }

    /// The foreign macvtaps are where they were, as they were.
    func checkForeign() async throws {
        let links = try await SoakLink.all(in: sandbox.namespace)
        for foreign in model.foreign {
            let lower = model.lowers.first { $0.identity == foreign.lowerIdentity }
            guard let link = links.first(where: { $0.name == foreign.name }) else {
                fail("foreign macvtap \(foreign.name) is gone")
                continue
            }
            if link.ifindex != foreign.ifindex || link.alias != nil || link.mode != foreign.mode.rawValue
                || link.mac != foreign.mac || link.link != lower?.name || !link.up
            {
                fail("foreign macvtap \(foreign.name) was touched: \(link), recorded \(foreign)")
            }
        }
        note("foreign macvtaps untouched: \(model.foreign.map(\.name).joined(separator: ", "))")
    }

    /// systemd, reading again, hears that the daemon is ready and its current status.
    func checkNotify() async {
        let mode = notify.mode
        guard mode != .none else { return }
        notify.catchUp()
        let count = model.config.bindings.count
        let expected = "STATUS=\(count) binding(s)" + (count == 0 ? "" : ": \(count) Attached")
        let deadline = ContinuousClock.now + .seconds(3)
        var heard: [String] = []
        while ContinuousClock.now < deadline {
            heard = notify.heard
            let status = heard.last { $0.contains("STATUS=") }?.split(separator: "\n").first { $0.hasPrefix("STATUS=") }
            if heard.contains(where: { $0.contains("READY=1") }) && status.map(String.init) == expected {
                note("notify (\(mode.rawValue) reader): READY=1 and \(expected) heard")
                return
            }
            try? await Task.sleep(for: .milliseconds(20))
        }
        let status = (try? StatusStore(path: sandbox.statusPath).read())?.bindings.map {
            "\($0.key) \($0.phase.rawValue)"
        }
        fail(
            "notify (\(mode.rawValue) reader): want READY=1 and \(expected), heard \(heard.count) datagrams: "
                + "\(heard.filter { $0 != "WATCHDOG=1" }.suffix(20)); status file: \(status ?? [])")
    }

    /// No descriptor or memory growth across resyncs, and none against a fresh daemon: forced
    /// resyncs (link bursts, SIGHUP) must converge again with as many descriptors as before; then
    /// SIGTERM and a fresh start adopt everything (no netdev replaced) and hold as many.
    func checkResyncsAndRestart() async throws {
        guard let daemon else { return }
        let fdsBefore = await SoakProcess.settledFDs(daemon.pid)
        for _ in 0..<3 {
            kill(daemon.pid, SIGSTOP)
            try? await noiseBurst(changes: 300)
            kill(daemon.pid, SIGCONT)
            try await Task.sleep(for: .milliseconds(50))
        }
        kill(daemon.pid, SIGHUP)
        let forced = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(150))
        guard let resynced = await converge(since: forced) else { return }
        report.resyncConvergence.append(resynced)
        let fdsAfter = await SoakProcess.settledFDs(daemon.pid)
        let rss = SoakProcess.residentMiB(daemon.pid)
        if fdsAfter > fdsBefore { fail("the daemon's descriptors grew across resyncs: \(fdsBefore) → \(fdsAfter)") }

        let backends = try await backendIDs()
        // The taps it keeps: one per backend it attached at most (TapKeeper), which a fresh
        // daemon, adopting them, does not have.
        let keptTaps = SoakProcess.tapFDs(daemon.pid, in: sandbox.deviceDirectory)
        let attached = backends.filter { id in
            Ownership.parseBackendID(String(id.drop { $0 != ":" }.dropFirst()))?.part == .tap
        }.count
        if keptTaps > attached { fail("the daemon kept \(keptTaps) taps for \(attached) backends") }
        let macvtaps = try await SoakLink.all(in: sandbox.namespace).filter { $0.owner != nil }.map(\.ifindex).sorted()
        try await stopDaemon(signal: SIGTERM)
        // The same notify mode, so both daemons hold a notify socket or neither does.
        try startDaemon(notifyMode: daemonNotifyMode)
        let restarted = ContinuousClock.now
        guard let fresh = self.daemon, let adopted = await converge(since: restarted) else { return }
        report.restartConvergence.append(adopted)
        if try await backendIDs() != backends { fail("a fresh daemon replaced backends instead of adopting them") }
        let macvtapsNow = try await SoakLink.all(in: sandbox.namespace).filter { $0.owner != nil }.map(\.ifindex)
            .sorted()
        if macvtapsNow != macvtaps { fail("a fresh daemon replaced macvtaps: \(macvtaps) → \(macvtapsNow)") }
        // Descriptors are compared once the fresh daemon holds what the soaked one does: a session
        // with every VM.
        let sessions = await waitUntil(timeout: options.convergenceBound) {
            let log = self.daemonLog()
            return self.model.config.vms.keys.allSatisfy { log.contains("QMP session with VM \($0) established") }
        }
        if sessions == nil { fail("the fresh daemon did not connect to every VM: \(daemonLog().suffix(2000))") }
        try await Task.sleep(for: .milliseconds(200))
        let freshFDs = await SoakProcess.settledFDs(fresh.pid)
        let freshRSS = SoakProcess.residentMiB(fresh.pid)
        // One more is the monitor-socket watch (inotify), made only by a daemon that waited for a
        // VM's socket to appear.
        if fdsAfter - keptTaps > freshFDs + 1 {
            fail("the soaked daemon held \(fdsAfter) descriptors (\(keptTaps) kept taps), a fresh one \(freshFDs)")
        }
        if rss > 128 || rss > freshRSS + 32 {
            fail(String(format: "the soaked daemon's RSS is %.1f MiB, a fresh one's %.1f MiB", rss, freshRSS))
        }
        note(
            "daemon fds \(fdsBefore) → \(fdsAfter) (\(keptTaps) kept taps) across 3 link bursts + SIGHUP "
                + "(fresh daemon: \(freshFDs)); "
                + String(format: "RSS %.1f MiB (fresh %.1f MiB)", rss, freshRSS))
    }

    func backendIDs() async throws -> [String] {
        var ids: [String] = []
        for vm in vms {
            ids += try await vm.network().netdevIDs.filter { $0.hasPrefix("mvtd.") }.map { "\(vm.name):\($0)" }
        }
        return ids.sorted()
    }

    func note(_ line: String) {
        report.checks.append("round \(report.rounds): \(line)")
        options.log("round \(report.rounds): \(line)")
    }
}
