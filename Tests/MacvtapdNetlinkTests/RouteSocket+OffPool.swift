import Foundation
import MacvtapdCore
import MacvtapdNetlink
import MacvtapdTestSupport

/// The route socket's requests as the tests make them: each on a thread of its own. A request
/// waits for RTNL, which the kernel holds while it tears down another test's namespace (a pool
/// probe saw 250 ms in rtnetlink_rcv_msg and synchronize_rcu on a loaded run); on one of the
/// cooperative pool's two threads that wait stalls every other test in the process.
extension RouteSocket {
    func links() async throws -> [Link] { try await offPool { try self.links() } }
    func link(index: Int32) async throws -> Link { try await offPool { try self.link(index: index) } }
    func link(named name: String) async throws -> Link { try await offPool { try self.link(named: name) } }
    func createMacvtap(_ configuration: MacvtapConfiguration) async throws -> Link {
        try await offPool { try self.createMacvtap(configuration) }
    }
    func deleteLink(index: Int32) async throws { try await offPool { try self.deleteLink(index: index) } }
    func setAddress(_ address: MACAddress, index: Int32) async throws {
        try await offPool { try self.setAddress(address, index: index) }
    }
    func setAlias(_ alias: String?, index: Int32) async throws {
        try await offPool { try self.setAlias(alias, index: index) }
    }
    func setUp(_ up: Bool, index: Int32) async throws { try await offPool { try self.setUp(up, index: index) } }
}

/// A tap queue's release waits for an RCU grace period (the probe saw close() in tap_release and
/// synchronize_rcu for over 200 ms under load): closes happen on a thread of their own.
extension FileDescriptor {
    func closeOffPool() async { await offPool { self.close() } }

    /// For a `defer`, which cannot await: closes without waiting.
    func closeInBackground() { Thread.detachNewThread { self.close() } }
}

/// Opening a macvtap's queue and asking it for its flags take RTNL in the kernel (tap_open,
/// tap_ioctl): the probe saw pool threads wait there too.
extension MacvtapDevice {
    func open(_ link: Link) async throws -> FileDescriptor { try await offPool { try self.open(link) } }

    static func vnetHeaderSize(of descriptor: FileDescriptor) async throws -> Int {
        try await offPool { try vnetHeaderSize(of: descriptor) }
    }

    static func queueFlags(of descriptor: FileDescriptor) async throws -> QueueFlags {
        try await offPool { try queueFlags(of: descriptor) }
    }
}
