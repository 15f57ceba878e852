import Foundation
import MacvtapdCore
import Testing

@testable import MacvtapdReconciler

@Suite struct StatusEncodingTests {
    static func binding(_ index: Int, phase: Phase = .attached) -> BindingStatus {
        BindingStatus(
            vm: "vm\(index / 10)", nic: "nic\(index % 10)", phase: phase, reason: "Converged", message: "m/\"x\"",
            since: 1000.5, lower: "eth0", guestLink: true, qmp: "/run/q.sock")
    }

    @Test func incrementalEncodingDecodesToTheSameDocument() throws {
        var encoder = IncrementalStatusEncoder()
        var bindings = (0..<30).map { Self.binding($0) }
        let config = StatusDocument.ConfigStatus(path: "/etc/macvtapd", valid: false, errors: ["a:1:2: error: x"])
        let first = try encoder.encode(bindings: bindings, config: config, updated: 42)
        #expect(
            try JSONDecoder().decode(StatusDocument.self, from: Data(first))
                == StatusDocument(
                    updated: 42, config: config, bindings: bindings))

        bindings[7] = Self.binding(7, phase: .hostMissing)
        encoder.invalidate(bindings[7].key)
        bindings.remove(at: 3)
        let second = try encoder.encode(bindings: bindings, config: nil, updated: 43)
        let decoded = try JSONDecoder().decode(StatusDocument.self, from: Data(second))
        #expect(decoded == StatusDocument(updated: 43, config: nil, bindings: bindings))
        #expect(decoded.bindings[6].phase == .hostMissing)

        // A binding removed and listed again is encoded afresh, without being invalidated: the
        // cache forgot it when it was not listed.
        let removed = Self.binding(3, phase: .failed)
        bindings.insert(removed, at: 3)
        let third = try encoder.encode(bindings: bindings, config: nil, updated: 44)
        #expect(try JSONDecoder().decode(StatusDocument.self, from: Data(third)).bindings[3] == removed)
    }

    /// The encoder keeps JSON, not statuses: what changed is the owner's to say (the controller
    /// invalidates a binding whenever it records a new status for it).
    @Test func onlyInvalidatedBindingsAreEncodedAgain() throws {
        var encoder = IncrementalStatusEncoder()
        var bindings = (0..<3).map { Self.binding($0) }
        _ = try encoder.encode(bindings: bindings, config: nil, updated: 1)
        bindings[1] = Self.binding(1, phase: .hostMissing)
        let stale = try JSONDecoder().decode(
            StatusDocument.self, from: Data(try encoder.encode(bindings: bindings, config: nil, updated: 2)))
        #expect(stale.bindings[1].phase == .attached)
        encoder.invalidate(bindings[1].key)
        let fresh = try JSONDecoder().decode(
            StatusDocument.self, from: Data(try encoder.encode(bindings: bindings, config: nil, updated: 3)))
        #expect(fresh == StatusDocument(updated: 3, config: nil, bindings: bindings))
    }
}
