import CMacvtapd
import Glibc

/// Runs `body` with the calling thread in the network namespace at `path` (e.g.
/// `/run/netns/NAME`) and switches back before returning. Sockets created in `body` stay in that
/// namespace for life. Synchronous on purpose: no suspension point can move the task to another
/// thread while this one is switched.
func withNetworkNamespace<Result>(_ path: String, _ body: () throws -> Result) throws -> Result {
    let original = Glibc.open("/proc/thread-self/ns/net", O_RDONLY | O_CLOEXEC)
    guard original >= 0 else {
        throw NetlinkError(operation: "open own network namespace", interface: nil, errno: errno)
    }
    defer { Glibc.close(original) }
    let target = Glibc.open(path, O_RDONLY | O_CLOEXEC)
    guard target >= 0 else {
        throw NetlinkError(operation: "open network namespace \(path)", interface: nil, errno: errno)
    }
    defer { Glibc.close(target) }
    guard cmacvtapd_setns_net(target) == 0 else {
        throw NetlinkError(operation: "enter network namespace \(path)", interface: nil, errno: errno)
    }
    defer {
        // A thread left in the wrong namespace would silently act on the wrong host.
        if cmacvtapd_setns_net(original) != 0 {
            fatalError("cannot return to the original network namespace from \(path): errno \(errno)")
        }
    }
    return try body()
}
