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
}
