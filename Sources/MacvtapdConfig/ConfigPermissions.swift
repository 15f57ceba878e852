#if canImport(Glibc)
    import Glibc
#endif

/// A path that lets someone other than the administrator change the desired state: the
/// configuration itself, a file it merges, or a directory above either of them.
public struct InsecureConfigPath: Hashable, Sendable, CustomStringConvertible {
    public var path: String
    /// The permission bits and the file type's setuid/setgid/sticky bits, as `ls` shows them in octal.
    public var mode: mode_t
    public var owner: uid_t
    /// What is wrong, in words: "writable by group and others", "owned by uid 1000".
    public var problem: String

    /// `/etc/macvtapd: writable by group (mode 0775, owner uid 0)`.
    public var description: String { "\(path): \(problem) \(details)" }

    /// `(mode 0775, owner uid 0)`
    public var details: String { "(mode \(Self.octal(mode)), owner uid \(owner))" }

    static func octal(_ mode: mode_t) -> String {
        let digits = String(mode & 0o7777, radix: 8)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }
}

/// sshd's StrictModes for macvtapd: the desired state decides which VM reaches which network, so
/// whoever can write it can move a VM onto another network. The configuration path, every file a
/// directory merges and every directory above them (up to `/`) must be writable only by root or
/// the user running macvtapd. A sticky directory (`/tmp`) is safe to sit in: others cannot rename
/// or replace what they do not own there.
public enum ConfigPermissions {
    /// Every insecure path for the configuration at `path`, in a stable order; empty when it is safe
    /// or when it cannot be read (loading reports that).
    public static func insecurePaths(configuration path: String, trusted: Set<uid_t> = defaultTrusted)
        -> [InsecureConfigPath]
    {
        var checked: Set<String> = []
        var found: [InsecureConfigPath] = []
        func check(_ path: String, isAncestor: Bool) {
            guard checked.insert(path).inserted else { return }
            var info = stat()
            guard stat(path, &info) == 0 else { return }
            let sticky = info.st_mode & S_ISVTX != 0 && info.st_mode & S_IFMT == S_IFDIR
            var problems: [String] = []
            let writers = [(S_IWGRP, "group"), (S_IWOTH, "others")].filter { info.st_mode & $0.0 != 0 }.map(\.1)
            if !writers.isEmpty && !(isAncestor && sticky) {
                problems.append("writable by \(writers.joined(separator: " and "))")
            }
            if !trusted.contains(info.st_uid) {
                problems.append("owned by uid \(info.st_uid), neither root nor the user running macvtapd")
            }
            if !problems.isEmpty {
                found.append(
                    InsecureConfigPath(
                        path: path, mode: info.st_mode, owner: info.st_uid, problem: problems.joined(separator: ", ")))
            }
        }
        /// The path as the kernel resolves it (symlinks followed), then each directory above it.
        func checkWithAncestors(_ path: String) {
            guard let resolved = realPath(path) else { return }
            check(resolved, isAncestor: false)
            var directory = resolved
            while let slash = directory.lastIndex(of: "/"), directory != "/" {
                directory = slash == directory.startIndex ? "/" : String(directory[..<slash])
                check(directory, isAncestor: true)
            }
        }
        checkWithAncestors(path)
        var info = stat()
        if stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR {
            for file in ConfigFiles.configurationFiles(in: path) { checkWithAncestors(file) }
        }
        return found
    }

    /// Root and the user running macvtapd.
    public static var defaultTrusted: Set<uid_t> { [0, geteuid()] }

    private static func realPath(_ path: String) -> String? {
        guard let resolved = realpath(path, nil) else { return nil }
        defer { free(resolved) }
        return String(cString: resolved)
    }
}
