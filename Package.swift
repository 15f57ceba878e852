// swift-tools-version:6.2
import PackageDescription

// Our own targets treat every warning as an error; dependencies keep their own settings.
let strict: [SwiftSetting] = [.treatAllWarnings(as: .error)]

let package = Package(
    name: "macvtapd",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "macvtapd", targets: ["macvtapd"]),
        .executable(name: "macvtapd-bench", targets: ["macvtapd-bench"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // 1.15: StreamLogHandler takes our own stream (QueuedOutput).
        .package(url: "https://github.com/apple/swift-log", from: "1.15.0"),
    ],
    targets: [
        // Kernel headers, variadic ioctls and cmsg macros that Swift cannot call directly.
        .target(name: "CMacvtapd", cSettings: [.treatAllWarnings(as: .error)]),

        // libudev (Debian libudev-dev): device lookups, the udev database and the udev monitor.
        .systemLibrary(name: "CUdev", pkgConfig: "libudev", providers: [.apt(["libudev-dev"])]),

        // libyaml (Debian libyaml-dev; the package's binary depends on libyaml-0-2): the event parser
        // under our own composer (YAMLComposer). The library Yams wraps, taken from the distribution,
        // which keeps it patched, rather than through Yams: Yams' Swift layer imports Foundation, and
        // with it Foundation's ICU data, which were 52 of the binary's 86 MB and about 3.5 MiB of
        // every process's RSS, for a parser whose Swift API we never call.
        .systemLibrary(name: "CYaml", pkgConfig: "yaml-0.1", providers: [.apt(["libyaml-dev"])]),

        // Model, planner and plan rendering: no I/O, no sockets.
        .target(name: "MacvtapdCore", swiftSettings: strict),

        // Threads of their own for the loops that block on a socket (QMP readers, monitors, servers).
        .target(name: "MacvtapdThreads", swiftSettings: strict),

        // YAML file or conf.d directory -> DesiredState, with located diagnostics.
        .target(
            name: "MacvtapdConfig",
            dependencies: ["MacvtapdCore", "CYaml"],
            swiftSettings: strict
        ),

        // rtnetlink client, macvtap lifecycle and the tap character device.
        .target(
            name: "MacvtapdNetlink", dependencies: ["CMacvtapd", "MacvtapdCore", "MacvtapdThreads"],
            swiftSettings: strict),

        // udev client: a net device's properties and initialisation, and udev's "net" events.
        .target(name: "MacvtapdUdev", dependencies: ["CUdev", "MacvtapdThreads"], swiftSettings: strict),

        // QMP client: commands, events, fd passing, `info network` parsing.
        .target(
            name: "MacvtapdQMP", dependencies: ["CMacvtapd", "MacvtapdCore", "MacvtapdThreads"], swiftSettings: strict),

        // The daemon's control socket (varlink over a unix socket): the wire types, a poll-based server
        // on a thread of its own, the CLI's client, and the one-daemon-per-run-directory lock.
        .target(
            name: "MacvtapdControl", dependencies: ["CMacvtapd", "MacvtapdCore", "MacvtapdThreads"],
            swiftSettings: strict),

        // Observers, executor and controller: the only place that joins the clients to the core.
        .target(
            name: "MacvtapdReconciler",
            dependencies: [
                "MacvtapdCore", "MacvtapdConfig", "MacvtapdNetlink", "MacvtapdQMP", "MacvtapdUdev", "MacvtapdThreads",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        // The daemon's plumbing around the controller: config reloads (inotify, SIGHUP), signals,
        // systemd notification and watchdog.
        .target(
            name: "MacvtapdDaemon",
            dependencies: [
                "CMacvtapd", "MacvtapdCore", "MacvtapdConfig", "MacvtapdReconciler", "MacvtapdControl",
                "MacvtapdThreads", .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),

        .executableTarget(
            name: "macvtapd",
            dependencies: [
                "CMacvtapd", "MacvtapdCore", "MacvtapdConfig", "MacvtapdReconciler", "MacvtapdDaemon", "MacvtapdUdev",
                "MacvtapdControl",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict,
            plugins: ["BuildInfoPlugin"]
        ),

        // `macvtapd --version`: VERSION plus the git commit, generated before every build.
        .plugin(name: "BuildInfoPlugin", capability: .buildTool()),

        // `make bench`: measured numbers against a baseline run in the same invocation (not tests).
        .executableTarget(
            name: "macvtapd-bench",
            dependencies: [
                "MacvtapdCore", "MacvtapdNetlink", "MacvtapdQMP", "MacvtapdReconciler", "MacvtapdTestSupport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict
        ),

        // Real-kernel, real-QEMU fixtures shared by the test targets: namespaces, veths, QEMU, probe.
        .target(
            name: "MacvtapdTestSupport",
            dependencies: [
                "CMacvtapd", "MacvtapdCore", "MacvtapdConfig", "MacvtapdQMP", "MacvtapdReconciler", "MacvtapdControl",
            ],
            swiftSettings: strict
        ),

        .testTarget(name: "MacvtapdCoreTests", dependencies: ["MacvtapdCore"], swiftSettings: strict),
        .testTarget(
            name: "MacvtapdConfigTests",
            dependencies: ["MacvtapdConfig", "MacvtapdCore", "MacvtapdTestSupport"],
            resources: [.copy("Fixtures")],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MacvtapdNetlinkTests",
            dependencies: ["MacvtapdConfig", "MacvtapdNetlink", "MacvtapdTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MacvtapdUdevTests",
            dependencies: ["MacvtapdUdev", "MacvtapdTestSupport"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MacvtapdQMPTests",
            dependencies: ["MacvtapdQMP", "MacvtapdTestSupport", "CMacvtapd"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "MacvtapdDaemonTests",
            dependencies: [
                "MacvtapdDaemon", "MacvtapdCore", "MacvtapdConfig", "MacvtapdReconciler", "MacvtapdTestSupport",
            ],
            swiftSettings: strict
        ),
        // The built `macvtapd` as operators run it: usage errors, help, status, man pages, the unit.
        .testTarget(name: "MacvtapdCLITests", dependencies: ["MacvtapdTestSupport"], swiftSettings: strict),
        .testTarget(name: "MacvtapdGuestTests", dependencies: ["MacvtapdTestSupport"], swiftSettings: strict),
        .testTarget(
            name: "MacvtapdReconcilerTests",
            dependencies: [
                "MacvtapdReconciler", "MacvtapdCore", "MacvtapdConfig", "MacvtapdNetlink", "MacvtapdQMP",
                "MacvtapdTestSupport",
            ],
            swiftSettings: strict
        ),
    ]
)

// `make fuzz` (fuzz/README.md): libFuzzer targets, declared only when MACVTAPD_FUZZ is set, so the
// normal build and `swift test` never try to link an executable whose main is libFuzzer's. Built
// with `--sanitize=fuzzer --sanitize=address` in a scratch path of their own (.build-fuzz).
if Context.environment["MACVTAPD_FUZZ"] != nil {
    let fuzzTargets: [(name: String, dependencies: [Target.Dependency])] = [
        ("config", ["MacvtapdConfig", "MacvtapdCore"]),
        ("qmp", ["MacvtapdQMP"]),
        ("network-info", ["MacvtapdQMP"]),
        ("netlink", ["MacvtapdNetlink"]),
        ("control", ["MacvtapdControl", "MacvtapdConfig"]),
    ]
    for target in fuzzTargets {
        package.targets.append(
            .executableTarget(
                name: "fuzz-\(target.name)", dependencies: target.dependencies, path: "fuzz/Sources/\(target.name)",
                // The entry point is libFuzzer's main; ours is LLVMFuzzerTestOneInput.
                swiftSettings: strict + [.unsafeFlags(["-parse-as-library"])]))
    }
}
