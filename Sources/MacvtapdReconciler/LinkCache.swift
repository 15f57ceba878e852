import MacvtapdCore

/// The controller's view of the host's links, like an informer's cache: a full dump, then kept
/// current by link events and by the executor's own changes, so a link event re-plans without a
/// dump. Link events decide which VMs to look at again; the planner decides what to do.
struct LinkCache {
    /// The links as the planner takes them, kept indexed as events change them one at a time
    /// (a flap's return brings hundreds of events, between which forty VMs are planned: each
    /// plan rebuilding the indexes over a thousand links was a seventh of the daemon's CPU).
    private(set) var current = ObservedHost()
    /// Ifindexes the kernel announced as deleted since the last dump. The kernel never reuses an
    /// ifindex in a namespace, so a link our executor created and an event already deleted (while
    /// the reconcile that created it was still running) is never put back into the cache.
    private var deleted: Set<Int32> = []

    /// The links now. A value: a reconcile that holds it across a suspension makes the cache's
    /// next change copy everything, so take it, plan, and let it go.
    func host() -> ObservedHost { current }

    var links: [ObservedLink] { current.links }

    /// Replaces everything with a fresh dump; returns what the cache had wrong: links that are
    /// new or differ (with the cached version) and links that are gone (as cached). A dump that
    /// matches the cache, the steady state, changes nothing and keeps the planner's snapshot.
    @discardableResult
    mutating func replace(with dump: [ObservedLink]) -> [(before: ObservedLink?, link: ObservedLink)] {
        deleted = []
        var fresh: Set<Int32> = []
        fresh.reserveCapacity(dump.count)
        var differences: [(before: ObservedLink?, link: ObservedLink)] = []
        for link in dump {
            fresh.insert(link.ifindex)
            let before = current.link(ifindex: link.ifindex)
            if before != link { differences.append((before, link)) }
        }
        for link in current.links where !fresh.contains(link.ifindex) { differences.append((link, link)) }
        if !differences.isEmpty { current = ObservedHost(links: dump) }
        return differences
    }

    /// Applies a link event; returns the link's previous version and whether anything the planner
    /// reads changed (nil when the event is about a link already known to be deleted).
    mutating func apply(_ change: LinkChange) -> (before: ObservedLink?, changed: Bool)? {
        switch change {
        case .resyncNeeded:
            return nil
        case .updated(var link):
            guard !deleted.contains(link.ifindex) else { return nil }
            let before = current.link(ifindex: link.ifindex)
            // The kernel takes a new macvtap's alias (our mark) in a second request and announces
            // that change only for a link that is up: a macvtap created down (a migration
            // destination) is announced without its mark, possibly after the executor recorded it.
            // Keep the mark until a dump says otherwise.
            if link.alias == nil, link.isMacvtap, let known = before?.alias { link.alias = known }
            // A change that does not touch what the planner reads (e.g. statistics) changes nothing.
            if before != link { current.update(link) }
            return (before, before != link)
        case .removed(let link):
            deleted.insert(link.ifindex)
            return (current.remove(ifindex: link.ifindex), true)
        }
    }

    /// What the executor did, before the kernel's events about it arrive.
    mutating func follow(_ outcome: BindingOutcome) {
        for link in outcome.createdLinks where !deleted.contains(link.ifindex) {
            if var announced = current.link(ifindex: link.ifindex) {
                if announced.alias == nil {
                    announced.alias = link.alias
                    current.update(announced)
                }
            } else {
                current.update(link)
            }
        }
        for index in outcome.deletedLinks {
            current.remove(ifindex: index)
            deleted.insert(index)
        }
        for change in outcome.adminChanges {
            guard var link = current.link(ifindex: change.ifindex), link.adminUp != change.up else { continue }
            link.adminUp = change.up
            current.update(link)
        }
    }

    /// The VMs whose plans may change with this link: bindings that match it (now or before),
    /// bindings whose macvtap sits on it, and the owner of a macvtap of ours.
    func vmsAffected(by link: ObservedLink, before: ObservedLink?, bindings: BindingIndex) -> Set<String> {
        var vms = Set<String>()
        if let owner = link.owner { vms.insert(owner.vm) }
        if let owner = before?.owner { vms.insert(owner.vm) }
        // A macvtap is nobody's lower: scanning for its uppers would cost a pass over every link
        // for each of the hundred macvtaps a lower takes with it.
        if !link.isMacvtap {
            for other in current.links where other.lowerIfindex == link.ifindex {
                if let owner = other.owner { vms.insert(owner.vm) }
            }
        }
        // A link udev is still naming may become any binding's host; one it just finished with may
        // end the wait of bindings that matched nothing.
        if !link.udevInitialized || before?.udevInitialized == false {
            return vms.union(bindings.vms)
        }
        vms.formUnion(bindings.vms(matching: link))
        if let before { vms.formUnion(bindings.vms(matching: before)) }
        return vms
    }

    /// The VMs owning a macvtap of ours.
    var owningVMs: Set<String> { Set(current.links.compactMap { $0.owner?.vm }) }
}
