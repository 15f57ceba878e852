import MacvtapdCore

/// Passthru owns its lower: the kernel refuses a second macvtap on an interface that has a passthru
/// one, and a passthru macvtap on an interface that already has others (EINVAL either way). Caught
/// at validate time, naming both NICs, instead of as a failed attach on the host.
///
/// Host matchers are compared as written: two NICs that reach one interface through different
/// matchers (a name and a MAC) are only found when the daemon resolves them.
struct PassthruRule {
    private typealias Claim = (key: BindingKey, mode: MacvtapMode, location: SourceLocation)
    /// Per host matcher, the first NIC that uses it and the first that uses it in passthru mode:
    /// all a later NIC can conflict with. (Keeping every claim in an array read before each append
    /// copied the array at every NIC: quadratic in the NICs per host interface.)
    private var claims: [HostMatcher: (first: Claim, passthru: Claim?)] = [:]
    private(set) var diagnostics: [Diagnostic] = []

    mutating func add(_ binding: NICBinding) {
        guard let location = binding.source else { return }
        let claim: Claim = (binding.key, binding.mode, location)
        guard let known = claims[binding.host] else {
            claims[binding.host] = (claim, binding.mode == .passthru ? claim : nil)
            return
        }
        if let conflict = binding.mode == .passthru ? known.first : known.passthru {
            diagnostics.append(Diagnostic(message(binding, conflict), at: location))
        }
        if binding.mode == .passthru, known.passthru == nil { claims[binding.host]?.passthru = claim }
    }

    private func message(
        _ binding: NICBinding, _ first: Claim
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
