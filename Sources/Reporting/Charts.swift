import Foundation
import TextFormatting

/// Charts beyond plain lines: the scatter, the reliability diagram, bars and the confusion matrix.

/// Predicted against actual spend on log1p axes, one dot per sampled customer.
func spendScatter(id: String, title: String, rows: [ChurnPrediction]) -> String {
    let top = max(rows.map(\.spend).max() ?? 1, rows.map(\.expectedSpend).max() ?? 1)
    let frame = Frame(x: .log1p("actual spend over the horizon (log scale, 1 + spend)", maximum: top),
                      y: .log1p("predicted spend (log scale, 1 + spend)", maximum: top))
    var svg = frame.open(id: id, title: title)
    svg += frame.diagonal(label: "predicted = actual")
    svg += "<g class=\"points\" fill=\"\(palette[0])\" fill-opacity=\"0.35\">\n"
    var drawn: [(Double, Double)] = []
    for row in rows {
        let point = (frame.px(x: row.spend), frame.px(y: row.expectedSpend))
        drawn.append(point)
        svg += "<circle cx=\"\(px(point.0))\" cy=\"\(px(point.1))\" r=\"2.2\"/>"
    }
    svg += "\n</g>\n"
    svg += frame.legend([("customer (test split)", palette[0], false), ("predicted = actual", "#888888", true)],
                        avoiding: drawn + traced([frame.diagonalEnds.0, frame.diagonalEnds.1]))
    return svg + "</svg>\n"
}

/// Reliability diagram: observed churn rate against mean predicted probability per bin, the
/// diagonal of perfect calibration, and each bin's customer count as a bar along the bottom.
func calibrationChart(id: String, title: String, bins: [CalibrationBin]) -> String {
    let frame = Frame(x: .linear("predicted churn probability (bin mean)", values: [], fixed: 0...1),
                      y: .linear("observed churn rate", values: [], fixed: 0...1))
    var svg = frame.open(id: id, title: title)
    svg += frame.diagonal(label: "perfectly calibrated")
    let largest = Double(bins.map(\.count).max() ?? 1)
    // Count bars use at most a fifth of the plot, under the curve, so they read as context.
    svg += "<g class=\"bin-counts\">\n"
    var bars: [(Double, Double)] = []
    for bin in bins {
        let x0 = frame.px(x: bin.lower) + 2, x1 = frame.px(x: bin.upper) - 2
        let barHeight = largest > 0 ? Double(bin.count) / largest * frame.plotHeight * 0.2 : 0
        let base = frame.top + frame.plotHeight
        bars += [(x0, base - barHeight - 12), ((x0 + x1) / 2, base - barHeight - 12), (x1, base - barHeight - 12)]
        svg += "<rect class=\"count-bar\" data-count=\"\(bin.count)\" x=\"\(px(x0))\" y=\"\(px(base - barHeight))\" width=\"\(px(x1 - x0))\" height=\"\(px(barHeight))\"/>"
        svg += "<text class=\"count-label\" x=\"\(px((x0 + x1) / 2))\" y=\"\(px(base - barHeight - 3))\" text-anchor=\"middle\">\(bin.count)</text>\n"
    }
    svg += "</g>\n"
    let filled = bins.compactMap { bin in bin.meanPredicted.flatMap { p in bin.observedRate.map { (x: p, y: $0) } } }
    svg += frame.polyline(Series(name: "test split", key: "calibration", points: filled, color: palette[1]), markers: true)
    svg += frame.legend([("observed rate per bin", palette[1], false), ("perfectly calibrated", "#888888", true),
                         ("customers per bin (bars)", "#c9d3df", false)],
                        avoiding: traced(frame.pixels(filled)) + traced([frame.diagonalEnds.0, frame.diagonalEnds.1]) + bars)
    return svg + "</svg>\n"
}

/// Horizontal bars of counts with the count and share written at each bar's end.
func barChart(id: String, title: String, axisLabel: String, items: [(String, Int)], color: String) -> String {
    let total = max(items.reduce(0) { $0 + $1.1 }, 1)
    return valueBarChart(id: id, title: title, axisLabel: axisLabel, items: items.map { ($0.0, Double($0.1)) }, color: color,
                         dataAttribute: ("data-count", { String(Int($0)) })) { value in
        "\(formatCount(Int(value))) (\(String(format: "%.1f", 100 * value / Double(total)))%)"
    }
}

/// Horizontal bars of non-negative values, each written at its bar's end by `label`.
/// Each bar's group carries its value in `dataAttribute` (name, formatter) for tests and tools.
func valueBarChart(id: String, title: String, axisLabel: String, items: [(String, Double)], color: String,
                   dataAttribute: (name: String, format: (Double) -> String) = ("data-value", { String($0) }),
                   label: (Double) -> String) -> String {
    let rowHeight = 30.0
    let labelWidth = min(250.0, 24 + Double(items.map { $0.0.count }.max() ?? 4) * 7)
    let width = 560.0, top = 40.0, right = 110.0
    let height = top + Double(items.count) * rowHeight + 46
    let plotWidth = width - labelWidth - right
    let largest = items.map { $0.1 }.max() ?? 1
    let axis = Axis.linear(axisLabel, values: [0, largest > 0 ? largest : 1], includeZero: true)
    func x(_ value: Double) -> Double { labelWidth + value / axis.upper * plotWidth }
    var svg = "<svg id=\"\(escapeXML(id))\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" "
        + "width=\"\(Int(width))\" height=\"\(Int(height))\" role=\"img\" aria-labelledby=\"\(escapeXML(id))-title\">\n"
    svg += "<title id=\"\(escapeXML(id))-title\">\(escapeXML(title))</title>\n"
    // Long bar labels push the plot right; the title then starts at the left edge so it fits.
    svg += "<text class=\"chart-title\" x=\"\(px(labelWidth > 150 ? 20 : labelWidth))\" y=\"22\">\(escapeXML(title))</text>\n"
    let bottom = top + Double(items.count) * rowHeight
    svg += "<g class=\"axis x-axis\">\n"
    for tick in axis.ticks {
        svg += "<line class=\"gridline\" x1=\"\(px(x(tick.position)))\" y1=\"\(px(top))\" x2=\"\(px(x(tick.position)))\" y2=\"\(px(bottom))\"/>"
        svg += "<text class=\"tick-label\" x=\"\(px(x(tick.position)))\" y=\"\(px(bottom + 16))\" text-anchor=\"middle\">\(escapeXML(tick.label))</text>\n"
    }
    svg += "<text class=\"axis-label\" x=\"\(px(labelWidth + plotWidth / 2))\" y=\"\(px(bottom + 36))\" text-anchor=\"middle\">\(escapeXML(axisLabel))</text>\n</g>\n"
    for (index, item) in items.enumerated() {
        let y = top + Double(index) * rowHeight
        svg += "<g class=\"bar\" data-label=\"\(escapeXML(item.0))\" \(dataAttribute.name)=\"\(dataAttribute.format(item.1))\">"
        svg += "<text class=\"bar-label\" x=\"\(px(labelWidth - 8))\" y=\"\(px(y + rowHeight / 2 + 4))\" text-anchor=\"end\">\(escapeXML(item.0))</text>"
        svg += "<rect x=\"\(px(labelWidth))\" y=\"\(px(y + 5))\" width=\"\(px(x(item.1) - labelWidth))\" height=\"\(px(rowHeight - 10))\" fill=\"\(color)\"/>"
        svg += "<text class=\"bar-value\" x=\"\(px(x(item.1) + 6))\" y=\"\(px(y + rowHeight / 2 + 4))\">\(escapeXML(label(item.1)))</text></g>\n"
    }
    svg += "<line class=\"axis-line\" x1=\"\(px(labelWidth))\" y1=\"\(px(top))\" x2=\"\(px(labelWidth))\" y2=\"\(px(bottom))\"/>\n"
    return svg + "</svg>\n"
}

/// The confusion matrix as a grid: counts in the cells, shaded by the share of the actual
/// stage's customers (so a small stage's errors show as clearly as a large one's).
func confusionChart(id: String, title: String, matrix: [[Int]], names: [String]) -> String {
    let count = matrix.count
    let cell = min(88.0, 360.0 / Double(max(count, 1)))
    let left = 150.0, top = 66.0
    let width = 560.0, height = top + cell * Double(count) + 20
    var svg = "<svg id=\"\(escapeXML(id))\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" "
        + "width=\"\(Int(width))\" height=\"\(Int(height))\" role=\"img\" aria-labelledby=\"\(escapeXML(id))-title\">\n"
    svg += "<title id=\"\(escapeXML(id))-title\">\(escapeXML(title))</title>\n"
    svg += "<text class=\"chart-title\" x=\"20\" y=\"22\">\(escapeXML(title))</text>\n"
    svg += "<text class=\"axis-label\" x=\"\(px(left + cell * Double(count) / 2))\" y=\"44\" text-anchor=\"middle\">predicted stage</text>\n"
    svg += "<text class=\"axis-label\" transform=\"translate(20 \(px(top + cell * Double(count) / 2))) rotate(-90)\" text-anchor=\"middle\">actual stage</text>\n"
    for (index, name) in names.enumerated() {
        svg += "<text class=\"tick-label\" x=\"\(px(left + cell * (Double(index) + 0.5)))\" y=\"\(px(top - 6))\" text-anchor=\"middle\">\(escapeXML(name))</text>\n"
        svg += "<text class=\"tick-label\" x=\"\(px(left - 8))\" y=\"\(px(top + cell * (Double(index) + 0.5) + 4))\" text-anchor=\"end\">\(escapeXML(name))</text>\n"
    }
    for (actual, row) in matrix.enumerated() {
        let rowTotal = row.reduce(0, +)
        for (predicted, value) in row.enumerated() {
            let share = rowTotal > 0 ? Double(value) / Double(rowTotal) : 0
            let x = left + cell * Double(predicted), y = top + cell * Double(actual)
            svg += "<g class=\"cell\" data-actual=\"\(actual)\" data-predicted=\"\(predicted)\" data-count=\"\(value)\">"
            svg += "<rect x=\"\(px(x))\" y=\"\(px(y))\" width=\"\(px(cell))\" height=\"\(px(cell))\" fill=\"\(palette[0])\" fill-opacity=\"\(String(format: "%.3f", 0.06 + 0.9 * share))\" stroke=\"#ffffff\"/>"
            let ink = share > 0.5 ? "#ffffff" : "#1a1a1a"
            svg += "<text class=\"cell-count\" x=\"\(px(x + cell / 2))\" y=\"\(px(y + cell / 2))\" text-anchor=\"middle\" fill=\"\(ink)\">\(formatCount(value))</text>"
            svg += "<text class=\"cell-share\" x=\"\(px(x + cell / 2))\" y=\"\(px(y + cell / 2 + 16))\" text-anchor=\"middle\" fill=\"\(ink)\">\(String(format: "%.0f", 100 * share))%</text></g>\n"
        }
    }
    return svg + "</svg>\n"
}

