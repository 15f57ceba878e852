import MacvtapdConfig
import Testing

/// libyaml's terse syntax errors get their likely cause, as the tab case already did.
@Suite("YAML syntax hints")
struct YAMLHintTests {
    private func errors(_ text: String) -> [String] {
        ConfigLoader.load([ConfigSource(path: "t.yaml", text: text)]).diagnostics.map(\.description)
    }

    @Test func anUnderIndentedKeySaysIndentation() {
        let text =
            "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics:\n      nic0:\n        host: eth0\n       mode: vepa\n"
        #expect(
            errors(text) == [
                "t.yaml:8:8: error: invalid YAML: did not find expected key (while parsing a block mapping at 6:7); "
                    + "the likely cause is indentation: line 8 (indented to column 8) does not line up with the keys "
                    + "of the mapping above it, which all start in one column"
            ])
    }

    @Test func anOverIndentedKeySaysItContinuesTheValueAbove() {
        let text =
            "version: 1\nvms:\n  web1:\n    qmp: /q\n    nics:\n      nic0:\n        host: eth0\n          mode: vepa\n"
        #expect(
            errors(text) == [
                "t.yaml:8:15: error: invalid YAML: mapping values are not allowed in this context; the likely cause "
                    + "is indentation: line 8 is indented more than the line above it, so YAML reads it as part of "
                    + "that line's value; indent it like the key it belongs next to"
            ])
    }

    @Test func anUnquotedColonInAValueSaysQuoteIt() {
        #expect(
            errors("version: 1\nvms:\n  web1:\n    qmp: a: b\n") == [
                "t.yaml:4:11: error: invalid YAML: mapping values are not allowed in this context; "
                    + "if a value contains ': ', quote it"
            ])
    }

    @Test func theTabHintStays() {
        let found = errors("version: 1\nvms:\n\tweb1: {}\n")
        #expect(found.count == 1)
        #expect(found.first?.hasSuffix("tabs cannot indent YAML, indent with spaces") == true)
    }
}
