import ArgumentParser
import MacvtapdConfig
import MacvtapdCore

#if canImport(Glibc)
    import Glibc
#endif

/// The `-c/--config` option every command that reads the desired state shares.
struct ConfigOptions: ParsableArguments {
    @Option(
        name: [.short, .long],
        help: ArgumentHelp(
            "A YAML file, or a directory whose *.yaml and *.yml files are merged in name order "
                + "(default: \(ConfigLoader.defaultPath)).",
            valueName: "path"))
    var config: String?

    /// The path read: the one given, or the default.
    var path: String { config ?? ConfigLoader.defaultPath }

    /// Loads the configuration and prints every diagnostic to standard error. When the default path
    /// is missing, says that it is the default and that `-c` exists: a first run without `-c` on a
    /// host with nothing installed should point at the fix, not only at the missing directory.
    func load() -> ConfigLoadResult {
        report(ConfigLoader.load(path: path))
    }

    private func report(_ result: ConfigLoadResult) -> ConfigLoadResult {
        for diagnostic in result.diagnostics { printError(diagnostic.description) }
        if config == nil, result.desired == nil, access(path, F_OK) != 0 {
            printError(
                "note: \(path) is the default configuration path; pass -c/--config PATH to read another file or directory"
            )
        }
        return result
    }

    /// What `loadDesired` prints for an invalid configuration, from diagnostics made elsewhere (the
    /// daemon's, as it reloaded the file).
    func reportInvalid(errors: [String], outcome: String) {
        for error in errors { printError(error) }
        if config == nil, access(path, F_OK) != 0 {
            printError(
                "note: \(path) is the default configuration path; pass -c/--config PATH to read another file or directory"
            )
        }
        printError("\(path): invalid configuration; \(outcome)")
    }

    /// `loadDesired`, with the files as read and validated: what a plan through the daemon sends, so
    /// the daemon plans exactly what was validated here.
    func loadDesiredAndFiles(outcome: String) throws -> (DesiredState, [ConfigSource]) {
        var files: [ConfigSource] = []
        let result: ConfigLoadResult
        switch ConfigLoader.sources(path: path) {
        case .success(let sources):
            files = sources
            result = ConfigLoader.load(sources)
        case .failure(let diagnostic):
            result = ConfigLoadResult(desired: nil, diagnostics: [diagnostic], files: [])
        }
        guard let desired = report(result).desired else {
            printError("\(path): invalid configuration; \(outcome)")
            throw ExitCode(1)
        }
        return (desired, files)
    }

    /// The desired state, or exit 1 after the diagnostics and `outcome`, which says what that means
    /// for this command ("nothing was changed" is only true of commands that change things).
    func loadDesired(outcome: String) throws -> DesiredState {
        guard let desired = load().desired else {
            printError("\(path): invalid configuration; \(outcome)")
            throw ExitCode(1)
        }
        return desired
    }

    /// What a command does with a configuration that others can change.
    enum PermissionPolicy {
        /// validate and plan: they run in CI on checkouts a umask made group-writable.
        case warn
        /// apply and run: exit 1 after naming every insecure path.
        case refuse
        /// apply and run given --allow-insecure-config.
        case allowed
    }

    /// Names every path that lets someone other than root or this user change the desired state
    /// (see `ConfigPermissions`) and does what `policy` says.
    func checkPermissions(_ policy: PermissionPolicy) throws {
        let insecure = ConfigPermissions.insecurePaths(configuration: path)
        guard !insecure.isEmpty else { return }
        let severity = policy == .refuse ? "error" : "warning"
        for finding in insecure { printError("\(finding.path): \(severity): \(finding.problem) \(finding.details)") }
        switch policy {
        case .refuse:
            printError(
                "\(path): refusing a configuration that others can change: whoever writes it decides which VM "
                    + "reaches which network (chmod go-w and chown root what is listed, or pass --allow-insecure-config)"
            )
            throw ExitCode(1)
        case .warn:
            printError(
                "\(path): note: macvtapd run and apply refuse such a configuration unless given --allow-insecure-config"
            )
        case .allowed:
            printError("\(path): note: used anyway (--allow-insecure-config)")
        }
    }
}

/// `--allow-insecure-config`: only the commands that change the host (apply and run) take it.
struct InsecureConfigOptions: ParsableArguments {
    @Flag(
        help: """
            Use a configuration that a group or other users can write, or that another user owns (refused \
            otherwise: whoever can write it decides which VM reaches which network).
            """)
    var allowInsecureConfig = false

    /// Refuses an insecure configuration unless allowed; allowed, only warns.
    func check(_ config: ConfigOptions) throws {
        try config.checkPermissions(allowInsecureConfig ? .allowed : .refuse)
    }
}
