import MacvtapdCore
import MacvtapdReconciler
import Synchronization

/// An in-memory host that behaves like the kernel where the reconciler can tell: ifindexes are
/// never reused, deleting a lower deletes its macvtaps, names are unique.
public final class EmbeddedHost: HostDriver {
    public struct State {
        public var links: [ObservedLink] = []
        public var nextIndex: Int32 = 100
        public var failCreate = false
        public var operations: [String] = []
        /// The backends whose (pretend) tap fd the host keeps, as the real driver does.
        public var keptTaps: Set<VMBackend> = []
        var subscribers: [AsyncStream<LinkChange>.Continuation] = []
    }
    public let state = Mutex(State())

    public init(lowers: [String]) {
        poolThreadEntersFixture()
        state.withLock { state in
            for (offset, name) in lowers.enumerated() {
                let mac = MACAddress(bytes: [2, 0, 0, 0, 0, UInt8(offset + 1)])
                state.links.append(ObservedLink(ifindex: Int32(offset + 2), name: name, kind: "veth", mac: mac))
            }
        }
    }

    public func addLower(_ name: String, carrier: Bool = true) {
        state.withLock { state in
            let link = ObservedLink(ifindex: state.nextIndex, name: name, kind: "veth", carrier: carrier)
            state.links.append(link)
            state.nextIndex += 1
            state.announce(.updated(link))
        }
    }

    /// Deletes the lower and, as the kernel does, every macvtap on it.
    public func removeLower(_ name: String) {
        state.withLock { state in
            guard let lower = state.links.first(where: { $0.name == name }) else { return }
            let gone = state.links.filter { $0.ifindex == lower.ifindex || $0.lowerIfindex == lower.ifindex }
            state.links.removeAll { gone.contains($0) }
            for link in gone { state.announce(.removed(link)) }
        }
    }

    public func setCarrier(_ name: String, _ carrier: Bool) {
        state.withLock { state in
            guard let index = state.links.firstIndex(where: { $0.name == name }) else { return }
            state.links[index].carrier = carrier
            state.announce(.updated(state.links[index]))
        }
    }

    public func linkChanges() throws -> AsyncStream<LinkChange> {
        let (stream, continuation) = AsyncStream.makeStream(of: LinkChange.self)
        state.withLock { $0.subscribers.append(continuation) }
        return stream
    }

    public var macvtaps: [ObservedLink] { state.withLock { $0.links.filter(\.isMacvtap) } }
    public var operations: [String] { state.withLock { $0.operations } }

    public func links() async throws -> [ObservedLink] { state.withLock { $0.links } }

    public func createMacvtap(_ spec: MacvtapSpec) async throws -> ObservedLink {
        try state.withLock { state in
            state.operations.append("create \(spec.name)")
            if state.failCreate { throw EmbeddedError("injected failure") }
            guard !state.links.contains(where: { $0.name == spec.name }) else { throw EmbeddedError("EEXIST") }
            guard state.links.contains(where: { $0.ifindex == spec.lowerIfindex }) else {
                throw EmbeddedError("ENODEV")
            }
            let link = ObservedLink(
                ifindex: state.nextIndex, name: spec.name, kind: "macvtap", mac: spec.mac, adminUp: spec.up,
                lowerIfindex: spec.lowerIfindex, alias: spec.alias, macvtapMode: spec.mode)
            state.nextIndex += 1
            state.links.append(link)
            state.announce(.updated(link))
            return link
        }
    }

    public func deleteMacvtap(ifindex: Int32, name: String) async throws {
        try state.withLock { state in
            state.operations.append("delete \(name)")
            guard state.links.contains(where: { $0.ifindex == ifindex }) else { throw EmbeddedError("ENODEV") }
            let gone = state.links.filter { $0.ifindex == ifindex }
            state.links.removeAll { $0.ifindex == ifindex }
            for link in gone { state.announce(.removed(link)) }
        }
    }

    public func setMacvtapUp(ifindex: Int32, name: String) async throws {
        try setAdministrativeState(up: true, ifindex: ifindex, name: name)
    }

    public func setMacvtapDown(ifindex: Int32, name: String) async throws {
        try setAdministrativeState(up: false, ifindex: ifindex, name: name)
    }

    private func setAdministrativeState(up: Bool, ifindex: Int32, name: String) throws {
        try state.withLock { state in
            state.operations.append("\(up ? "up" : "down") \(name)")
            guard let index = state.links.firstIndex(where: { $0.ifindex == ifindex }) else {
                throw EmbeddedError("ENODEV")
            }
            state.links[index].adminUp = up
            state.announce(.updated(state.links[index]))
        }
    }

    public func withOpenTap<T: Sendable>(
        ifindex: Int32, name: String, for backend: VMBackend,
        _ body: @Sendable (Int32) async throws -> (T, handedOver: Bool)
    ) async throws -> T {
        guard state.withLock({ $0.links.contains { $0.ifindex == ifindex } }) else { throw EmbeddedError("ENODEV") }
        let (result, handedOver) = try await body(1000 + ifindex)
        if handedOver { state.withLock { _ = $0.keptTaps.insert(backend) } }
        return result
    }

    public func releaseTaps(vm: String, where isGone: (Ownership.BackendIDs) -> Bool) {
        state.withLock { state in state.keptTaps = state.keptTaps.filter { $0.vm != vm || !isGone($0.ids) } }
    }

    public func keptTaps(vm: String) -> Set<Ownership.BackendIDs> {
        state.withLock { Set($0.keptTaps.filter { $0.vm == vm }.map(\.ids)) }
    }
}

extension EmbeddedHost.State {
    fileprivate mutating func announce(_ change: LinkChange) {
        for subscriber in subscribers { subscriber.yield(change) }
    }
}

/// An in-memory QEMU: NICs on hubs, netdevs by id, guest link, and switches to make it fail.
public final class EmbeddedVM: VMConnection {
    public struct State {
        public var nics: [String: ObservedNIC] = [:]
        /// netdev id → hub (ports) or nil (taps)
        public var netdevs: [String: Int?] = [:]
        public var link: [String: Bool] = [:]
        public var reachable: VMConnectError? = nil
        public var runState: RunState = .running
        public var failAttach = false
        /// Observe hangs this long, like a QEMU whose monitor stopped answering.
        public var observeDelay: Duration = .zero
        /// Observe answers after this long, like a busy QEMU: a window for events to arrive in.
        public var observeLatency: Duration = .zero
        /// Observe answers with the state as it was when asked, this long later: a reply in transit
        /// while QEMU moves on (an event sent meanwhile arrives before it).
        public var replyDelay: Duration = .zero
        /// set_link takes this long, widening the window in which events race a reconcile.
        public var setLinkDelay: Duration = .zero
        /// When the last set_link began, before its delay: a bound on when the steps before it ended.
        public var setLinkStartedAt: ContinuousClock.Instant?
        /// announce-self takes this long; its call is recorded once it returns.
        public var announceDelay: Duration = .zero
        public var calls: [String] = []
        /// How many times the VM was observed (`query-status` + `info network` in the real thing).
        public var observations = 0
        var eventContinuations: [AsyncStream<String>.Continuation] = []
    }
    public let name: String
    public let state = Mutex(State())

    public init(name: String, nics: [String: Int]) {
        self.name = name
        state.withLock { state in
            for (offset, (nic, hub)) in nics.sorted(by: { $0.key < $1.key }).enumerated() {
                let mac = MACAddress(bytes: [0x52, 0x54, 0, 0, UInt8(name.count), UInt8(offset)])
                state.nics[nic] = ObservedNIC(id: nic, mac: mac, hub: hub)
            }
        }
    }

    public var netdevIDs: [String] { state.withLock { $0.netdevs.keys.sorted() } }
    public var calls: [String] { state.withLock { $0.calls } }
    public var observations: Int { state.withLock { $0.observations } }
    public func link(_ nic: String) -> Bool? { state.withLock { $0.link[nic] } }

    public func observe(vm: String) async throws -> ObservedVM {
        let delay = state.withLock { $0.observeDelay }
        if delay > .zero {
            try await Task.sleep(for: delay)
            throw EmbeddedError("QMP info network: no reply within \(delay)")
        }
        let latency = state.withLock { $0.observeLatency }
        if latency > .zero { try await Task.sleep(for: latency) }
        let (answer, replyDelay) = state.withLock { state in (Self.answer(vm, &state), state.replyDelay) }
        if replyDelay > .zero { try await Task.sleep(for: replyDelay) }
        return answer
    }

    private static func answer(_ vm: String, _ state: inout State) -> ObservedVM {
        state.observations += 1
        var backends: [Ownership.BackendIDs: ObservedBackend] = [:]
        for (id, hub) in state.netdevs {
            guard let (ids, part) = Ownership.parseBackendID(id) else { continue }
            var backend = backends[ids] ?? ObservedBackend(ids: ids, hasTap: false, hasPort: false, hub: nil)
            if part == .tap { backend.hasTap = true } else { backend.hasPort = true; backend.hub = hub }
            backends[ids] = backend
        }
        return ObservedVM(
            name: vm, reachability: .reachable, runState: state.runState, nics: state.nics,
            backends: Array(backends.values))
    }

    public func attachBackend(_ ids: Ownership.BackendIDs, fd: Int32, hub: Int) async throws {
        try state.withLock { state in
            state.calls.append("attach \(ids.tap)")
            if state.failAttach { throw EmbeddedError("injected QMP failure") }
            guard state.netdevs[ids.tap] == nil, state.netdevs[ids.port] == nil else {
                throw EmbeddedError("Duplicate ID")
            }
            state.netdevs[ids.tap] = .some(nil)
            state.netdevs[ids.port] = hub
        }
    }

    public func detachBackend(_ backend: ObservedBackend) async throws {
        state.withLock { state in
            state.calls.append("detach \(backend.ids.tap)")
            state.netdevs[backend.ids.port] = nil
            state.netdevs[backend.ids.tap] = nil
        }
    }

    public func setLink(nic: String, up: Bool) async throws {
        let delay = state.withLock { state in
            state.setLinkStartedAt = .now
            return state.setLinkDelay
        }
        if delay > .zero { try await Task.sleep(for: delay) }
        state.withLock { state in
            state.calls.append("link \(nic) \(up)")
            state.link[nic] = up
        }
    }

    public func announce(nic: String) async throws {
        let delay = state.withLock { $0.announceDelay }
        if delay > .zero { try await Task.sleep(for: delay) }
        state.withLock { $0.calls.append("announce \(nic)") }
    }

    public var events: AsyncStream<String> {
        let (stream, continuation) = AsyncStream.makeStream(of: String.self)
        state.withLock { $0.eventContinuations.append(continuation) }
        return stream
    }

    /// QEMU sends an event (`RESUME`, `STOP`, ...) to every session.
    public func send(event: String) {
        state.withLock { state in
            for continuation in state.eventContinuations { continuation.yield(event) }
        }
    }

    /// QEMU quits: the monitor sends SHUTDOWN, the session ends, and the socket stops answering.
    public func shutDown() {
        state.withLock { state in
            state.reachable = .absent("connection refused")
            state.netdevs = [:]
            state.link = [:]
            for continuation in state.eventContinuations {
                continuation.yield("SHUTDOWN")
                continuation.finish()
            }
            state.eventContinuations = []
        }
    }

    /// QEMU started again with the same command line: fresh netdevs, the monitor answers.
    public func restart() {
        state.withLock { $0.reachable = nil }
    }

    public func close() async {
        state.withLock { state in
            for continuation in state.eventContinuations { continuation.finish() }
            state.eventContinuations = []
        }
    }
}

public struct EmbeddedConnector: VMConnector {
    public let vms: [String: EmbeddedVM]

    public init(vms: [String: EmbeddedVM]) {
        self.vms = vms
    }

    public func connect(vm: String, qmp: String) async throws(VMConnectError) -> any VMConnection {
        guard let machine = vms[vm] else { throw .absent("\(qmp): No such file or directory") }
        if let error = machine.state.withLock({ $0.reachable }) { throw error }
        return machine
    }
}

public struct EmbeddedError: Error, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}
