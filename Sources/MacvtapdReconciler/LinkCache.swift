import MacvtapdCore

/// The controller's view of the host's links, like an informer's cache: a full dump, then kept
/// current by link events and by the executor's own changes, so a link event re-plans without a
/// dump. Link events decide which VMs to look at again; the planner decides what to do.
struct LinkCache {
    /// The links, in no particular order: the array the planner's snapshot is made of, shared with
    /// it until the next change, rather than a dictionary of every link beside a copy of it for the
    /// snapshot (0.45 MiB of the daemon's heap at 1,000 bindings).
    private var stored: [ObservedLink] = [] {
        didSet { snapshot = nil }
    }
    /// Where each link is in `stored`, by ifindex.
    private var positions: [Int32: Int] = [:]
    /// `stored` as the planner takes them, built once per change of the cache, not per VM.
    private var snapshot: ObservedHost?
    /// Ifindexes the kernel announced as deleted since the last dump. The kernel never reuses an
    /// ifindex in a namespace, so a link our executor created and an event already deleted (while
    /// the reconcile that created it was still running) is never put back into the cache.
    private var deleted: Set<Int32> = []

    mutating func host() -> ObservedHost {
        if let snapshot { return snapshot }
        let built = ObservedHost(links: stored)
        snapshot = built
        return built
    }

    /// The cached link with this ifindex.
    subscript(ifindex: Int32) -> ObservedLink? {
        get { positions[ifindex].map { stored[$0] } }
        set {
            if let position = positions[ifindex] {
                if let newValue {
                    stored[position] = newValue
                } else {
                    // The last link takes the removed one's place.
                    let last = stored.removeLast()
                    positions[ifindex] = nil
                    if position < stored.count {
                        stored[position] = last
                        positions[last.ifindex] = position
                    }
                }
            } else if let newValue {
                positions[ifindex] = stored.count
                stored.append(newValue)
            }
        }
    }

    /// Every cached link, in no particular order.
    var links: [ObservedLink] { stored }

    /// Replaces everything with a fresh dump; returns what the cache had wrong: links that are
    /// new or differ (with the cached version) and links that are gone (as cached). A dump that
    /// matches the cache, the steady state, changes nothing and keeps the planner's snapshot.
    @discardableResult
    mutating func replace(with dump: [ObservedLink]) -> [(before: ObservedLink?, link: ObservedLink)] {
        deleted = []
        var fresh: [Int32: Int] = [:]
        fresh.reserveCapacity(dump.count)
        var differences: [(before: ObservedLink?, link: ObservedLink)] = []
        for (position, link) in dump.enumerated() {
            fresh[link.ifindex] = position
            let before = self[link.ifindex]
            if before != link { differences.append((before, link)) }
        }
        for link in stored where fresh[link.ifindex] == nil { differences.append((link, link)) }
        if !differences.isEmpty {
            stored = dump
            positions = fresh
        }
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
            let before = self[link.ifindex]
            // The kernel takes a new macvtap's alias (our mark) in a second request and announces
            // that change only for a link that is up: a macvtap created down (a migration
            // destination) is announced without its mark, possibly after the executor recorded it.
            // Keep the mark until a dump says otherwise.
            if link.alias == nil, link.isMacvtap, let known = before?.alias { link.alias = known }
            // A change that does not touch what the planner reads (e.g. statistics) changes nothing.
            if before != link { self[link.ifindex] = link }
            return (before, before != link)
        case .removed(let link):
            deleted.insert(link.ifindex)
            let before = self[link.ifindex]
            self[link.ifindex] = nil
            return (before, true)
        }
    }

    /// What the executor did, before the kernel's events about it arrive.
    mutating func follow(_ outcome: BindingOutcome) {
        for link in outcome.createdLinks where !deleted.contains(link.ifindex) {
            if var announced = self[link.ifindex] {
                if announced.alias == nil {
                    announced.alias = link.alias
                    self[link.ifindex] = announced
                }
            } else {
                self[link.ifindex] = link
            }
        }
        for index in outcome.deletedLinks {
            self[index] = nil
            deleted.insert(index)
        }
        for change in outcome.adminChanges where self[change.ifindex]?.adminUp != change.up {
            self[change.ifindex]?.adminUp = change.up
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
            for other in stored where other.lowerIfindex == link.ifindex {
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
    var owningVMs: Set<String> { Set(stored.compactMap { $0.owner?.vm }) }
}
