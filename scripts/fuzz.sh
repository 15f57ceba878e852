#!/usr/bin/env bash
# `make fuzz`: builds the libFuzzer targets (fuzz/Sources, declared in Package.swift only when
# MACVTAPD_FUZZ is set) with --sanitize=fuzzer --sanitize=address in .build-fuzz, replays the saved
# findings (fuzz/regressions/<target>/), then runs each target for FUZZ_SECONDS from its seeds
# (fuzz/corpus/<target>/, read-only) plus a working corpus in .build-fuzz/corpus/<target>.
# A crash, a run past 1 s (-timeout=1), or memory past FUZZ_RSS_MB is a finding: its input is
# saved under .build-fuzz/artifacts/<target>/ and the script exits 1 after the last target.
set -uo pipefail
cd "$(dirname "$0")/.."
SWIFT=${SWIFT:-swift}
SECONDS_EACH=${FUZZ_SECONDS:-180}
RSS_MB=${FUZZ_RSS_MB:-2048}
TARGETS=${FUZZ_TARGETS:-config qmp network-info netlink control}
SCRATCH=.build-fuzz
# Swift's own crash handler would fight ASan's and libFuzzer's for the signal.
export SWIFT_BACKTRACE=enable=no
export MACVTAPD_FUZZ=1

max_len() {
    case $1 in
        config | control | qmp) echo 16384 ;;
        *) echo 4096 ;;
    esac
}

mkdir -p $SCRATCH
for target in $TARGETS; do
    # swiftc keeps only the last -sanitize= flag it is given, so SwiftPM's --sanitize=fuzzer
    # --sanitize=address would leave every Swift library uninstrumented (libFuzzer blind): one flag.
    $SWIFT build --scratch-path $SCRATCH --sanitize=fuzzer --sanitize=address -Xswiftc -sanitize=fuzzer,address \
        --product fuzz-$target \
        >$SCRATCH/build-$target.log 2>&1 || { tail -40 $SCRATCH/build-$target.log; exit 2; }
done

findings=0
summary=""
for target in $TARGETS; do
    binary=$SCRATCH/debug/fuzz-$target
    if [ -d fuzz/regressions/$target ] && [ -n "$(ls -A fuzz/regressions/$target)" ]; then
        if ! $binary -timeout=1 -rss_limit_mb=$RSS_MB fuzz/regressions/$target/* >$SCRATCH/regressions-$target.log 2>&1; then
            echo "fuzz-$target: a saved finding fails again:"; tail -30 $SCRATCH/regressions-$target.log
            findings=$((findings + 1))
        fi
    fi
    rm -rf $SCRATCH/artifacts/$target
    mkdir -p $SCRATCH/corpus/$target $SCRATCH/artifacts/$target
    log=$SCRATCH/fuzz-$target.log
    started=$(date +%s)
    $binary $SCRATCH/corpus/$target fuzz/corpus/$target -max_total_time=$SECONDS_EACH -timeout=1 \
        -rss_limit_mb=$RSS_MB -max_len=$(max_len $target) -print_final_stats=1 \
        -artifact_prefix=$SCRATCH/artifacts/$target/ >$log 2>&1
    status=$?
    elapsed=$(($(date +%s) - started))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' $log)
    rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' $log)
    peak=$(sed -n 's/^stat::peak_rss_mb: *//p' $log)
    cov=$(grep -o 'cov: [0-9]*' $log | tail -1)
    found=$(ls $SCRATCH/artifacts/$target | wc -l)
    line="fuzz-$target: ${execs:-?} runs in ${elapsed}s, ${rate:-?} exec/s, $cov, peak ${peak:-?} MB, exit $status, $found finding(s)"
    echo "$line"
    summary+="$line"$'\n'
    if [ $status -ne 0 ] || [ "$found" -ne 0 ]; then
        findings=$((findings + 1))
        grep -m1 -A12 'ERROR\|==ERROR\|Fatal error\|deadly signal\|timeout\|out-of-memory' $log
        ls $SCRATCH/artifacts/$target
    fi
done
printf '\n%s' "$summary"
[ $findings -eq 0 ]
