/// What each row of `macvtapd-bench scale` measures, printed under its tables.
extension ScaleBench {
    static func notes(total: Int, lowers: Int, flaps: Int, idleSeconds: Int) -> String {
        """
        What each row measures (daemon: `macvtapd run` in the namespace with --status-file and
        --metrics-file; "all Attached" means the metrics textfile, which the daemon rewrites at most
        every 5 ms after a status change and the bench reads every 2–5 ms, shows \(total) bindings in
        phase Attached; the baseline is the same daemon with `--no-events --resync 1`):
        1. `macvtapd run --resync 5` started with no macvtap and no backend: from the bench's spawn
           of the daemon to all Attached.
        2. `macvtapd run --no-watch-config` (default resync, 30 s) started again on the converged host:
           from its spawn to all Attached in a fresh metrics file.
        3. whole CLI processes, from the bench's spawn to their exit; "beyond the replace" subtracts
           the daemon's `macvtapd_attach_duration_seconds` added by that apply.
        4. the daemon's own `macvtapd_last_resync_duration_seconds`: from the resync timer firing
           (the link dump starts) to the last VM it marked reconciled, with nothing to change;
           macvtapd at a 5 s resync (six in a row), the baseline at 1 s over its idle window.
        5. `ip link del` of lower l0 (carrying \(total / lowers) bindings), wait until they are
           detached (all \(total / lowers) HostMissing, which the daemon records once their dead
           backends are gone from QEMU), `ip link add` it again: from the RTM_NEWLINK of l0 that the
           bench's own link monitor receives to all Attached; \(flaps) flaps (the baseline: half as
           many, at least 2).
        6. the restarted daemon (row 2) at the default 30 s resync, from 1 s after the applies of
           row 3 for \(idleSeconds) s: the time its threads ran on a CPU (the sum of
           /proc/PID/task/*/schedstat, nanoseconds, of the threads alive at its end; a thread
           that exits in the window loses its share) over wall time; in brackets its utime + stime (/proc/PID/stat), counted in 10 ms
           clock ticks: one tick over 60 s is 0.017 %.
        7. the daemon's CPU time over the window in which the six resyncs of row 4 finished (the
           first starts after the converge settled), divided by six: each resync's own CPU plus the
           idle time around it.
        8. the daemon's CPU time from its start to all Attached (converge), and over the \(flaps)
           flaps of row 5 (deletes and returns) divided by their number.
        9. VmRSS (resident now, what `ps` shows: anonymous and file pages) and VmHWM (the most
           resident since exec) from /proc/PID/status of the daemon itself, read at the moment the
           row names: the first daemon when all are Attached; the restarted one at the end of row
           6's window; a daemon with `vms: {}` 2 s after its control socket appeared. The short
           commands' peaks come from GNU time between the bench and the command (it forks the
           command from its own small image, so the bench's memory is not counted).
        10. machine-wide, from /proc/stat and /proc/PID/stat: over the converge (spawn to all
           Attached) and over the median flap's return (the bench's `ip link add` to all
           Attached), the wall time times the cores, split into the daemon's user and kernel CPU
           (its kernel time includes creating the macvtaps and opening their taps), the QEMUs'
           CPU (QEMU 7.2 reads its monitor a byte per main-loop pass), everything else that ran
           (the bench itself, given apart: its polling of the metrics textfile every 2–5 ms and its
           link monitor; `ip`, kernel threads, other work on the machine) and idle time (no
           one runnable: waits on RTNL, on QMP replies, or timers). The daemons' tap nodes are
           made under /dev (devtmpfs), as with the default --device-dir.
        """
    }
}
