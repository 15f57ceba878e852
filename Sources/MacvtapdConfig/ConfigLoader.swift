import MacvtapdCore

/// The outcome of loading a configuration: a desired state when it is valid, and every problem found.
public struct ConfigLoadResult: Sendable {
    /// Nil when any diagnostic is an error: an invalid configuration never yields a partial state.
    public var desired: DesiredState?
    public var diagnostics: [Diagnostic]
    /// The files read, in the order they were merged.
    public var files: [String]

    public init(desired: DesiredState?, diagnostics: [Diagnostic], files: [String]) {
        self.desired = desired
        self.diagnostics = diagnostics
        self.files = files
    }
}

/// Reads a YAML file or a conf.d directory of them into a `DesiredState`.
public enum ConfigLoader {
    /// The default configuration location.
    public static let defaultPath = "/etc/macvtapd"

    /// Loads `path`: a file, or a directory whose `*.yaml`/`*.yml` files are merged in name order.
    public static func load(path: String) -> ConfigLoadResult {
        ConfigLoadResult(desired: nil, diagnostics: [Diagnostic("not implemented yet", at: nil)], files: [path])
    }
}
