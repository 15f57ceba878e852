import Glibc

/// A directory entry's name, read up to its NUL in place. Copying `d_name` (a 256-byte tuple) read
/// past the end of the last, shorter record of readdir's buffer: found by `make test-asan`.
public func direntName(_ entry: UnsafeMutablePointer<dirent>) -> String {
    let offset = MemoryLayout<dirent>.offset(of: \dirent.d_name)!
    return String(cString: UnsafeRawPointer(entry).advanced(by: offset).assumingMemoryBound(to: CChar.self))
}
