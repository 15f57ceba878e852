import MacvtapdCore
import MacvtapdQMP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Opens one QMP session per VM with the client from MacvtapdQMP.
public struct QMPConnector: VMConnector {
    public var configuration: QMPClient.Configuration

    public init(timeout: Duration) {
        configuration = QMPClient.Configuration(connectTimeout: timeout, commandTimeout: timeout)
    }

    public func connect(vm: String, qmp: String) async throws(VMConnectError) -> any VMConnection {
        do {
            return QMPVMConnection(client: try await QMPClient.connect(to: qmp, configuration: configuration))
        } catch QMPError.connectFailed(_, let code) where code == ENOENT || code == ECONNREFUSED {
            // Nobody listens, so no QEMU holds a backend fd of ours through this socket.
            throw .absent("QMP socket \(qmp): \(errnoText(code))")
        } catch {
            throw .unresponsive("\(error)")
        }
    }
}

/// The reconciler's view of one VM, over one QMP session.
final class QMPVMConnection: VMConnection {
    let client: QMPClient
    /// `-device mac=` by NIC id: fixed for the device's life, so read once per session; nil until
    /// the session's first observation.
    private let deviceMACs = Mutex<[String: MACAddress]?>(nil)

    init(client: QMPClient) {
        self.client = client
    }

    func observe(vm: String) async throws -> ObservedVM {
        try await observe(vm: vm, guestMACOf: [])
    }

    func observe(vm: String, guestMACOf guestMACNICs: Set<String>) async throws -> ObservedVM {
        // The monitor answers in order, but commands need not wait for each other's replies: all of
        // an observation is sent at once (pipelined), so it costs one round trip. What it costs QEMU
        // grows with the bytes sent (DeviceTree), so a session's first observation reads every
        // NIC's device MAC with one `info qtree`, and a guest MAC is asked for by name whether or
        // not the NIC is there. A task group, not `async let`: the latter crashes the Swift 6.3
        // optimizer (coroutine splitting) in release builds.
        let client = self.client
        let readTree = deviceMACs.withLock { $0 == nil }
        let (status, network, tree, guestMACs) = try await withThrowingTaskGroup(of: Reply.self) { group in
            group.addTask { .status(try await client.queryStatus()) }
            group.addTask { .network(try await client.networkInfo()) }
            // Without the tree, each NIC is read alone below.
            if readTree { group.addTask { .deviceMACs((try? await client.deviceMACs()) ?? [:]) } }
            for id in guestMACNICs {
                group.addTask {
                    do {
                        return .guestMAC(id, try await client.queryRxFilter(name: id).mainMAC)
                    } catch QMPError.commandFailed {
                        return .guestMAC(id, nil)  // no such NIC (QEMU: "invalid net client name")
                    }
                }
            }
            var status: VMStatus?
            var network: NetworkInfo?
            var tree: [String: MACAddress] = [:]
            var guestMACs: [String: MACAddress] = [:]
            for try await reply in group {
                switch reply {
                case .status(let value): status = value
                case .network(let value): network = value
                case .deviceMACs(let value): tree = value
                case .guestMAC(let id, let mac): guestMACs[id] = mac
                case .deviceMAC: break
                }
            }
            return (status!, network!, tree, guestMACs)
        }
        let known = deviceMACs.withLock { cache in
            // A NIC that went may come back under the same id as another device.
            var current = (cache ?? [:]).merging(tree) { _, read in read }
            current = current.filter { id, _ in network.nics.contains { $0.id == id } }
            cache = current
            return current
        }
        var nics: [String: ObservedNIC] = [:]
        for nic in network.nics {
            nics[nic.id] = ObservedNIC(
                id: nic.id, mac: nic.mac, hub: network.hubID(ofNIC: nic.id), deviceMAC: known[nic.id],
                guestMAC: guestMACs[nic.id])
        }
        // NICs the tree did not name (hot-plugged since, or a QEMU that prints it otherwise).
        let unknown = network.nics.map(\.id).filter { known[$0] == nil }
        if !unknown.isEmpty {
            try await withThrowingTaskGroup(of: Reply.self) { group in
                for id in unknown {
                    // A device whose MAC cannot be read is planned from `info network`'s MAC instead.
                    group.addTask { .deviceMAC(id, try? await client.nicMAC(id: id)) }
                }
                for try await reply in group {
                    if case .deviceMAC(let id, let mac?) = reply {
                        nics[id]?.deviceMAC = mac
                        deviceMACs.withLock { $0?[id] = mac }
                    }
                }
            }
        }
        return ObservedVM(
            name: vm, reachability: .reachable, runState: RunState(rawValue: status.status), nics: nics,
            backends: Self.backends(in: network))
    }

    /// One answer of a pipelined observation.
    private enum Reply: Sendable {
        case status(VMStatus)
        case network(NetworkInfo)
        case deviceMACs([String: MACAddress])
        case deviceMAC(String, MACAddress?)
        case guestMAC(String, MACAddress?)
    }

    /// Our backends from the hub topology: ports on hubs, and taps behind ports or standing alone
    /// (an attach interrupted between the two netdev_adds leaves a lone tap).
    static func backends(in network: NetworkInfo) -> [ObservedBackend] {
        var found: [Ownership.BackendIDs: ObservedBackend] = [:]
        func note(_ id: String, hub: Int?) {
            guard let (ids, part) = Ownership.parseBackendID(id) else { return }
            var backend = found[ids] ?? ObservedBackend(ids: ids, hasTap: false, hasPort: false, hub: nil)
            switch part {
            case .tap: backend.hasTap = true
            case .port:
                backend.hasPort = true
                backend.hub = hub
            }
            found[ids] = backend
        }
        for hub in network.hubs {
            for port in hub.ports {
                note(port.id, hub: hub.id)
                if let peer = port.peer { note(peer.id, hub: nil) }
            }
        }
        for netdev in network.standaloneNetdevs { note(netdev.id, hub: nil) }
        return found.values.sorted { $0.ids.tap < $1.ids.tap }
    }

    func attachBackend(_ ids: Ownership.BackendIDs, fd: Int32, hub: Int) async throws {
        do {
            try await attach(ids, fd: fd, hub: hub)
        } catch let error as QMPError where error.description.contains("Duplicate ID") {
            // A backend with these ids exists since the observation: re-plan from what is there.
            throw StaleObservation("\(error)")
        }
    }

    private func attach(_ ids: Ownership.BackendIDs, fd: Int32, hub: Int) async throws {
        try await client.addTapNetdev(id: ids.tap, fd: fd, fdName: ids.fdName)
        do {
            try await client.addHubPort(id: ids.port, hubID: hub, netdev: ids.tap)
        } catch {
            try? await client.deleteNetdev(id: ids.tap)
            throw error
        }
    }

    /// Detaching what is already gone succeeds (QEMU says DeviceNotFound).
    func detachBackend(_ backend: ObservedBackend) async throws {
        for (present, id) in [(backend.hasPort, backend.ids.port), (backend.hasTap, backend.ids.tap)] where present {
            do {
                try await client.deleteNetdev(id: id)
            } catch let error as QMPError where error.qemuErrorClass == "DeviceNotFound" {
                continue
            }
        }
    }

    func setLink(nic: String, up: Bool) async throws {
        do {
            try await client.setLink(name: nic, up: up)
        } catch let error as QMPError where error.qemuErrorClass == "DeviceNotFound" {
            throw StaleObservation("\(error)")
        }
    }

    /// The first round goes out at once; QEMU's migration timing repeats it four times over ~0.5 s
    /// in case the first frames are lost while the path settles.
    func announce(nic: String) async throws {
        do {
            try await client.announceSelf(Self.announcement(of: [nic]))
        } catch let error as QMPError where error.qemuErrorClass == "DeviceNotFound" {
            throw StaleObservation("\(error)")
        }
    }

    /// One announce-self for all of `nics`, on the first one's named timer: QEMU reads its monitor
    /// a byte at a time, and this is one command where a reconcile that attached 25 NICs sent 25
    /// (3.5 KB). A later announce of that first NIC alone restarts the timer for it alone: the
    /// others keep the round already sent, and lose only its repeats.
    func announce(nics: [String]) async throws {
        guard !nics.isEmpty else { return }
        try await client.announceSelf(Self.announcement(of: nics))
    }

    /// An announce-self of `nics` on the first one's named timer (`mvtd.<nic>`: timer ids are a
    /// namespace of their own, and QEMU reads the monitor a byte per main-loop pass).
    private static func announcement(of nics: [String]) -> AnnounceParameters {
        AnnounceParameters(interfaces: nics, id: "mvtd.\(nics[0])")
    }

    /// Every step in one pipelined exchange: getfd (the fd on its own sendmsg), netdev_add tap,
    /// netdev_add hubport, set_link, announce-self, netdev_del, written back to back and answered
    /// in order. Each step's result is read from its own commands' replies, with the same
    /// meaning and the same undo as when it is sent alone.
    func perform(_ steps: [VMStep]) async throws -> [Result<Void, any Error>] {
        var commands: [QMPCommand] = []
        var ranges: [Range<Int>] = []
        for step in steps {
            let first = commands.count
            switch step {
            case .attach(let ids, let fd, let hub):
                commands += [
                    .getfd(name: ids.fdName, fd: fd), .addTapNetdev(id: ids.tap, fdName: ids.fdName),
                    .addHubPort(id: ids.port, hubID: hub, netdev: ids.tap),
                ]
            case .detach(let backend):
                for (present, id) in [(backend.hasPort, backend.ids.port), (backend.hasTap, backend.ids.tap)]
                where present {
                    commands.append(.deleteNetdev(id: id))
                }
            case .setLink(let nic, let up):
                commands.append(.setLink(name: nic, up: up))
            case .announce(let nic):
                commands.append(.announceSelf(Self.announcement(of: [nic])))
            }
            ranges.append(first..<commands.count)
        }
        let replies = try await client.executePipelined(commands)
        var results: [Result<Void, any Error>] = []
        for (step, range) in zip(steps, ranges) {
            let mine = Array(replies[range])
            do {
                switch step {
                case .attach(let ids, _, _): try await attached(ids, mine)
                case .detach:
                    for case .failure(let error) in mine where error.qemuErrorClass != "DeviceNotFound" { throw error }
                case .setLink, .announce:
                    if case .failure(let error) = mine[0] {
                        if error.qemuErrorClass == "DeviceNotFound" { throw StaleObservation("\(error)") }
                        throw error
                    }
                }
                results.append(.success(()))
            } catch {
                results.append(.failure(error))
            }
        }
        return results
    }

    /// An attach's three replies (getfd, tap, hubport), undone as `attach` undoes a failed step.
    private func attached(_ ids: Ownership.BackendIDs, _ replies: [Result<JSONValue, QMPError>]) async throws {
        if case .failure(let error) = replies[0] { throw error }
        if case .failure(let error) = replies[1] {
            // QEMU removes the name when netdev_add consumed the fd; "not found" is then expected.
            try? await client.closefd(name: ids.fdName)
            // The hubport that followed failed with it, or (the tap already existed) joined it.
            if error.description.contains("Duplicate ID") { throw StaleObservation("\(error)") }
            throw error
        }
        if case .failure(let error) = replies[2] {
            try? await client.deleteNetdev(id: ids.tap)
            if error.description.contains("Duplicate ID") { throw StaleObservation("\(error)") }
            throw error
        }
    }

    /// The client's event stream has one consumer: the controller's session task.
    var events: AsyncStream<String> {
        let source = client.events
        return AsyncStream { continuation in
            let relay = Task {
                for await event in source { continuation.yield(event.name) }
                continuation.finish()
            }
            continuation.onTermination = { _ in relay.cancel() }
        }
    }

    func close() async {
        await client.close()
    }
}
