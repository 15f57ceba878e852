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

/// Bounds that keep hostile or broken input from costing the daemon memory or time.
public struct ConfigLimits: Hashable, Sendable {
    /// Larger files are refused before they are parsed.
    public var maxFileBytes: Int
    /// YAML nodes one file may expand to, every alias counting as the full size of what it names.
    public var maxNodesPerFile: Int
    /// Configuration files one directory may hold.
    public var maxFiles: Int

    public init(maxFileBytes: Int = 1 << 20, maxNodesPerFile: Int = 100_000, maxFiles: Int = 1000) {
        self.maxFileBytes = maxFileBytes
        self.maxNodesPerFile = maxNodesPerFile
        self.maxFiles = maxFiles
    }

    public static let `default` = ConfigLimits()
}

/// Reads a YAML file or a conf.d directory of them into a `DesiredState`.
///
/// A directory's `*.yaml` and `*.yml` files (hidden files aside) are read in byte-wise name order.
/// Every file declares `version: 1`; its `defaults` apply to the VMs of that file only; a VM is
/// declared whole in one file, and declaring it again in another is an error naming both.
public enum ConfigLoader {
    /// The default configuration location.
    public static let defaultPath = "/etc/macvtapd"

    /// Loads `path`: a file, or a directory whose `*.yaml`/`*.yml` files are merged in name order.
    public static func load(path: String) -> ConfigLoadResult {
        load(path: path, limits: .default)
    }

    public static func load(path: String, limits: ConfigLimits) -> ConfigLoadResult {
        let sources: [ConfigSource]
        switch ConfigFiles.read(path: path, limits: limits) {
        case .success(let read): sources = read
        case .failure(let diagnostic): return ConfigLoadResult(desired: nil, diagnostics: [diagnostic], files: [])
        }
        return load(sources, limits: limits)
    }

    /// The files under `path` as `load(path:)` reads them (a file, or a directory's YAML files in
    /// name order), unvalidated; pass them to `load(_:)`.
    public static func sources(path: String, limits: ConfigLimits = .default) -> Result<[ConfigSource], Diagnostic> {
        ConfigFiles.read(path: path, limits: limits)
    }

    /// Validates in-memory file contents as if they were the files of a directory, in the given order.
    public static func load(_ sources: [ConfigSource], limits: ConfigLimits = .default) -> ConfigLoadResult {
        var diagnostics: [Diagnostic] = []
        var declarations: [VMDeclaration] = []
        for source in sources {
            if let problem = source.problem {
                diagnostics.append(problem)
                continue
            }
            guard source.bytes.count <= limits.maxFileBytes else {
                diagnostics.append(ConfigFiles.tooLarge(source.path, bytes: source.bytes.count, limits: limits))
                continue
            }
            switch YAMLComposer(maxNodes: limits.maxNodesPerFile).compose(source.bytes) {
            case .failure(let failure):
                let location = SourceLocation(file: source.path, line: failure.line, column: failure.column)
                diagnostics.append(Diagnostic(failure.message, at: location))
            case .success(let root):
                var decoder = ConfigDecoder(file: source.path)
                declarations += decoder.decode(root)
                // Walk order checks a mapping's keys before its values; people read a file top to bottom.
                diagnostics += decoder.diagnostics.sorted {
                    ($0.location?.line ?? 0, $0.location?.column ?? 0) < (
                        $1.location?.line ?? 0, $1.location?.column ?? 0
                    )
                }
            }
        }
        var merged = Merge()
        for declaration in declarations {
            merged.add(declaration)
        }
        diagnostics += merged.diagnostics
        var passthru = PassthruRule()
        // In file order, so the first NIC named is the one written first.
        for declaration in declarations {
            for binding in declaration.spec.nics.values.sorted(by: { inSourceOrder($0.source, $1.source) }) {
                passthru.add(binding)
            }
        }
        diagnostics += passthru.diagnostics
        let files = sources.map(\.path)
        guard diagnostics.isEmpty else { return ConfigLoadResult(desired: nil, diagnostics: diagnostics, files: files) }
        return ConfigLoadResult(desired: DesiredState(vms: merged.vms), diagnostics: [], files: files)
    }
}

/// Line, then column; the files are already visited in order.
private func inSourceOrder(_ a: SourceLocation?, _ b: SourceLocation?) -> Bool {
    (a?.line ?? 0, a?.column ?? 0) < (b?.line ?? 0, b?.column ?? 0)
}

/// One configuration file's name and contents, or why it could not be read.
public struct ConfigSource: Sendable {
    public var path: String
    public var bytes: [UInt8]
    /// Set when the file could not be read; `bytes` is then empty.
    public var problem: Diagnostic?

    public init(path: String, bytes: [UInt8]) {
        self.path = path
        self.bytes = bytes
        self.problem = nil
    }

    public init(path: String, text: String) {
        self.init(path: path, bytes: Array(text.utf8))
    }

    init(path: String, problem: Diagnostic) {
        self.path = path
        self.bytes = []
        self.problem = problem
    }
}

/// The checks that span files: a VM declared twice, a MAC or a QMP socket claimed twice.
private struct Merge {
    var vms: [String: VMSpec] = [:]
    var diagnostics: [Diagnostic] = []
    private var vmLocations: [String: SourceLocation] = [:]
    private var qmpOwners: [String: (vm: String, location: SourceLocation)] = [:]
    private var macOwners: [MACAddress: (key: BindingKey, location: SourceLocation)] = [:]

    mutating func add(_ declaration: VMDeclaration) {
        let name = declaration.spec.name
        if let first = vmLocations[name] {
            diagnostics.append(
                Diagnostic("VM '\(name)' is declared twice; it is first declared at \(first)", at: declaration.location)
            )
            return
        }
        vmLocations[name] = declaration.location
        vms[name] = declaration.spec
        if let qmpLocation = declaration.qmpLocation, !declaration.spec.qmp.isEmpty {
            if let first = qmpOwners[declaration.spec.qmp] {
                diagnostics.append(
                    Diagnostic(
                        "VM '\(name)' uses QMP socket '\(declaration.spec.qmp)', which VM '\(first.vm)' uses at "
                            + "\(first.location); a QMP socket serves one client, give each VM its own",
                        at: qmpLocation))
            } else {
                qmpOwners[declaration.spec.qmp] = (name, qmpLocation)
            }
        }
        for claim in declaration.macClaims {
            if let first = macOwners[claim.mac] {
                diagnostics.append(
                    Diagnostic(
                        "MAC \(claim.mac) of NIC \(claim.key) is also the MAC of NIC \(first.key) at \(first.location); "
                            + "each NIC needs its own MAC",
                        at: claim.location))
            } else {
                macOwners[claim.mac] = (claim.key, claim.location)
            }
        }
    }
}
