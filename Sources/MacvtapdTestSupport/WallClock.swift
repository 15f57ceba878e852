import Foundation
import MacvtapdCore
import MacvtapdQMP
import Synchronization

#if canImport(Glibc)
    import Glibc
#endif

/// Wall-clock microseconds (CLOCK_REALTIME): the time base of QEMU's QMP event timestamps and of
/// `bridge -timestamp monitor`, so everything a live-migration measurement compares shares it.
public enum WallClock {
    public static func now() -> Int64 {
        var spec = timespec()
        clock_gettime(CLOCK_REALTIME, &spec)
        return Int64(spec.tv_sec) * 1_000_000 + Int64(spec.tv_nsec) / 1000
    }
}

extension Duration {
    /// A span between two `WallClock` instants.
    public static func wall(_ microseconds: Int64) -> Duration { .microseconds(microseconds) }
}
