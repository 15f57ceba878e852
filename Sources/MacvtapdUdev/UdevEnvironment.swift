import Glibc

/// Whether udev describes this process's network interfaces, so that macvtapd waits for it.
///
/// udevd processes the devices of its own network namespace only, and its database
/// (`/run/udev/data/n<ifindex>`) is keyed by ifindex, which every namespace numbers on its own. In
/// another namespace (`ip netns exec`, most containers) the database says nothing true about our
/// links, and a link would wait for an initialisation that never comes.
public struct UdevEnvironment: Hashable, Sendable {
    public enum Mode: String, Hashable, Sendable, CaseIterable {
        /// On when udevd runs (its control socket exists) and this process is in the network
        /// namespace of PID 1, where udevd runs.
        case auto
        /// Always consult udev and wait for it (a udevd serves this namespace).
        case on
        /// Never consult udev: every link counts as initialised at once, `path`/`property` match nothing.
        case off
    }

    /// libudev's compiled-in run directory; it reads its database there whatever this says.
    public static let defaultRunDirectory = "/run/udev"

    public var mode: Mode
    /// Where udevd's control socket (`control`) is looked for by `auto`.
    public var runDirectory: String

    public init(mode: Mode = .auto, runDirectory: String = UdevEnvironment.defaultRunDirectory) {
        self.mode = mode
        self.runDirectory = runDirectory
    }

    /// The decision and why, for the log.
    public func resolve() -> (active: Bool, why: String) {
        switch mode {
        case .on: return (true, "udev: on (--udev on)")
        case .off: return (false, "udev: off (--udev off); links count as initialised at once")
        case .auto:
            guard access(runDirectory + "/control", F_OK) == 0 else {
                return (
                    false, "udev: off, no udevd runs (\(runDirectory)/control is missing); links count as initialised"
                )
            }
            switch Self.sharesInitialNetworkNamespace() {
            case .success(true): break
            case .success(false):
                return (
                    false,
                    "udev: off, this process is not in udevd's network namespace (PID 1's); links count as initialised"
                )
            case .failure(let problem):
                return (
                    false,
                    "udev: off, cannot tell whether this process is in udevd's network namespace (PID 1's): "
                        + "\(problem); links count as initialised (--udev on forces udev)"
                )
            }
            return (true, "udev: on; new links wait until udevd has initialised them")
        }
    }

    /// Whether our network namespace is PID 1's. Root reads PID 1's namespace on a host; where it
    /// cannot (a restricted container), udevd is unlikely to serve us either.
    static func sharesInitialNetworkNamespace() -> Result<Bool, NamespaceProbeError> {
        var own = stat()
        var initial = stat()
        guard stat("/proc/thread-self/ns/net", &own) == 0 else {
            return .failure(NamespaceProbeError(path: "/proc/thread-self/ns/net", errno: errno))
        }
        guard stat("/proc/1/ns/net", &initial) == 0 else {
            return .failure(NamespaceProbeError(path: "/proc/1/ns/net", errno: errno))
        }
        return .success(own.st_ino == initial.st_ino && own.st_dev == initial.st_dev)
    }

    struct NamespaceProbeError: Error, CustomStringConvertible {
        var path: String
        var errno: Int32
        var description: String { "\(path): \(String(cString: strerror(errno)))" }
    }
}
