import Foundation
import MacvtapdConfig
import MacvtapdTestSupport
import Testing

/// The JSON schema (for editors) and the loader (for the daemon) must accept and reject the same files.
@Suite("JSON schema and loader agree")
struct SchemaAgreementTests {
    static let schema = repositoryRoot + "/schemas/macvtapd.schema.json"
    static let fixtures = repositoryRoot + "/Tests/MacvtapdConfigTests/Fixtures"

    static func yamlFiles(in directory: String) -> [String] {
        let names = (try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []
        return names.filter { $0.hasSuffix(".yaml") }.sorted().map { directory + "/" + $0 }
    }

    static let validFiles =
        [repositoryRoot + "/examples/macvtapd.yaml"] + yamlFiles(in: repositoryRoot + "/examples/conf.d")
        + yamlFiles(in: fixtures + "/valid")
    static let invalidFiles = yamlFiles(in: fixtures + "/invalid")

    /// Runs the real `jsonschema` validator through scripts/validate-schema.py; one verdict per file.
    private func schemaVerdicts(_ files: [String]) async throws -> [String: Bool] {
        let run = try await ChildProcess.run(
            "/usr/bin/env", ["python3", repositoryRoot + "/scripts/validate-schema.py", Self.schema] + files)
        #expect(run.status == 0 || run.status == 1, "validate-schema.py failed: \(run.stderr)")
        var verdicts: [String: Bool] = [:]
        for line in run.stdout.split(separator: "\n") {
            if line.hasPrefix("valid ") { verdicts[String(line.dropFirst("valid ".count))] = true }
            if line.hasPrefix("invalid "), let colon = line.firstIndex(of: ":") {
                verdicts[String(line[line.index(line.startIndex, offsetBy: "invalid ".count)..<colon])] = false
            }
        }
        return verdicts
    }

    @Test func thereAreExamplesAndFixturesToCheck() {
        #expect(Self.validFiles.count >= 4)
        #expect(Self.invalidFiles.count >= 10)
    }

    @Test func everyExampleIsValidForTheSchemaAndTheLoader() async throws {
        let verdicts = try await schemaVerdicts(Self.validFiles)
        for file in Self.validFiles {
            #expect(verdicts[file] == true, "schema rejects \(file)")
            let result = ConfigLoader.load(path: file)
            #expect(result.diagnostics.isEmpty, "loader rejects \(file): \(result.diagnostics)")
        }
    }

    @Test func theExampleDirectoryLoadsAsOneConfiguration() throws {
        let result = ConfigLoader.load(path: repositoryRoot + "/examples/conf.d")
        let desired = try #require(result.desired, "\(result.diagnostics)")
        #expect(desired.vms.keys.sorted() == ["db1", "web1", "web2"])
        #expect(desired.bindings.count == 4)
    }

    @Test func everyInvalidFixtureIsRejectedByBoth() async throws {
        let verdicts = try await schemaVerdicts(Self.invalidFiles)
        for file in Self.invalidFiles {
            #expect(verdicts[file] == false, "schema accepts \(file)")
            let result = ConfigLoader.load(path: file)
            #expect(result.desired == nil, "loader accepts \(file)")
            #expect(result.diagnostics.allSatisfy { $0.location?.file == file })
        }
    }

    @Test func theSchemaIsDraft2020WithClosedObjects() throws {
        let data = try Data(contentsOf: URL(fileURLWithPath: Self.schema))
        let schema = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        #expect(schema["$schema"] as? String == "https://json-schema.org/draft/2020-12/schema")
        #expect(schema["additionalProperties"] as? Bool == false)
        let definitions = try #require(schema["$defs"] as? [String: Any])
        let mode = try #require(definitions["mode"] as? [String: Any])
        #expect(mode["enum"] as? [String] == ["bridge", "vepa", "private", "passthru"])
    }
}
