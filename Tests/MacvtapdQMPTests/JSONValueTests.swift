import Foundation
import Testing

@testable import MacvtapdQMP

@Suite struct JSONValueTests {
    @Test(arguments: [
        (#"{"a": [1, -2, 3.5, true, false, null, "x"]}"#, ["a": [1, -2, 3.5, true, false, nil, "x"]] as JSONValue),
        (#""\u00e9\ud83d\ude00\n\t\"\\\/""#, .string("é😀\n\t\"\\/")),
        ("18446744073709551615", .double(18_446_744_073_709_551_616)),
        ("-9223372036854775808", .int(Int64.min)),
        ("1e3", .double(1000)),
        ("  {}  ", .object([:])),
    ])
    func parses(text: String, expected: JSONValue) throws {
        #expect(try JSONReader.parse(Array(text.utf8)) == expected)
    }

    @Test(arguments: [
        "", "{", #"{"a" 1}"#, "[1,]", "tru", #""abc"#, "\"a\u{01}b\"", "{} x", #""\ud800""#, "01x", "-",
    ])
    func rejects(text: String) {
        #expect(throws: JSONSyntaxError.self) { try JSONReader.parse(Array(text.utf8)) }
    }

    @Test func writesCompactSortedEscapedJSON() {
        let value: JSONValue = ["b": "q\"\u{01}\n", "a": [1, 2.5, nil, true]]
        #expect(value.description == #"{"a":[1,2.5,null,true],"b":"q\"\u0001\n"}"#)
    }

    @Test func roundTripsThroughOwnReaderAndFoundationCodable() throws {
        let value: JSONValue = ["execute": "netdev_add", "arguments": ["hubid": 10, "vhost": false, "id": "T"]]
        #expect(try JSONReader.parse(JSONWriter.encode(value)) == value)
        let data = try JSONEncoder().encode(value)
        #expect(try JSONDecoder().decode(JSONValue.self, from: data) == value)
    }

    @Test func accessors() {
        let value: JSONValue = ["running": true, "n": 3, "d": 2.0, "s": "x"]
        #expect(value["running"]?.boolValue == true)
        #expect(value["n"]?.intValue == 3)
        #expect(value["d"]?.intValue == 2)
        #expect(value["s"]?.stringValue == "x")
        #expect(value["missing"] == nil)
        #expect(JSONValue.string("x")["key"] == nil)
    }
}
