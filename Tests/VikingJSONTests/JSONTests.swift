import Testing
import VikingJSON

@Suite struct JSONTests {
    @Test func roundTripsPythonStyle() throws {
        let text = #"{"users": {"alice": {"role": "admin", "key": "sk-d9090238511730eec994e2f4", "key_prefix": "sk-abcde"}}}"#
        let value = try JSON.parse(Array(text.utf8))
        #expect(value.serialized() == text)
        #expect(try JSON.parse(value.serialized()) == value)
    }

    @Test func keepsOrderNumbersAndEscapes() throws {
        let text = #"{"b": 1.50, "a": [true, false, null, -0, 1e+10], "s": "tab\there \"q\" \u00e9 \ud83d\ude00 \/"}"#
        let value = try JSON.parse(Array(text.utf8))
        #expect(value["s"]?.stringValue == "tab\there \"q\" é 😀 /")
        // Python's json.dumps: ensure_ascii escapes, numbers as written, member order kept.
        #expect(value.serialized() == #"{"b": 1.50, "a": [true, false, null, -0, 1e+10], "s": "tab\there \"q\" \u00e9 \ud83d\ude00 /"}"#)
        #expect(value.members?.map(\.key) == ["b", "a", "s"])
        #expect(value["b"]?.doubleValue == 1.5)
    }

    @Test func parsesNestedValues() throws {
        let v = try JSON.parse(#"{"a": [1, 2.5, -3e2], "b": {"c": null, "d": true}, "s": "x\"\u00e9\ud83d\ude00\n"}"#)
        #expect(v["b"]?["d"] == .bool(true))
        #expect(v["b"]?["c"] == .null)
        #expect(v["s"]?.stringValue == "x\"é😀\n")
        #expect(v["a"] == .array([.int(1), .number("2.5"), .number("-3e2")]))
        #expect(v["a"]?.typeName == "an array" && v["s"]?.typeName == "a string" && v["missing"] == nil)
    }

    @Test func lastDuplicateKeyWins() throws {
        #expect(try JSON.parse(#"{"k": 1, "k": 2}"#)["k"] == .int(2))
    }

    @Test func parsesRawUTF8AndWhitespace() throws {
        let value = try JSON.parse(Array(" {\n \"k\" : \"ünï\" } \n".utf8))
        #expect(value["k"]?.stringValue == "ünï")
    }

    @Test func escapesUnicodeOnOutput() {
        #expect(JSON.quoted("a\u{08}\u{0C}\u{01}é😀") == #""a\b\f\u0001\u00e9\ud83d\ude00""#)
        #expect(JSON.string("\u{1F680}").serialized() == #""\ud83d\ude80""#)
    }

    @Test(arguments: ["", "{", "{\"a\" 1}", "{\"a\": 1,}", "[1 2]", "\"\\x\"", "01", "1.", "{\"a\": 1} x", "\"\u{01}\"", "\"\\ud800\"", "nul",
                      "\"\\udc00\"", "\"\\ud800\\u0041\"", "-", "1e", "[1,]", "\u{FEFF}{}"])
    func rejectsMalformed(_ text: String) {
        #expect(throws: JSON.ParseError.self) { try JSON.parse(Array(text.utf8)) }
    }

    @Test func rejectsInvalidUTF8() {
        #expect(throws: JSON.ParseError.self) { try JSON.parse([0x22, 0xff, 0x22]) }
    }

    @Test func limitsDepth() {
        let deep = String(repeating: "[", count: 1000) + String(repeating: "]", count: 1000)
        #expect(throws: JSON.ParseError.self) { try JSON.parse(Array(deep.utf8)) }
    }

    @Test func errorsNameLineAndColumn() {
        do {
            _ = try JSON.parse("{\n  \"a\": 1\n  \"b\": 2\n}")
            Issue.record("parsed bad JSON")
        } catch {
            #expect(error.line == 3 && error.column == 3)
            #expect(error.description == "expected ',' or '}' in object at line 3, column 3")
        }
        do {
            // Columns count characters, not bytes.
            _ = try JSON.parse("[\"é\", x]")
            Issue.record("parsed bad JSON")
        } catch {
            #expect(error.line == 1 && error.column == 7 && error.offset == 7)
        }
    }

    @Test func byteOrderMarkOnlyWhenAllowed() throws {
        let bytes: [UInt8] = [0xEF, 0xBB, 0xBF] + Array(#"{"a": 1}"#.utf8)
        #expect(throws: JSON.ParseError.self) { try JSON.parse(bytes) }
        #expect(try JSON.parse(bytes, allowingByteOrderMark: true)["a"] == .int(1))
    }

    @Test func findsSecretFieldsWithoutStrings() {
        let body = Array(#"{"data":{"plaintext": "AAEC"},"x":1}"#.utf8)
        let range = body.withUnsafeBytes { JSON.stringFieldRange($0, field: "plaintext") }
        #expect(range.map { String(decoding: body[$0], as: UTF8.self) } == "AAEC")
        #expect(body.withUnsafeBytes { JSON.stringFieldRange($0, field: "missing") } == nil)
        let escaped = Array(#"{"plaintext": "A\u0041"}"#.utf8)
        #expect(escaped.withUnsafeBytes { JSON.stringFieldRange($0, field: "plaintext") } == nil)
    }
}
