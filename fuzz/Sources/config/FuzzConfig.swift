import MacvtapdConfig
import MacvtapdCore

/// libFuzzer entry: bytes → the configuration loader, as `validate`, `plan`, a reload and the
/// control socket's `Plan` call run it. NUL bytes split the input into up to four files of one
/// directory (a NUL is never valid in a YAML file), so the checks that span files (a VM declared
/// twice, a MAC or a QMP socket claimed twice, passthru on one lower) are reached too.
///
/// Besides not crashing or hanging: an invalid configuration never yields a state, a valid one
/// always does, and every diagnostic can be printed.
@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzConfig(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    let bytes = size == 0 ? [] : Array(UnsafeBufferPointer(start: data, count: size))
    var sources: [ConfigSource] = []
    for (index, part) in bytes.split(separator: 0, maxSplits: 3, omittingEmptySubsequences: false).enumerated() {
        sources.append(ConfigSource(path: "/etc/macvtapd/conf.d/\(index).yaml", bytes: Array(part)))
    }
    let result = ConfigLoader.load(sources)
    precondition((result.desired == nil) == !result.diagnostics.isEmpty, "a state and diagnostics together")
    for diagnostic in result.diagnostics { _ = diagnostic.description }
    if let desired = result.desired {
        for vm in desired.vms.values { _ = vm.nics.count }
    }
    return 0
}
