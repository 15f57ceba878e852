import Synchronization

/// Link events, batched: a thread-safe inbox takes each event as it arrives, and the actor applies
/// everything waiting in one go. A burst (a lower and its hundred macvtaps gone, a veth's
/// follow-up events) that lands while the actor is busy costs one pass over the cache and one mark
/// per affected VM, and a reconcile about to plan takes in what arrived while it observed (see
/// `WorkQueue.linksSeen`), so a burst costs each VM one plan. There is no timer: nothing waits
/// for more events to come, so a single event costs no latency.
final class LinkInbox: Sendable {
    private struct State {
        var changes: [LinkChange] = []
        var drainScheduled = false
    }
    private let state = Mutex(State())

    /// True when the caller must schedule a drain (none is pending).
    func add(_ change: LinkChange) -> Bool {
        state.withLock { state in
            state.changes.append(change)
            defer { state.drainScheduled = true }
            return !state.drainScheduled
        }
    }

    func take() -> [LinkChange] {
        state.withLock { state in
            state.drainScheduled = false
            defer { state.changes = [] }
            return state.changes
        }
    }
}

extension Controller {
    func followLinkEvents() async {
        while !Task.isCancelled {
            let changes: AsyncStream<LinkChange>
            do {
                changes = try host.linkChanges()
            } catch {
                logger.error("cannot follow link events: \(error); relying on periodic resync")
                try? await Task.sleep(for: options.reconnectCap)
                continue
            }
            await Self.receive(changes, into: self, inbox: linkInbox)
        }
    }

    /// Off the actor: events go to the inbox as fast as they come, whatever the actor is doing.
    private nonisolated static func receive(
        _ changes: AsyncStream<LinkChange>, into controller: Controller, inbox: LinkInbox
    ) async {
        for await change in changes {
            if Task.isCancelled { return }
            if inbox.add(change) {
                Task { await controller.drainLinkChanges() }
            }
        }
    }

    /// Applies every link event waiting in the inbox and marks the VMs they concern, once each.
    func drainLinkChanges() {
        let changes = linkInbox.take()
        guard !changes.isEmpty else { return }
        if changes.contains(.resyncNeeded) {
            logger.warning("link notifications were lost (ENOBUFS); resyncing")
            Task { await self.resync(full: true) }
        }
        var affected = Set<String>()
        for change in changes {
            guard let (before, changed) = links.apply(change), changed else { continue }
            switch change {
            case .updated(let link), .removed(let link):
                affected.formUnion(links.vmsAffected(by: link, before: before, bindings: bindings))
            case .resyncNeeded:
                break
            }
        }
        if !affected.isEmpty { markDirty(affected, byLinks: true) }
    }
}
