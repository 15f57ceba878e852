import Glibc

/// The test guest's kernel and initramfs, built by scripts/build-guest-initramfs.sh into a cache
/// directory shared by every test process of a checkout (the script rebuilds only when its inputs
/// change and serialises concurrent builds with a lock).
public struct GuestImage: Sendable {
    public let kernel: String
    public let initramfs: String

    /// `$MACVTAPD_GUEST_CACHE`, or `.build/guest` of the checkout: one cache per checkout, so
    /// worktrees with different guest scripts do not rebuild each other's image under running tests.
    public static var defaultCacheDirectory: String {
        getenv("MACVTAPD_GUEST_CACHE").map { String(cString: $0) } ?? repositoryRoot + "/.build/guest"
    }

    /// The repository this file was compiled from: the build script lives there, not in the bundle.
    static let repositoryRoot: String = {
        var components = "\(#filePath)".split(separator: "/", omittingEmptySubsequences: false)
        components.removeLast(3)  // Sources/MacvtapdTestSupport/GuestImage.swift
        return components.joined(separator: "/")
    }()

    /// The image in the default cache, built once per process (every later call reuses the result).
    /// The build script runs for seconds on a fresh machine: it, and every caller waiting for it,
    /// waits off the cooperative pool.
    public static func cached() async throws(GuestVMError) -> GuestImage {
        try await offPool { shared }.get()
    }

    private static let shared: Result<GuestImage, GuestVMError> = Result {
        () throws(GuestVMError) -> GuestImage in try build(into: defaultCacheDirectory)
    }

    /// Runs the build script (a no-op when the cached image is current) and returns the image.
    public static func build(into directory: String) throws(GuestVMError) -> GuestImage {
        let script = repositoryRoot + "/scripts/build-guest-initramfs.sh"
        let (status, output) = try GuestProcess.run(["/bin/bash", script, directory])
        guard status == 0 else {
            throw .buildFailed(script: script, status: status, output: output)
        }
        return GuestImage(kernel: directory + "/vmlinuz", initramfs: directory + "/initramfs.cpio.gz")
    }
}
