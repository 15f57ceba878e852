import MacvtapdCore
import MacvtapdUdev
import Synchronization

/// A host driver whose links carry udev's view of them: their properties (`ID_PATH`, ...) and
/// whether udevd has finished with them. udev's "net" events are link changes too, so a link that
/// udev initialises or renames is planned again at once.
///
/// Without udev (see `UdevEnvironment`) links pass through untouched: initialised, no properties.
public struct UdevHostDriver: HostDriver {
    let base: any HostDriver
    let udev: UdevClient?
    /// The latest link rtnetlink announced, by ifindex, so a udev event can be turned into a whole link.
    private let announced: Announced

    private final class Announced: Sendable {
        let links = Mutex<[Int32: ObservedLink]>([:])
    }

    /// `active` says whether udev describes this namespace (`UdevEnvironment.resolve()`).
    public init(wrapping base: any HostDriver, active: Bool) throws {
        self.base = base
        udev = active ? try UdevClient() : nil
        announced = Announced()
    }

    public var consultsUdev: Bool { udev != nil }

    public func links() async throws -> [ObservedLink] {
        try await base.links().map(enriched)
    }

    public func createMacvtap(_ spec: MacvtapSpec) async throws -> ObservedLink {
        try await base.createMacvtap(spec)
    }

    public func deleteMacvtap(ifindex: Int32, name: String) async throws {
        try await base.deleteMacvtap(ifindex: ifindex, name: name)
    }

    public func setMacvtapDown(ifindex: Int32, name: String) async throws {
        try await base.setMacvtapDown(ifindex: ifindex, name: name)
    }

    public func setMacvtapUp(ifindex: Int32, name: String) async throws {
        try await base.setMacvtapUp(ifindex: ifindex, name: name)
    }

    public func withOpenTap<T: Sendable>(
        ifindex: Int32, name: String, for backend: VMBackend,
        _ body: @Sendable (Int32) async throws -> (T, handedOver: Bool)
    ) async throws -> T {
        try await base.withOpenTap(ifindex: ifindex, name: name, for: backend, body)
    }

    public func releaseTaps(vm: String, where isGone: (Ownership.BackendIDs) -> Bool) {
        base.releaseTaps(vm: vm, where: isGone)
    }

    public func linkChanges() throws -> AsyncStream<LinkChange> {
        let changes = try base.linkChanges()
        guard udev != nil else { return changes }
        let monitor = try UdevMonitor(source: .udev)
        let (stream, continuation) = AsyncStream.makeStream(of: LinkChange.self)
        let announced = self.announced
        let driver = self
        // Each change is enriched, recorded and yielded under one lock, so the two sources never
        // deliver an older view of a link after a newer one.
        let kernel = Task {
            for await change in changes {
                announced.links.withLock { links in
                    switch change {
                    case .updated(let link):
                        let link = driver.enriched(link)
                        links[link.ifindex] = link
                        continuation.yield(.updated(link))
                    case .removed(let link):
                        links[link.ifindex] = nil
                        continuation.yield(.removed(link))
                    case .resyncNeeded:
                        continuation.yield(.resyncNeeded)
                    }
                }
            }
            continuation.finish()
        }
        let base = self.base
        let udevEvents = Task {
            for await event in monitor.events {
                guard case .device(let action, let device) = event else {
                    continuation.yield(.resyncNeeded)
                    continue
                }
                // rtnetlink reports removals itself.
                if action == "remove" { continue }
                let cached = announced.links.withLock { $0[device.ifindex] }
                // A link that existed before we subscribed: rtnetlink has not described it to us.
                let dumped = cached == nil ? try? await base.links().first { $0.ifindex == device.ifindex } : nil
                guard let known = cached ?? dumped else { continue }
                announced.links.withLock { links in
                    // rtnetlink may have announced a newer view, or the removal, meanwhile.
                    if cached != nil && links[device.ifindex] == nil { return }
                    // The database now holds what udevd just finished.
                    let link = driver.enriched(links[device.ifindex] ?? known)
                    links[link.ifindex] = link
                    continuation.yield(.updated(link))
                }
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in
            kernel.cancel()
            udevEvents.cancel()
            monitor.close()
        }
        return stream
    }

    /// The link with udev's view of it. A link udev cannot find (gone, or renamed between the two
    /// lookups libudev makes) counts as not initialised; the next event or dump settles it.
    func enriched(_ link: ObservedLink) -> ObservedLink {
        guard let udev else { return link }
        var link = link
        if let device = udev.device(ifindex: link.ifindex) {
            link.udevProperties = device.properties
            link.udevInitialized = device.isInitialized
        } else {
            link.udevProperties = nil
            link.udevInitialized = false
        }
        return link
    }
}
