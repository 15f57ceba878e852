#if canImport(Glibc)
    import Glibc
#endif

/// Raises RLIMIT_NOFILE's soft limit to the hard limit; returns a line saying how, or nil when
/// there was nothing to raise. A failure is said and changes nothing: the daemon keeps fewer taps.
func raiseOpenFileLimit() -> String? {
    var limit = rlimit()
    guard getrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
        return "cannot read RLIMIT_NOFILE: \(String(cString: strerror(errno)))"
    }
    guard limit.rlim_cur < limit.rlim_max else { return nil }
    let before = limit.rlim_cur
    limit.rlim_cur = limit.rlim_max
    guard setrlimit(Int32(RLIMIT_NOFILE.rawValue), &limit) == 0 else {
        return "cannot raise RLIMIT_NOFILE from \(before): \(String(cString: strerror(errno)))"
    }
    return "raised RLIMIT_NOFILE from \(before) to \(limit.rlim_max)"
}
