import Dispatch
import MacvtapdCore
import MacvtapdNetlink
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// The daemon's own copies of the tap fds it passed to QEMU, kept open so that QEMU's close of one
/// (its netdev_del, or its exit) is never the last reference. The last close runs the kernel's tap
/// release (drivers/net/tap.c tap_put_queue: rtnl_lock, then synchronize_rcu, 20–30 ms); in QEMU
/// that ran inside its main loop before it answered netdev_del, so a dead backend's detach and a
/// replace waited out an RCU grace period. Here the wait happens on a thread of its own.
///
/// A kept fd keeps its queue alive too, and a live queue of a macvtap buffers the frames the
/// macvtap receives: a tap is let go as soon as QEMU no longer holds its backend (`release`). The
/// macvtap's deletion alone does not let it go: the kernel detaches a deleted macvtap's queues
/// (tap_del_queues), so nothing is buffered, and QEMU's close of the backend still to come must
/// not be the last.
///
/// Every close, of a kept fd or of one QEMU did not take, goes to one serial queue: when it is the
/// last reference it blocks for the grace period, which must not hold a reconcile or one of
/// Swift's cooperative threads.
final class TapKeeper: Sendable {
    /// Kept fds by VM, so that the release after each reconcile looks at that VM's taps only.
    private struct Kept {
        var byVM: [String: [Ownership.BackendIDs: FileDescriptor]] = [:]
        var count = 0
    }
    private let kept = Mutex(Kept())
    private let closer = DispatchQueue(label: "macvtapd.tap-release")
    /// How many fds the keeper may hold at most.
    private let capacity: Int

    /// `capacity` nil: half of RLIMIT_NOFILE's soft limit now (`macvtapd run` raises it to the hard
    /// limit before it makes its host driver).
    init(capacity: Int? = nil) {
        self.capacity = capacity ?? Self.softLimit() / 2
    }

    /// Keeps `descriptor` for `backend`, whose QEMU now holds a copy. A tap kept for the same
    /// backend before (a restarted QEMU given the same macvtap again) is let go. Past the capacity
    /// the fd is closed instead: the other half of the fd table is for QMP sockets, netlink and the
    /// taps being opened, and an attach never fails for want of a kept fd (that backend's
    /// netdev_del is then as slow as without a keeper).
    func keep(_ descriptor: FileDescriptor, for backend: VMBackend) {
        let (previous, accepted) = kept.withLock { kept -> (FileDescriptor?, Bool) in
            let replacing = kept.byVM[backend.vm]?[backend.ids] != nil
            guard replacing || kept.count < capacity else { return (nil, false) }
            if !replacing { kept.count += 1 }
            return (kept.byVM[backend.vm, default: [:]].updateValue(descriptor, forKey: backend.ids), true)
        }
        if let previous { close(previous) }
        if !accepted { close(descriptor) }
    }

    /// Lets go of the taps kept for backends of `vm` that `isGone` says QEMU no longer holds.
    func release(vm: String, where isGone: (Ownership.BackendIDs) -> Bool) {
        let released = kept.withLock { kept -> [FileDescriptor] in
            guard var taps = kept.byVM[vm] else { return [] }
            var gone: [FileDescriptor] = []
            for (ids, descriptor) in taps where isGone(ids) {
                gone.append(descriptor)
                taps[ids] = nil
            }
            guard !gone.isEmpty else { return [] }
            kept.byVM[vm] = taps.isEmpty ? nil : taps
            kept.count -= gone.count
            return gone
        }
        for descriptor in released { close(descriptor) }
    }

    func backends(of vm: String) -> Set<Ownership.BackendIDs> {
        kept.withLock { Set(($0.byVM[vm] ?? [:]).keys) }
    }

    /// Closes `descriptor` on the release queue.
    func close(_ descriptor: FileDescriptor) {
        closer.async { descriptor.close() }
    }

    /// Waits until every close queued so far has returned (tests).
    func drain() async {
        await withCheckedContinuation { continuation in closer.async { continuation.resume() } }
    }

    private static func softLimit() -> Int {
        var limit = rlimit()
        guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else { return 1024 }
        // RLIM_INFINITY is all ones.
        return Int(clamping: min(limit.rlim_cur, UInt(Int32.max)))
    }
}
