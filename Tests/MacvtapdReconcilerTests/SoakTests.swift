import Foundation
import MacvtapdConfig
import MacvtapdCore
import MacvtapdTestSupport
import Testing

/// The randomized fault soak (Soak) for about a minute, with a fresh seed each run (printed;
/// MACVTAPD_SOAK_SEED pins it, MACVTAPD_SOAK_SECONDS changes the length), and the soak's own
/// model checked against the config loader.
@Suite(.serialized) struct SoakTests {
    static var environment: [String: String] { ProcessInfo.processInfo.environment }

    @Test func randomFaultsConvergeAndEveryInvariantHolds() async throws {
        let seed = Self.environment["MACVTAPD_SOAK_SEED"].flatMap(UInt64.init) ?? SoakRandom.freshSeed()
        // Two rounds of faults, each followed by quiescence and the checks: about a minute.
        let seconds = Self.environment["MACVTAPD_SOAK_SECONDS"].flatMap(Int.init) ?? 46
        print("soak seed \(seed) (MACVTAPD_SOAK_SEED=\(seed) replays it)")
        let report = try await Soak.run(
            Soak.Options(seed: seed, duration: .seconds(seconds), chaos: .seconds(max(5, seconds / 2)), maxRounds: 2))
        print(report)
        #expect(report.failures.isEmpty, "seed \(seed):\n\(report.failures.joined(separator: "\n"))")
        #expect(report.rounds >= 1)
        #expect(report.eventCount > 50, "the soak injected too few faults to mean anything")
    }

    /// The soak's model must say what the daemon will decide: every config it calls valid loads,
    /// every spoiled one is rejected.
    @Test func soakConfigurationsAreValidOrInvalidAsTheModelSays() throws {
        let directory = try TemporaryDirectory()
        defer { directory.remove() }
        var random = SoakRandom(seed: 16)
        let nics = ["web1", "db1"].flatMap { vm in
            (1...2).map { index in
                SoakNIC(
                    vm: vm, id: "nic\(index - 1)", mac: MACAddress("52:54:00:50:0\(vm == "web1" ? 0 : 1):0\(index)")!,
                    alternateMAC: MACAddress("02:00:00:50:0\(vm == "web1" ? 0 : 1):0\(index)")!, hub: 9 + index)
            }
        }
        var model = SoakModel(
            lowerNames: Soak.lowerNames, vms: ["web1", "db1"], nics: nics,
            config: SoakModel.randomConfig(nics: nics, lowers: Soak.lowerNames, using: &random))
        func yaml(_ config: SoakConfig) -> String { config.yaml(qmp: { "/run/soak/\($0).qmp" }, nics: nics) }
        for _ in 0..<100 {
            model.config = model.mutatedConfig(using: &random)
            let valid = yaml(model.config)
            let path = try directory.write("valid.yaml", valid)
            let loaded = ConfigLoader.load(path: path)
            #expect(loaded.desired != nil, "\(valid)\n\(loaded.diagnostics)")
            #expect(loaded.desired?.bindings.count == model.config.bindings.count)
            for spoiler in SoakInvalidConfig.allCases {
                let text = spoiler.spoil(valid)
                let spoiled = ConfigLoader.load(path: try directory.write("invalid.yaml", text))
                #expect(spoiled.desired == nil, "\(spoiler) left a valid config:\n\(text)")
            }
        }
    }
}
