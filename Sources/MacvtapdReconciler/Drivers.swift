import MacvtapdCore

/// The host operations the reconciler needs. The real one speaks rtnetlink; tests may use an
/// in-memory one. Every operation is idempotent where the kernel allows it.
public protocol HostDriver: Sendable {
    /// A fresh dump of every link.
    func links() async throws -> [ObservedLink]
    /// Creates the macvtap (MAC, mode and ownership mark in the creating message) and brings it up.
    func createMacvtap(_ spec: MacvtapSpec) async throws -> ObservedLink
    func deleteMacvtap(ifindex: Int32, name: String) async throws
    func setMacvtapUp(ifindex: Int32, name: String) async throws
    func setMacvtapDown(ifindex: Int32, name: String) async throws
    /// Opens the macvtap's tap character device and lends the fd to `body`. When `body` says QEMU
    /// took a copy of it for `backend` (`handedOver`), the driver keeps its own open until
    /// `releaseTaps` lets it go, so that QEMU's close is never the last (see `TapKeeper`);
    /// otherwise the fd is closed, off the caller's path.
    func withOpenTap<T: Sendable>(
        ifindex: Int32, name: String, for backend: VMBackend,
        _ body: @Sendable (Int32) async throws -> (T, handedOver: Bool)
    ) async throws -> T
    /// Lets go of the taps kept for the backends of `vm` that `isGone` says QEMU no longer holds;
    /// the closes run off the caller's path.
    func releaseTaps(vm: String, where isGone: (Ownership.BackendIDs) -> Bool)
    /// Link notifications (RTNLGRP_LINK) from now on; the stream ends when its consumer stops.
    func linkChanges() throws -> AsyncStream<LinkChange>
}

extension VMConnection {
    /// For connections that cannot tell a guest-programmed MAC from the NIC's own.
    public func observe(vm: String, guestMACOf nics: Set<String>) async throws -> ObservedVM {
        try await observe(vm: vm)
    }

    /// One announce after another, for connections that cannot send them as one command; the
    /// first failure is thrown once every NIC was tried.
    public func announce(nics: [String]) async throws {
        var failure: (any Error)?
        for nic in nics {
            do {
                try await announce(nic: nic)
            } catch {
                failure = failure ?? error
            }
        }
        if let failure { throw failure }
    }

    /// One step after another, stopping at the first failure (not at an announce's, which is
    /// advisory unless the NIC is gone).
    public func perform(_ steps: [VMStep]) async throws -> [Result<Void, any Error>] {
        var results: [Result<Void, any Error>] = []
        var stopped = false
        for step in steps {
            if stopped {
                results.append(.failure(VMStepNotAttempted()))
                continue
            }
            do {
                switch step {
                case .attach(let ids, let fd, let hub): try await attachBackend(ids, fd: fd, hub: hub)
                case .detach(let backend): try await detachBackend(backend)
                case .setLink(let nic, let up): try await setLink(nic: nic, up: up)
                case .announce(let nic): try await announce(nic: nic)
                }
                results.append(.success(()))
            } catch {
                results.append(.failure(error))
                if case .announce = step, !(error is StaleObservation) { continue }
                stopped = true
            }
        }
        return results
    }
}

/// A backend of one VM: its netdev ids are unique within the VM only.
public struct VMBackend: Hashable, Sendable {
    public var vm: String
    public var ids: Ownership.BackendIDs

    public init(vm: String, ids: Ownership.BackendIDs) {
        self.vm = vm
        self.ids = ids
    }
}

/// One QMP step of a binding's plan, as a connection carries it out.
public enum VMStep: Sendable {
    case attach(Ownership.BackendIDs, fd: Int32, hub: Int)
    case detach(ObservedBackend)
    case setLink(nic: String, up: Bool)
    case announce(nic: String)
}

/// The result of a step after one that failed: it was not sent.
public struct VMStepNotAttempted: Error, CustomStringConvertible {
    public init() {}
    public var description: String { "not attempted: an earlier step failed" }
}

/// What the kernel announced about a link.
public enum LinkChange: Hashable, Sendable {
    /// RTM_NEWLINK: the link appeared or changed.
    case updated(ObservedLink)
    /// RTM_DELLINK, with the link as last announced.
    case removed(ObservedLink)
    /// Notifications were lost (ENOBUFS): only a full dump tells the truth now.
    case resyncNeeded
}

/// One live QMP session with a VM.
public protocol VMConnection: AnyObject, Sendable {
    /// NICs, our backends and the run state, as QEMU reports them now. `guestLink` is left empty:
    /// QEMU cannot report it (DESIGN.md), the caller fills in its records.
    func observe(vm: String) async throws -> ObservedVM
    /// `observe(vm:)`, plus the guest-programmed MAC of `nics` (`mac: guest`). Reading it re-arms
    /// QEMU's NIC_RX_FILTER_CHANGED for that NIC, so the guest's next change wakes us again.
    func observe(vm: String, guestMACOf nics: Set<String>) async throws -> ObservedVM
    /// getfd + netdev_add tap + netdev_add hubport; undoes its own partial work when a step fails.
    func attachBackend(_ ids: Ownership.BackendIDs, fd: Int32, hub: Int) async throws
    /// netdev_del of whichever of the port and tap exist (port first: it references the tap).
    func detachBackend(_ backend: ObservedBackend) async throws
    func setLink(nic: String, up: Bool) async throws
    /// announce-self for one NIC: the guest's gratuitous ARPs and QEMU's RARPs on its current path.
    func announce(nic: String) async throws
    /// announce-self for several NICs at once (one command where the connection allows it). QEMU
    /// 7.2 does not check the names: a NIC that is gone is skipped, not an error.
    func announce(nics: [String]) async throws
    /// Several steps of one binding, in order, each with its own result; a connection that can
    /// sends them in one exchange (QMP pipelining). A step that was not sent because an earlier one
    /// failed says so (`VMStepNotAttempted`).
    func perform(_ steps: [VMStep]) async throws -> [Result<Void, any Error>]
    /// Names of the QMP events the VM sends (`SHUTDOWN`, `RESET`, ...); ends when the session does.
    var events: AsyncStream<String> { get }
    func close() async
}

/// Why a VM could not be reached. The planner treats the two differently: nothing holds a
/// backend fd of an absent VM, while an unresponsive one may.
public enum VMConnectError: Error, Hashable, Sendable, CustomStringConvertible {
    /// Socket missing or connection refused: no QEMU is listening.
    case absent(String)
    /// Connected, but no proper greeting or answers in time.
    case unresponsive(String)

    public var description: String {
        switch self {
        case .absent(let why), .unresponsive(let why): return why
        }
    }
}

/// Opens QMP sessions.
public protocol VMConnector: Sendable {
    func connect(vm: String, qmp: String) async throws(VMConnectError) -> any VMConnection
}
