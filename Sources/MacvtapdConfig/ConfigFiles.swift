import MacvtapdCore

#if canImport(Glibc)
    import Glibc
#endif

/// Finds and reads the configuration files under a path, refusing what is too large before parsing.
enum ConfigFiles {
    static func read(path: String, limits: ConfigLimits) -> Result<[ConfigSource], Diagnostic> {
        var info = stat()
        guard stat(path, &info) == 0 else {
            return .failure(Diagnostic("cannot read the configuration: \(errorText())", path: path))
        }
        switch info.st_mode & S_IFMT {
        case S_IFREG:
            return .success([readFile(path, limits: limits)])
        case S_IFDIR:
            return directory(path, limits: limits)
        default:
            return .failure(
                Diagnostic(
                    "the configuration is \(kind(info.st_mode)); it must be a regular file or a directory", path: path))
        }
    }

    /// The `*.yaml` and `*.yml` regular files of `directory`, hidden ones aside, in byte-wise name order.
    private static func directory(_ directory: String, limits: ConfigLimits) -> Result<[ConfigSource], Diagnostic> {
        guard let (names, skipped) = listing(directory) else {
            return .failure(Diagnostic("cannot list the configuration directory: \(errorText())", path: directory))
        }
        guard !names.isEmpty else {
            return .failure(
                Diagnostic(
                    "the configuration directory holds no *.yaml or *.yml file\(skippedNote(skipped)) "
                        + "(write one with 'version: 1' and 'vms: {}' to declare no VMs)", path: directory))
        }
        guard names.count <= limits.maxFiles else {
            return .failure(
                Diagnostic(
                    "the configuration directory holds \(names.count) files; the limit is \(limits.maxFiles)",
                    path: directory))
        }
        return .success(names.map { readFile(join(directory, $0), limits: limits) })
    }

    /// The paths of the files `read` merges from `directory`, in merge order; empty when it cannot be listed.
    static func configurationFiles(in directory: String) -> [String] {
        (listing(directory)?.names ?? []).map { join(directory, $0) }
    }

    /// The configuration files' names in byte-wise order, and the names skipped; nil when the
    /// directory cannot be listed (errno says why).
    private static func listing(_ directory: String) -> (names: [String], skipped: [String])? {
        guard let stream = opendir(directory) else { return nil }
        defer { closedir(stream) }
        var names: [String] = []
        var skipped: [String] = []
        while let entry = readdir(stream) {
            let name = direntName(entry)
            // Editors' backup and swap files are hidden or have another suffix; they are not configuration.
            guard !name.hasPrefix("."), name.hasSuffix(".yaml") || name.hasSuffix(".yml") else {
                if name != "." && name != ".." { skipped.append(name) }
                continue
            }
            // A broken symlink or a directory named *.yaml is read (and reported) rather than skipped:
            // silently dropping a file would silently drop its VMs' bindings.
            names.append(name)
        }
        names.sort { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        return (names, skipped)
    }

    /// Reads at most one byte more than the limit, so a file that grows or lies about its size is still bounded.
    private static func readFile(_ path: String, limits: ConfigLimits) -> ConfigSource {
        // O_NONBLOCK: opening a FIFO must not hang the daemon; fstat below refuses anything irregular.
        let fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)
        guard fd >= 0 else { return ConfigSource(path: path, problem: cannotRead(path)) }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0 else { return ConfigSource(path: path, problem: cannotRead(path)) }
        guard info.st_mode & S_IFMT == S_IFREG else {
            return ConfigSource(
                path: path,
                problem: Diagnostic(
                    "\(kind(info.st_mode)) cannot be a configuration file; it must be a regular file", path: path))
        }
        if Int(info.st_size) > limits.maxFileBytes {
            return ConfigSource(path: path, problem: tooLarge(path, bytes: Int(info.st_size), limits: limits))
        }
        // Sized from fstat, but a file that grows (or reports size 0, like procfs) is still read to the limit.
        var bytes = [UInt8](repeating: 0, count: min(Int(info.st_size), limits.maxFileBytes) + 1)
        var count = 0
        while count < bytes.count {
            let got = bytes.withUnsafeMutableBytes { buffer in
                Glibc.read(fd, buffer.baseAddress! + count, buffer.count - count)
            }
            if got < 0, errno == EINTR { continue }
            guard got >= 0 else { return ConfigSource(path: path, problem: cannotRead(path)) }
            if got == 0 { break }
            count += got
            if count == bytes.count, bytes.count <= limits.maxFileBytes {
                bytes += [UInt8](repeating: 0, count: min(bytes.count, limits.maxFileBytes + 1 - bytes.count))
            }
        }
        if count > limits.maxFileBytes {
            return ConfigSource(path: path, problem: tooLarge(path, bytes: count, limits: limits))
        }
        return ConfigSource(path: path, bytes: Array(bytes[..<count]))
    }

    static func tooLarge(_ path: String, bytes: Int, limits: ConfigLimits) -> Diagnostic {
        Diagnostic(
            "the file is \(bytes) bytes; a configuration file may have at most \(limits.maxFileBytes) bytes",
            at: SourceLocation(file: path, line: 1, column: 1))
    }

    private static func cannotRead(_ path: String) -> Diagnostic {
        Diagnostic("cannot read the file: \(errorText())", path: path)
    }

    /// What the user may have meant to be read: `web.YAML` (suffixes are case-sensitive), `web.yaml.bak`.
    private static func skippedNote(_ skipped: [String]) -> String {
        guard !skipped.isEmpty else { return "" }
        let sorted = skipped.sorted { Array($0.utf8).lexicographicallyPrecedes(Array($1.utf8)) }
        let shown = sorted.prefix(5).map { "'\($0)'" }.joined(separator: ", ")
        let more = sorted.count > 5 ? " and \(sorted.count - 5) more" : ""
        return
            "; skipped \(shown)\(more): only names ending in .yaml or .yml (lower case) are read, and not hidden ones"
    }

    /// "a FIFO", "a directory", ...: what a path is, in words.
    private static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: return "a directory"
        case S_IFIFO: return "a FIFO"
        case S_IFSOCK: return "a socket"
        case S_IFCHR: return "a character device"
        case S_IFBLK: return "a block device"
        case S_IFLNK: return "a symbolic link"
        default: return "not a regular file"
        }
    }

    private static func join(_ directory: String, _ name: String) -> String {
        directory.hasSuffix("/") ? directory + name : directory + "/" + name
    }

    private static func errorText() -> String {
        String(cString: strerror(errno))
    }
}

/// A directory entry's name, read up to its NUL in place. Copying `d_name` (a 256-byte tuple) read
/// past the end of the last, shorter record of readdir's buffer: found by `make test-asan`.
package func direntName(_ entry: UnsafeMutablePointer<dirent>) -> String {
    let offset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
    return String(cString: UnsafeRawPointer(entry).advanced(by: offset).assumingMemoryBound(to: CChar.self))
}
