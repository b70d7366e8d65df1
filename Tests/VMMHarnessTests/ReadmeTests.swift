import Foundation
import Testing

@Suite struct ReadmeTests {
    /// The README's Swift example is the `readme-example` target (built with the package), verbatim.
    @Test func exampleIsTheBuiltTarget() throws {
        let readme = try String(contentsOfFile: "\(TestSupport.root)/README.md", encoding: .utf8)
        let example = try String(contentsOfFile: "\(TestSupport.root)/Examples/ReadmeExample/main.swift", encoding: .utf8)
        let begin = try #require(readme.range(of: "<!-- example:begin -->\n```swift\n"))
        let end = try #require(readme.range(of: "```\n<!-- example:end -->"))
        #expect(String(readme[begin.upperBound..<end.lowerBound]) == example)
    }
}
