import MacvtapdCore

/// The periodic resync, what it exists for: repairing whatever an event missed (a lost link
/// notification, a backend removed through another monitor). It stays cheap in the steady state:
/// the QMP monitors of a share of the VMs, and a link dump compared with the cache; a VM is
/// reconciled only when its links or its observation differ from what its last reconcile saw,
/// when that reconcile left something to do, or when its session lost its observation.
///
/// With link events, the cache follows the kernel's notifications, and a lost one is reported
/// (ENOBUFS) and answered with a full resync at once; the periodic dump is then a backstop, made
/// every `observeSpread` resyncs like the observations. Without events it is made every time.
extension Controller {
    /// A resync: the VMs whose links differ from the cache, those not quiet, and those whose
    /// monitor is due to be asked again are reconciled. `full` dumps the links whatever the turn.
    public func resync(full: Bool = false) async {
        let started = ContinuousClock.now
        resyncTurn += 1
        let dump = full || !options.useLinkEvents || !self.started || resyncTurn % options.observeSpread == 0
        var vms = Set<String>()
        let linksKnown = dump ? await refreshLinks() : true
        if linksKnown {
            vms.formUnion(dueForObservation())
            let everyone = allVMs()
            vms.formUnion(everyone.subtracting(quiet))
            for vm in everyone where sessions[vm]?.hasObservation != true { vms.insert(vm) }
        } else {
            // Without a dump, only a full pass tells: every VM, every monitor asked.
            for vm in sessions.keys { sessions[vm]?.forget() }
            vms = allVMs()
        }
        logger.debug("resync: \(vms.count) VM(s) to reconcile, \(quiet.count) quiet")
        if hasDesired, !vms.isEmpty { resyncStarted = resyncStarted ?? started }
        markDirty(vms)
        if hasDesired, vms.isEmpty, resyncStarted == nil { resynced(since: started) }
    }

    /// The VMs whose cached observation is among the oldest: a share of `observeSpread`, so every
    /// monitor is asked at least once every `observeSpread` resyncs. Their caches are dropped, so
    /// their reconciles ask QEMU.
    private func dueForObservation() -> [String] {
        let cached = sessions.compactMap { vm, session in session.observedAt.map { (vm, $0) } }
        let share = (cached.count + options.observeSpread - 1) / options.observeSpread
        let due = cached.sorted { $0.1 < $1.1 }.prefix(share).map(\.0)
        for vm in due { sessions[vm]?.forget() }
        return due
    }

    func resyncPeriodically() async {
        while !Task.isCancelled {
            do {
                try await Task.sleep(for: options.resyncInterval)
            } catch {
                return
            }
            await resync()
        }
    }

    /// Replaces the link cache with a fresh dump and reconciles the VMs of every link the cache
    /// had wrong; false when the dump failed (the cache stays).
    @discardableResult
    func refreshLinks() async -> Bool {
        // Events already received are older than the dump: applied after it, they would undo it.
        drainLinkChanges()
        do {
            let dump = try await host.links()
            var vms = Set<String>()
            let differences = links.replace(with: dump)
            if !differences.isEmpty { logger.debug("link dump: \(differences.count) link(s) differ from the cache") }
            for (before, link) in differences {
                vms.formUnion(links.vmsAffected(by: link, before: before, bindings: bindings))
            }
            markDirty(vms)
            return true
        } catch {
            logger.error("link dump failed: \(error)")
            return false
        }
    }

    /// A resync is done when no VM is dirty or being reconciled any more.
    func finishResyncIfDrained() {
        guard let started = resyncStarted, queue.isDrained else { return }
        resyncStarted = nil
        resynced(since: started)
    }

    private func resynced(since started: ContinuousClock.Instant) {
        let duration = ContinuousClock.now - started
        metrics.resynced(at: Reconciler.now(), duration: duration)
        logger.debug("resync done in \(duration.milliseconds) ms")
        writer.writeMetrics(metrics)
    }
}
