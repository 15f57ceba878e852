import Logging
import MacvtapdCore

/// The controller's side of the VM sessions: which VMs have one, and the task that keeps each
/// connected and turns its QMP events into reconciles.
extension Controller {
    /// One session per VM that has bindings or leftovers: desired VMs, and VMs the status still
    /// lists (bindings removed but not yet torn down).
    func updateSessions() {
        var wanted: [String: String] = desired.vms.mapValues(\.qmp)
        for status in statuses.values where wanted[status.vm] == nil {
            if let qmp = status.qmp { wanted[status.vm] = qmp }
        }
        for (vm, session) in sessions where wanted[vm] != session.qmp {
            session.task.cancel()
            sessions[vm] = nil
            // No session, no netdev_del to wait for: the VM's backends are no business of ours now.
            host.releaseTaps(vm: vm) { _ in true }
            if let connection = session.connection {
                Task { await connection.close() }
            }
        }
        for (vm, qmp) in wanted where sessions[vm] == nil {
            let task = Task { await self.maintainSession(vm: vm, qmp: qmp) }
            sessions[vm] = VMSession(qmp: qmp, task: task)
        }
    }

    /// Connects, follows the VM's events, and reconnects with backoff when the session ends (VM
    /// shut down, restarted, or not answering). A VM that is not running here is one quiet line,
    /// then a connect attempt (one syscall) per backoff period.
    func maintainSession(vm: String, qmp: String) async {
        var failures = 0
        // Quick retries left after the socket appeared: QEMU listens on it a moment after creating it.
        var appeared = 0
        while !Task.isCancelled {
            let connection: any VMConnection
            do {
                connection = try await connector.connect(vm: vm, qmp: qmp)
            } catch {
                if sessions[vm]?.connectFailed(error) == true {
                    switch error {
                    case .absent(let why):
                        logger.info("VM \(vm) is not running here: \(why)", metadata: ["vm": "\(vm)"])
                    case .unresponsive(let why):
                        logger.warning("VM \(vm) does not answer on QMP: \(why)", metadata: ["vm": "\(vm)"])
                    }
                    markDirty([vm])
                }
                failures += 1
                var wait = WorkQueue.backoff(failures, base: options.reconnectBase, cap: options.reconnectCap)
                if appeared > 0 {
                    appeared -= 1
                    wait = .milliseconds(10)
                }
                if case .absent = error {
                    // A QEMU started meanwhile is connected to at once, not at the end of the wait:
                    // libvirt resumes the QEMU it starts with -S about half a second later.
                    if await SocketAppearance.shared.wait(for: qmp, upTo: wait) { appeared = 3 }
                } else {
                    try? await Task.sleep(for: wait)
                }
                continue
            }
            guard !Task.isCancelled, sessions[vm] != nil else {
                await connection.close()
                return
            }
            failures = 0
            appeared = 0
            sessions[vm]?.connected(connection)
            logger.info("QMP session with VM \(vm) established", metadata: ["vm": "\(vm)"])
            markDirty([vm])
            for await event in connection.events {
                logger.debug("VM \(vm) event \(event)", metadata: ["vm": "\(vm)"])
                sessions[vm]?.handle(event: event, at: .now)
                markDirty([vm])
            }
            // QEMU closed the monitor: most likely it quit, which the reconnect (at once) confirms
            // or refutes. Until then the VM is in doubt, and doubt tears nothing down.
            sessions[vm]?.closed(connection, why: .unresponsive("QMP session closed; reconnecting"))
            // Most likely QEMU quit and closed its copies of the taps: a kept one would keep its
            // queue alive, buffering what the macvtap receives. A QEMU that is still there closes
            // its copies later, as slowly as without a kept fd.
            host.releaseTaps(vm: vm) { _ in true }
            await connection.close()
        }
    }

    func dropConnection(vm: String, because error: any Error) async {
        guard let connection = sessions[vm]?.drop(because: error) else { return }
        logger.warning("VM \(vm) stopped answering: \(error)", metadata: ["vm": "\(vm)"])
        // Closing ends the session's event stream, so maintainSession reconnects.
        await connection.close()
    }

    func closeSessions() async {
        let all = sessions.values
        sessions = [:]
        for session in all {
            session.task.cancel()
            await session.connection?.close()
        }
    }

    /// The VM as its session knows it: cached, asked now, or why it cannot be asked.
    func observe(vm: String) async -> ObservedVM {
        guard let session = sessions[vm] else {
            return .absent(vm, "no QMP socket is known for this VM")
        }
        switch session.source(vm: vm) {
        case .cached(let cached, _):
            return cached
        case .unreachable(let observed):
            return observed
        case .live(let connection):
            let generation = session.generation
            do {
                let observed = try await connection.observe(
                    vm: vm, guestMACOf: desired.vms[vm]?.guestMACNICs ?? [])
                if sessions[vm]?.connection === connection {
                    sessions[vm]?.observed(observed, askedAtGeneration: generation)
                }
                return observed
            } catch {
                await dropConnection(vm: vm, because: error)
                return ObservedVM(name: vm, reachability: .unresponsive("\(error)"))
            }
        }
    }

    /// The status document keeps only bindings that are desired or still hold something of ours (an
    /// orphan the plan tears down): a binding an old config named, with nothing left, is forgotten,
    /// whether its whole VM went from the config or only the NIC did; a VM with no binding left
    /// is forgotten with its session.
    func forgetIfNothingLeft(vm: String, planned: Set<BindingKey>) {
        let leftovers = statuses.keys.filter { $0.vm == vm && !planned.contains($0) && desired.binding($0) == nil }
        for key in leftovers {
            statuses[key] = nil
            writer.statusChanged(key)
        }
        if !leftovers.isEmpty { writer.dirty = true }
        if !statuses.keys.contains(where: { $0.vm == vm }) { updateSessions() }
    }

    /// After a reconcile of `vm`: lets go of kept taps whose backend QEMU no longer holds as far as
    /// the reconcile knows (its observation, with what it attached and detached), such as one
    /// removed behind our back. Their VM absent, all go; a VM in doubt keeps them.
    func releaseTapsNotHeld(vm: String, observed: ObservedVM, outcomes: [BindingOutcome]) {
        switch observed.reachability {
        case .reachable:
            var held = Set(observed.backends.map(\.ids))
            for outcome in outcomes {
                held.subtract(outcome.detachedBackends)
                held.formUnion(outcome.attachedBackends.map(\.ids))
            }
            host.releaseTaps(vm: vm) { !held.contains($0) }
        case .absent:
            host.releaseTaps(vm: vm) { _ in true }
        case .unresponsive:
            break
        }
    }
}
