import Testing
import TextFormatting

@Suite struct FormatCountTests {
    @Test(arguments: [
        (0, "0"), (7, "7"), (999, "999"), (1000, "1,000"), (123_456, "123,456"), (1_234_567, "1,234,567"),
        (-5, "-5"), (-123_456, "-123,456"), (-1_000_000, "-1,000,000"), (Int.min, "-9,223,372,036,854,775,808"),
    ])
    func groupsDigitsInThrees(value: Int, expected: String) {
        #expect(formatCount(value) == expected)
    }
}
