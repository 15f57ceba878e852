import Foundation
import Glibc
import MacvtapdCore
import Synchronization

/// A real Linux guest (Debian cloud kernel + busybox, see scripts/build-guest-initramfs.sh) under
/// QEMU, its NICs on hubs like macvtapd's managed NICs, reporting what it sees on its serial
/// console (`GuestEvent`). The console goes to a file the fixture reads as it waits, so nothing
/// is lost before the first wait and QEMU never blocks on a full pipe.
///
/// Always `terminate()` (e.g. in a `defer`); deinit does it too, but only when the last
/// reference goes away. The QEMU of a test process killed outright runs on until the next
/// process that launches a guest stops it (`GuestLeftovers`).
public final class GuestVM: GuestConsoleReading {
    public let configuration: GuestConfiguration
    public let pid: pid_t
    /// The VM's own QMP monitor (`-qmp unix:...,server=on,wait=off`).
    public let qmpSocketPath: String
    /// A second QMP monitor for the test's own checks while macvtapd holds the first.
    public let testQMPSocketPath: String
    public let directory: String
    /// When QEMU was spawned; boot times are measured from here.
    public let launchedAt: ContinuousClock.Instant

    private struct State {
        var running = true
        var exitStatus: Int32?
        var consoleFD: Int32
        var transcript = GuestTranscript()
    }
    private let state: Mutex<State>

    private var qemuOutputPath: String { directory + "/qemu.log" }
    /// The serial console QEMU writes (`ConsoleHeartbeat` reads it on its own).
    public var consolePath: String { directory + "/console.log" }

    /// Spawns QEMU and returns at once; `waitUntilReady` waits for the guest.
    public static func launch(
        _ configuration: GuestConfiguration, image explicitImage: GuestImage? = nil
    ) async throws(GuestVMError) -> GuestVM {
        // Not `??`: its autoclosure rethrows untyped errors.
        let image: GuestImage
        if let explicitImage { image = explicitImage } else { image = try await GuestImage.cached() }
        // The first launch scans /tmp and /proc: not on a cooperative thread.
        await offPool { GuestLeftovers.reapedOnce }
        // A guest that boots waits for any other boot in the process to end (GuestBootGate); one that
        // waits for an incoming migration does not boot.
        let boots = !configuration.extraQEMUArguments.contains("-incoming")
        if boots { await GuestBootGate.shared.acquire() }
        var template = Array(GuestLeftovers.directoryTemplate.utf8CString)
        guard let directory = template.withUnsafeMutableBufferPointer({ mkdtemp($0.baseAddress!) }) else {
            if boots { await GuestBootGate.shared.release() }
            throw .system(operation: "mkdtemp \(GuestLeftovers.directoryTemplate)", errno: errno)
        }
        // The spawn waits for QEMU's exec: on a thread of its own.
        let path = String(cString: directory)
        let made = await offPool {
            Result { () throws(GuestVMError) -> GuestVM in
                try GuestVM(configuration: configuration, image: image, directory: path)
            }
        }
        let vm: GuestVM
        switch made {
        case .success(let launched): vm = launched
        case .failure(let error):
            if boots { await GuestBootGate.shared.release() }
            throw error
        }
        if boots {
            // The boot ends at GUEST READY, or when the guest fails or takes too long.
            Task {
                _ = try? await vm.waitUntilReady(timeout: .seconds(20))
                await GuestBootGate.shared.release()
            }
        }
        return vm
    }

    /// Launches and waits for `GUEST READY`; terminates the VM if it does not get there.
    public static func boot(
        _ configuration: GuestConfiguration, readyTimeout: Duration = .seconds(60)
    ) async throws(GuestVMError) -> GuestVM {
        let vm = try await launch(configuration)
        do {
            try await vm.waitUntilReady(timeout: readyTimeout)
        } catch {
            vm.terminate()
            throw error
        }
        return vm
    }

    private init(configuration: GuestConfiguration, image: GuestImage, directory: String) throws(GuestVMError) {
        self.configuration = configuration
        self.directory = directory
        qmpSocketPath = directory + "/qmp.sock"
        testQMPSocketPath = directory + "/test-qmp.sock"
        let consolePath = directory + "/console.log"
        // Created before QEMU so the fixture can open it now; QEMU truncates it, which is harmless.
        let consoleFD = open(consolePath, O_RDONLY | O_CREAT | O_CLOEXEC, 0o600)
        guard consoleFD >= 0 else {
            rmdir(directory)
            throw .system(operation: "open \(consolePath)", errno: errno)
        }
        var arguments = [
            "qemu-system-x86_64", "-M", "q35", "-accel", configuration.accelerator, "-nodefaults",
            "-display", "none", "-m", String(configuration.memoryMiB), "-no-reboot",
            "-kernel", image.kernel, "-initrd", image.initramfs, "-append", configuration.kernelCommandLine,
            "-chardev", "file,id=console,path=\(consolePath)", "-serial", "chardev:console",
            "-qmp", "unix:\(qmpSocketPath),server=on,wait=off", "-qmp", "unix:\(testQMPSocketPath),server=on,wait=off",
            "-pidfile", directory + "/qemu.pid",
        ]
        arguments += configuration.nics.flatMap(\.qemuArguments) + configuration.extraQEMUArguments
        let pid: pid_t
        do {
            pid = try GuestProcess.spawn(arguments, outputPath: directory + "/qemu.log")
        } catch {
            close(consoleFD)
            GuestLeftovers.removeDirectory(directory)
            throw error
        }
        self.pid = pid
        launchedAt = .now
        state = Mutex(State(consoleFD: consoleFD))
    }

    deinit {
        terminate()
    }

    /// Kills QEMU (the guest is disposable) and returns; the reap and the removal of the VM's
    /// directory follow on a thread of their own: the kernel's teardown of a guest's memory and
    /// taps takes tens of ms, which on one of the cooperative pool's threads (this is called from
    /// `defer`s and deinit) stalls every other test. Idempotent.
    public func terminate() {
        let (pid, directory) = (pid, directory)
        let (killed, consoleFD) = state.withLock { state in
            defer {
                state.running = false
                state.consoleFD = -1
            }
            if state.running { kill(pid, SIGKILL) }
            return (state.running, state.consoleFD)
        }
        guard killed || consoleFD >= 0 else { return }
        Thread.detachNewThread {
            if killed { _ = GuestProcess.reap(pid, blocking: true) }
            if consoleFD >= 0 {
                close(consoleFD)
                GuestLeftovers.removeDirectory(directory)
            }
        }
    }

    // MARK: What the guest said (the waits are GuestConsoleReading's)

    /// How long the guest took from QEMU's spawn to `GUEST READY`, once it has said it.
    public var bootTime: Duration? { transcript().readyAt.map { $0 - launchedAt } }

    /// Waits for `GUEST READY` and returns the boot time.
    @discardableResult
    public func waitUntilReady(timeout: Duration = .seconds(60)) async throws(GuestVMError) -> Duration {
        _ = try await waitForLine("GUEST READY", timeout: timeout)
        return bootTime ?? (ContinuousClock.now - launchedAt)
    }

    public func transcript() -> GuestTranscript {
        state.withLock { state in
            refresh(&state)
            return state.transcript
        }
    }

    // The guest prints at most a few lines per poll period, so polling the console file every few
    // milliseconds costs nothing and keeps the fixture free of threads.
    public func poll<T>(
        for description: String, timeout: Duration, _ check: (GuestTranscript) -> T?
    ) async throws(GuestVMError) -> T {
        let deadline = ContinuousClock.now + timeout
        while true {
            let outcome: Result<T, GuestVMError>? = state.withLock { state in
                refresh(&state)
                if let found = check(state.transcript) { return .success(found) }
                if !state.running {
                    return .failure(
                        .exited(
                            status: state.exitStatus ?? -1, qemuOutput: qemuOutput,
                            consoleTail: Array(state.transcript.lines.suffix(20))))
                }
                return nil
            }
            if let outcome { return try outcome.get() }
            if ContinuousClock.now >= deadline {
                throw .timeout(waitingFor: description, after: timeout, consoleTail: Array(lines.suffix(20)))
            }
            do {
                try await Task.sleep(for: .milliseconds(5))
            } catch {
                throw .cancelled
            }
        }
    }

    /// Notices QEMU's exit, then reads what the console file gained since the last call.
    private func refresh(_ state: inout State) {
        guard state.consoleFD >= 0 else { return }
        // Exit first, console second: once QEMU is known to be gone, its last lines are read too.
        if state.running, let status = GuestProcess.reap(pid, blocking: false) {
            state.running = false
            state.exitStatus = status
        }
        state.transcript.read(from: state.consoleFD)
    }

    private var qemuOutput: String { GuestProcess.readFile(qemuOutputPath) }
}
