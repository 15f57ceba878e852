import MacvtapdCore

/// Passthru owns its lower: the kernel refuses a second macvtap on an interface that has a passthru
/// one, and a passthru macvtap on an interface that already has others (EINVAL either way). Caught
/// at validate time, naming both NICs, instead of as a failed attach on the host.
///
/// Host matchers are compared as written: two NICs that reach one interface through different
/// matchers (a name and a MAC) are only found when the daemon resolves them.
struct PassthruRule {
    private var claims: [HostMatcher: [(key: BindingKey, mode: MacvtapMode, location: SourceLocation)]] = [:]
    private(set) var diagnostics: [Diagnostic] = []

    mutating func add(_ binding: NICBinding) {
        guard let location = binding.source else { return }
        let others = claims[binding.host, default: []]
        let conflict =
            binding.mode == .passthru ? others.first : others.first { $0.mode == .passthru }
        if let conflict {
            diagnostics.append(Diagnostic(message(binding, conflict), at: location))
        }
        claims[binding.host, default: []].append((binding.key, binding.mode, location))
    }

    private func message(
        _ binding: NICBinding, _ first: (key: BindingKey, mode: MacvtapMode, location: SourceLocation)
    ) -> String {
        let host = "host interface '\(binding.host)'"
        let what =
            "NIC \(binding.key) (mode \(binding.mode.rawValue)) and NIC \(first.key) at \(first.location) "
            + "(mode \(first.mode.rawValue)) both use \(host)"
        if binding.mode == .passthru && first.mode == .passthru {
            return "\(what); a passthru macvtap owns its host interface, so only one NIC can use it in passthru mode"
        }
        return "\(what); a passthru macvtap owns its host interface, so it cannot share it with another NIC"
    }
}
