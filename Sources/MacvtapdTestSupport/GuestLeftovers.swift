import Foundation
import Glibc
import MacvtapdConfig

/// VMs of test processes that died without terminating them (a crash, a kill -9): each VM's
/// directory is named after the process that launched it, and QEMU writes its pid there, so a
/// later launch can find the QEMUs nobody owns any more and stop them.
public enum GuestLeftovers {
    public static let directoryPrefix = "macvtapd-guest-vm-"

    /// `/tmp/macvtapd-guest-vm-<owner pid>-XXXXXX`, a mkdtemp template.
    static var directoryTemplate: String { "/tmp/\(directoryPrefix)\(getpid())-XXXXXX" }

    /// Runs once per process, before its first launch.
    static let reapedOnce: Void = reap()

    /// Stops every leftover QEMU and removes its directory; VMs of live processes stay untouched.
    public static func reap() {
        guard let tmp = opendir("/tmp") else { return }
        defer { closedir(tmp) }
        while let entry = readdir(tmp) {
            let name = direntName(entry)
            guard name.hasPrefix(directoryPrefix),
                let owner = name.dropFirst(directoryPrefix.count).split(separator: "-").first.flatMap({ pid_t($0) }),
                owner != getpid(), kill(owner, 0) != 0, errno == ESRCH
            else { continue }
            let directory = "/tmp/" + name
            if let qemu = pid_t(GuestProcess.readFile(directory + "/qemu.pid").filter { !$0.isWhitespace }),
                // The pid may have been reused since; only a QEMU whose command line names this
                // directory is ours.
                GuestProcess.readFile("/proc/\(qemu)/cmdline").contains(directory)
            {
                kill(qemu, SIGKILL)
            }
            removeDirectory(directory)
        }
    }

    /// Removes the VM directory and whatever QEMU and the fixture left in it (logs, sockets, pid).
    static func removeDirectory(_ directory: String) {
        for name in (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? [] {
            unlink(directory + "/" + name)
        }
        rmdir(directory)
    }
}
