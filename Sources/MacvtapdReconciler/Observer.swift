import MacvtapdCore

/// The VMs to look at and how: every VM of the desired state, plus VMs that only the previous
/// status still knows (their bindings were removed and may need tearing down).
public struct VMTarget: Hashable, Sendable {
    public var name: String
    public var qmp: String
    /// NICs whose guest-programmed MAC is read (`mac: guest`).
    public var guestMACNICs: Set<String>

    public init(name: String, qmp: String, guestMACNICs: Set<String> = []) {
        self.name = name
        self.qmp = qmp
        self.guestMACNICs = guestMACNICs
    }

    public static func targets(desired: DesiredState, previous: StatusDocument?) -> [VMTarget] {
        var byName: [String: String] = desired.vms.mapValues(\.qmp)
        for binding in previous?.bindings ?? [] where byName[binding.vm] == nil {
            if let qmp = binding.qmp { byName[binding.vm] = qmp }
        }
        return byName.map {
            VMTarget(name: $0.key, qmp: $0.value, guestMACNICs: desired.vms[$0.key]?.guestMACNICs ?? [])
        }.sorted { $0.name < $1.name }
    }
}

/// One observation of the world, with the QMP sessions it opened kept for the executor.
public struct Observation: Sendable {
    public var state: ObservedState
    public var connections: [String: any VMConnection]

    public func closeConnections() async {
        for connection in connections.values { await connection.close() }
    }
}

/// Reads the host and every VM concurrently; a VM that cannot be reached is recorded as such and
/// never holds up the others.
public struct Observer: Sendable {
    public var host: any HostDriver
    public var connector: any VMConnector

    public init(host: any HostDriver, connector: any VMConnector) {
        self.host = host
        self.connector = connector
    }

    /// `guestLink` carries macvtapd's records of the carrier it set, by binding.
    public func observe(vms targets: [VMTarget], guestLink: [BindingKey: Bool]) async throws -> Observation {
        async let links = host.links()
        let connector = self.connector
        let results = await withTaskGroup(of: (ObservedVM, (any VMConnection)?).self) { group in
            for target in targets {
                group.addTask {
                    await Self.observe(target, connector: connector)
                }
            }
            var results: [(ObservedVM, (any VMConnection)?)] = []
            for await result in group { results.append(result) }
            return results
        }
        var vms: [String: ObservedVM] = [:]
        var connections: [String: any VMConnection] = [:]
        for (vm, connection) in results {
            var vm = vm
            for (key, up) in guestLink where key.vm == vm.name { vm.guestLink[key.nic] = up }
            vms[vm.name] = vm
            connections[vm.name] = connection
        }
        do {
            return Observation(
                state: ObservedState(host: ObservedHost(links: try await links), vms: vms), connections: connections)
        } catch {
            for connection in connections.values { await connection.close() }
            throw error
        }
    }

    static func observe(_ target: VMTarget, connector: any VMConnector) async -> (ObservedVM, (any VMConnection)?) {
        let connection: any VMConnection
        do {
            connection = try await connector.connect(vm: target.name, qmp: target.qmp)
        } catch {
            switch error {
            case .absent(let why): return (.absent(target.name, why), nil)
            case .unresponsive(let why): return (ObservedVM(name: target.name, reachability: .unresponsive(why)), nil)
            }
        }
        do {
            return (try await connection.observe(vm: target.name, guestMACOf: target.guestMACNICs), connection)
        } catch {
            await connection.close()
            return (ObservedVM(name: target.name, reachability: .unresponsive("\(error)")), nil)
        }
    }
}
