import Glibc
import MacvtapdCore
import MacvtapdNetlink

/// The host, through rtnetlink and the macvtap character devices.
public struct NetlinkHostDriver: HostDriver {
    let workers: HostWorkers
    let device: MacvtapDevice
    let keeper: TapKeeper

    /// `deviceDirectory` holds the private tap nodes: it must be on a filesystem that allows device
    /// nodes (`/run` is often mounted nodev; `/dev` is devtmpfs and always allows them). `width`
    /// host operations may be under way at once (see `HostWorkers`).
    /// `keptTaps` caps the tap fds kept open after attaches (nil: half of RLIMIT_NOFILE).
    public init(deviceDirectory: String, sysfsRoot: String = "/sys", width: Int = 2, keptTaps: Int? = nil) throws {
        workers = try HostWorkers(width: width)
        keeper = TapKeeper(capacity: keptTaps)
        device = MacvtapDevice(sysfsRoot: sysfsRoot, runtimeDirectory: deviceDirectory)
    }

    public func links() async throws -> [ObservedLink] {
        try await workers.run { socket in try socket.links().map(ObservedLink.init) }
    }

    public func createMacvtap(_ spec: MacvtapSpec) async throws -> ObservedLink {
        do {
            return try await workers.run { socket in
                ObservedLink(
                    try socket.createMacvtap(
                        MacvtapConfiguration(
                            name: spec.name, lowerIndex: spec.lowerIfindex, mode: spec.mode, address: spec.mac,
                            alias: spec.alias, up: spec.up)))
            }
        } catch let error as NetlinkError where error.isNoSuchDevice || error.isAlreadyExists {
            // The lower vanished, or the name is taken since the observation: re-plan.
            throw StaleObservation("\(error)")
        }
    }

    /// Deleting what is already gone succeeds: the step's goal is that the macvtap does not exist.
    public func deleteMacvtap(ifindex: Int32, name: String) async throws {
        do {
            try await workers.run { socket in
                // Check the mark right before deleting: the ifindex came from an observation, and
                // only a macvtap carrying our alias may go.
                let link = try socket.link(index: ifindex)
                guard ObservedLink(link).owner != nil else {
                    throw HostDriverError(
                        "refusing to delete \(link.name) (ifindex \(ifindex)): it is not marked as ours")
                }
                try socket.deleteLink(index: ifindex)
            }
        } catch let error as NetlinkError where error.isNoSuchDevice {
            return
        }
    }

    public func setMacvtapUp(ifindex: Int32, name: String) async throws {
        try await setAdministrativeState(up: true, ifindex: ifindex)
    }

    public func setMacvtapDown(ifindex: Int32, name: String) async throws {
        try await setAdministrativeState(up: false, ifindex: ifindex)
    }

    private func setAdministrativeState(up: Bool, ifindex: Int32) async throws {
        do {
            try await workers.run { socket in try socket.setUp(up, index: ifindex) }
        } catch let error as NetlinkError where error.isNoSuchDevice {
            throw StaleObservation("\(error)")
        }
    }

    public func withOpenTap<T: Sendable>(
        ifindex: Int32, name: String, for backend: VMBackend,
        _ body: @Sendable (Int32) async throws -> (T, handedOver: Bool)
    ) async throws -> T {
        let descriptor: FileDescriptor
        do {
            let device = self.device
            descriptor = try await workers.run { _ in try device.open(name: name, index: ifindex) }
        } catch let error as MacvtapDeviceError where error.errno == ENOENT || error.errno == ENODEV {
            // The macvtap went away (with its lower) after the observation.
            throw StaleObservation("\(error)")
        }
        let raw = try descriptor.withRawValue { $0 }
        let result: T
        let handedOver: Bool
        do {
            (result, handedOver) = try await body(raw)
        } catch {
            keeper.close(descriptor)
            throw error
        }
        if handedOver {
            keeper.keep(descriptor, for: backend)
        } else {
            keeper.close(descriptor)
        }
        return result
    }

    public func releaseTaps(vm: String, where isGone: (Ownership.BackendIDs) -> Bool) {
        keeper.release(vm: vm, where: isGone)
    }

    /// The backends of `vm` whose tap this driver keeps open (tests).
    public func keptTaps(vm: String) -> Set<Ownership.BackendIDs> {
        keeper.backends(of: vm)
    }

    /// Waits until the closes of taps let go so far have returned.
    public func tapsClosed() async {
        await keeper.drain()
    }

    public func linkChanges() throws -> AsyncStream<LinkChange> {
        let monitor = try LinkMonitor()
        let (stream, continuation) = AsyncStream.makeStream(of: LinkChange.self)
        let relay = Task {
            for await event in monitor.events {
                switch event {
                case .added(let link), .changed(let link): continuation.yield(.updated(ObservedLink(link)))
                case .deleted(let link): continuation.yield(.removed(ObservedLink(link)))
                case .resyncNeeded: continuation.yield(.resyncNeeded)
                }
            }
            continuation.finish()
        }
        continuation.onTermination = { _ in
            relay.cancel()
            monitor.close()
        }
        return stream
    }
}

struct HostDriverError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

extension ObservedLink {
    init(_ link: Link) {
        self.init(
            ifindex: link.index, name: link.name, kind: link.kind, mac: link.address,
            permanentMAC: link.permanentAddress, adminUp: link.isAdministrativelyUp,
            carrier: link.hasCarrier ?? (link.operationalState == .up), lowerIfindex: link.lowerIndex,
            alias: link.alias, macvtapMode: link.macvtapMode)
    }
}
