import Foundation

/// `text` with the five XML-special characters replaced, safe in element content and in
/// single- or double-quoted attributes.
public func escapeXML(_ text: String) -> String {
    var out = ""
    out.reserveCapacity(text.utf8.count)
    for character in text {
        switch character {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.append(character)
        }
    }
    return out
}

/// A coordinate with one decimal: enough for screen pixels, and it keeps the file small.
func px(_ value: Double) -> String { String(format: "%.1f", value) }

/// Series colours, chosen to stay distinct for colour-blind readers (Okabe–Ito).
let palette = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00"]

/// One axis of a chart: its range, ticks and label, in plotted (possibly transformed) units.
struct Axis {
    var label: String
    var lower: Double
    var upper: Double
    var ticks: [(position: Double, label: String)]
    /// Maps a data value to plotted units (log1p for spend).
    var transform: @Sendable (Double) -> Double = { $0 }

    /// Ticks at 1, 2 or 5 × 10ᵏ covering `values` (and `fixed`, when given, exactly).
    static func linear(_ label: String, values: [Double], fixed: ClosedRange<Double>? = nil, includeZero: Bool = false,
                       format: ((Double, Double) -> String)? = nil) -> Axis {
        var lower = fixed?.lowerBound ?? values.min() ?? 0
        var upper = fixed?.upperBound ?? values.max() ?? 1
        if includeZero { lower = min(lower, 0); upper = max(upper, 0) }
        if upper - lower < 1e-12 {
            // One value (or a flat series): give it some room so it is not drawn on the frame.
            let pad = abs(upper) > 0 ? abs(upper) * 0.1 : 1
            lower -= pad
            upper += pad
            if includeZero && lower < 0 && (values.min() ?? 0) >= 0 { lower = 0 }
        }
        let step = niceStep((upper - lower) / 5)
        if fixed == nil {
            lower = (lower / step).rounded(.down) * step
            upper = (upper / step).rounded(.up) * step
        }
        var ticks: [(position: Double, label: String)] = []
        let formatter = format ?? formatTick
        // Ticks as multiples of the step, not a running sum, so 0.1 + 0.2 drift never shows.
        var multiple = (lower / step - 1e-9).rounded(.up)
        while multiple * step <= upper + step * 1e-9 {
            let tick = multiple * step
            ticks.append((tick, formatter(abs(tick) < step * 1e-9 ? 0 : tick, step)))
            multiple += 1
        }
        return Axis(label: label, lower: lower, upper: upper, ticks: ticks)
    }

    /// Integer ticks for epochs 1...`count`, thinned to about eight labels.
    static func epochs(_ count: Int) -> Axis {
        let step = max(1, Int(niceStep(Double(max(count, 1)) / 8).rounded(.up)))
        var ticks: [(position: Double, label: String)] = [(1, "1")]
        var tick = step
        while tick <= count {
            if tick > 1 { ticks.append((Double(tick), String(tick))) }
            tick += step
        }
        return Axis(label: "epoch", lower: count > 1 ? 1 : 0.5, upper: count > 1 ? Double(count) : 1.5, ticks: ticks)
    }

    /// log(1 + value) axis for non-negative amounts, with ticks at 0 and powers of ten.
    static func log1p(_ label: String, maximum: Double) -> Axis {
        let top = Foundation.log1p(max(maximum, 1))
        var ticks: [(position: Double, label: String)] = [(0, "0")]
        // log1p puts 0 and 1 close together; on a wide axis their labels would collide.
        var value = maximum >= 1000 ? 10.0 : 1.0
        while Foundation.log1p(value) <= top * 1.0001 {
            ticks.append((Foundation.log1p(value), formatTick(value, value)))
            value *= 10
        }
        return Axis(label: label, lower: 0, upper: max(top, Foundation.log1p(value / 10)), ticks: ticks,
                    transform: { Foundation.log1p(max($0, 0)) })
    }
}

/// The 1-2-5 step nearest above `raw`.
func niceStep(_ raw: Double) -> Double {
    guard raw.isFinite, raw > 0 else { return 1 }
    let magnitude = pow(10, (log10(raw)).rounded(.down))
    let fraction = raw / magnitude
    let nice: Double = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10
    return nice * magnitude
}

/// A tick label with as many decimals as the step needs; with steps of a thousand or more every
/// label is in thousands ("k"), so one axis never mixes "5000" and "10k".
func formatTick(_ value: Double, _ step: Double) -> String {
    if value == 0 { return "0" }
    if step >= 1000 {
        let decimals = max(0, -Int((log10(step / 1000)).rounded(.down)))
        return String(format: "%.\(decimals)fk", value / 1000)
    }
    let decimals = max(0, -Int((log10(step)).rounded(.down)))
    return String(format: "%.\(min(decimals, 6))f", value)
}

/// A named series of points for a line or scatter chart.
struct Series {
    var name: String
    /// Stable key written as `data-series`, so tests and readers can find the series.
    var key: String
    var points: [(x: Double, y: Double)]
    var color: String
    var dashed = false
}

/// The frame every chart shares: size, margins and the mapping from plotted units to pixels.
struct Frame {
    var width = 560.0
    var height = 340.0
    var left = 66.0
    var right = 18.0
    var top = 40.0
    var bottom = 50.0
    var x: Axis
    var y: Axis

    var plotWidth: Double { width - left - right }
    var plotHeight: Double { height - top - bottom }

    func px(x value: Double) -> Double {
        left + (x.transform(value) - x.lower) / (x.upper - x.lower) * plotWidth
    }

    func px(y value: Double) -> Double {
        top + plotHeight - (y.transform(value) - y.lower) / (y.upper - y.lower) * plotHeight
    }

    /// Opening tag, title, grid, ticks and axis labels.
    func open(id: String, title: String) -> String {
        var svg = "<svg id=\"\(escapeXML(id))\" class=\"chart\" xmlns=\"http://www.w3.org/2000/svg\" "
            + "viewBox=\"0 0 \(Int(width)) \(Int(height))\" width=\"\(Int(width))\" height=\"\(Int(height))\" "
            + "role=\"img\" aria-labelledby=\"\(escapeXML(id))-title\">\n"
        svg += "<title id=\"\(escapeXML(id))-title\">\(escapeXML(title))</title>\n"
        svg += "<text class=\"chart-title\" x=\"\(Reporting.px(left))\" y=\"22\">\(escapeXML(title))</text>\n"
        svg += "<rect class=\"plot\" x=\"\(Reporting.px(left))\" y=\"\(Reporting.px(top))\" width=\"\(Reporting.px(plotWidth))\" height=\"\(Reporting.px(plotHeight))\"/>\n"
        svg += "<g class=\"axis x-axis\">\n"
        for tick in x.ticks {
            let position = left + (tick.position - x.lower) / (x.upper - x.lower) * plotWidth
            svg += "<line class=\"gridline\" x1=\"\(Reporting.px(position))\" y1=\"\(Reporting.px(top))\" x2=\"\(Reporting.px(position))\" y2=\"\(Reporting.px(top + plotHeight))\"/>"
            svg += "<line class=\"tick\" x1=\"\(Reporting.px(position))\" y1=\"\(Reporting.px(top + plotHeight))\" x2=\"\(Reporting.px(position))\" y2=\"\(Reporting.px(top + plotHeight + 5))\"/>"
            svg += "<text class=\"tick-label\" x=\"\(Reporting.px(position))\" y=\"\(Reporting.px(top + plotHeight + 18))\" text-anchor=\"middle\">\(escapeXML(tick.label))</text>\n"
        }
        svg += "<text class=\"axis-label\" x=\"\(Reporting.px(left + plotWidth / 2))\" y=\"\(Reporting.px(height - 8))\" text-anchor=\"middle\">\(escapeXML(x.label))</text>\n</g>\n"
        svg += "<g class=\"axis y-axis\">\n"
        for tick in y.ticks {
            let position = top + plotHeight - (tick.position - y.lower) / (y.upper - y.lower) * plotHeight
            svg += "<line class=\"gridline\" x1=\"\(Reporting.px(left))\" y1=\"\(Reporting.px(position))\" x2=\"\(Reporting.px(left + plotWidth))\" y2=\"\(Reporting.px(position))\"/>"
            svg += "<line class=\"tick\" x1=\"\(Reporting.px(left - 5))\" y1=\"\(Reporting.px(position))\" x2=\"\(Reporting.px(left))\" y2=\"\(Reporting.px(position))\"/>"
            svg += "<text class=\"tick-label\" x=\"\(Reporting.px(left - 8))\" y=\"\(Reporting.px(position + 4))\" text-anchor=\"end\">\(escapeXML(tick.label))</text>\n"
        }
        let middle = top + plotHeight / 2
        svg += "<text class=\"axis-label\" transform=\"translate(16 \(Reporting.px(middle))) rotate(-90)\" text-anchor=\"middle\">\(escapeXML(y.label))</text>\n</g>\n"
        return svg
    }

    /// A legend in the corner of the plot that covers the fewest of `obstacles` (pixel
    /// positions of drawn data), preferring top right, then top left, bottom right, bottom left.
    func legend(_ entries: [(name: String, color: String, dashed: Bool)], avoiding obstacles: [(Double, Double)]) -> String {
        let rowHeight = 17.0
        let longest = entries.map { $0.name.count }.max() ?? 0
        let boxWidth = 34 + Double(longest) * 6.6
        let boxHeight = Double(entries.count) * rowHeight + 8
        let corners = [
            (left + plotWidth - boxWidth - 8, top + 8), (left + 8, top + 8),
            (left + plotWidth - boxWidth - 8, top + plotHeight - boxHeight - 8), (left + 8, top + plotHeight - boxHeight - 8),
        ]
        func covered(_ corner: (Double, Double)) -> Int {
            obstacles.filter { point in
                point.0 >= corner.0 - 4 && point.0 <= corner.0 + boxWidth + 4 && point.1 >= corner.1 - 4 && point.1 <= corner.1 + boxHeight + 4
            }.count
        }
        let counts = corners.map(covered)
        let best = counts.indices.min { counts[$0] < counts[$1] }!
        let (x0, y0) = corners[best]
        var svg = "<g class=\"legend\">\n<rect class=\"legend-box\" x=\"\(Reporting.px(x0))\" y=\"\(Reporting.px(y0))\" width=\"\(Reporting.px(boxWidth))\" height=\"\(Reporting.px(boxHeight))\"/>\n"
        for (index, entry) in entries.enumerated() {
            let y = y0 + 4 + rowHeight * (Double(index) + 0.5)
            let dash = entry.dashed ? " stroke-dasharray=\"5 4\"" : ""
            svg += "<line x1=\"\(Reporting.px(x0 + 8))\" y1=\"\(Reporting.px(y))\" x2=\"\(Reporting.px(x0 + 26))\" y2=\"\(Reporting.px(y))\" stroke=\"\(entry.color)\" stroke-width=\"2.5\"\(dash)/>"
            svg += "<text class=\"legend-label\" x=\"\(Reporting.px(x0 + 31))\" y=\"\(Reporting.px(y + 4))\">\(escapeXML(entry.name))</text>\n"
        }
        return svg + "</g>\n"
    }

    /// A series as a polyline (one point per data point) with a marker on each point when
    /// there are few, so a one-epoch series is still visible.
    func polyline(_ series: Series, markers: Bool) -> String {
        let points = series.points.map { "\(Reporting.px(px(x: $0.x))),\(Reporting.px(px(y: $0.y)))" }.joined(separator: " ")
        let dash = series.dashed ? " stroke-dasharray=\"6 4\"" : ""
        var svg = "<g class=\"series\" data-series=\"\(escapeXML(series.key))\">\n"
        svg += "<polyline fill=\"none\" stroke=\"\(series.color)\" stroke-width=\"2\"\(dash) points=\"\(points)\"/>\n"
        if markers {
            for point in series.points {
                svg += "<circle cx=\"\(Reporting.px(px(x: point.x)))\" cy=\"\(Reporting.px(px(y: point.y)))\" r=\"3\" fill=\"\(series.color)\"/>"
            }
            svg += "\n"
        }
        return svg + "</g>\n"
    }

    /// Ends of the y = x diagonal across the shared range of both axes, in pixels.
    var diagonalEnds: ((Double, Double), (Double, Double)) {
        let low = max(x.lower, y.lower), high = min(x.upper, y.upper)
        func at(_ value: Double) -> (Double, Double) {
            (left + (value - x.lower) / (x.upper - x.lower) * plotWidth, top + plotHeight - (value - y.lower) / (y.upper - y.lower) * plotHeight)
        }
        return (at(low), at(high))
    }

    /// The y = x diagonal across the shared range of both axes.
    func diagonal(label: String) -> String {
        let ((x1, y1), (x2, y2)) = diagonalEnds
        return "<line class=\"reference\" data-reference=\"\(escapeXML(label))\" x1=\"\(Reporting.px(x1))\" y1=\"\(Reporting.px(y1))\" x2=\"\(Reporting.px(x2))\" y2=\"\(Reporting.px(y2))\"/>\n"
    }
}

/// A line chart of one or more series sharing the axes; a legend when there are several.
func lineChart(id: String, title: String, x: Axis, y: Axis, series: [Series], diagonal: String? = nil) -> String {
    let frame = Frame(x: x, y: y)
    var svg = frame.open(id: id, title: title)
    if let diagonal { svg += frame.diagonal(label: diagonal) }
    for item in series where !item.points.isEmpty {
        svg += frame.polyline(item, markers: item.points.count <= 60)
    }
    var entries = series.filter { !$0.points.isEmpty }.map { (name: $0.name, color: $0.color, dashed: $0.dashed) }
    var obstacles = series.flatMap { traced(frame.pixels($0.points)) }
    if let diagonal {
        entries.append((name: diagonal, color: "#888888", dashed: true))
        obstacles += traced([frame.diagonalEnds.0, frame.diagonalEnds.1])
    }
    if entries.count > 1 { svg += frame.legend(entries, avoiding: obstacles) }
    return svg + "</svg>\n"
}

extension Frame {
    /// Data points in pixels.
    func pixels(_ points: [(x: Double, y: Double)]) -> [(Double, Double)] {
        points.map { (px(x: $0.x), px(y: $0.y)) }
    }
}

/// The points of a polyline plus eight along each segment, so a legend also avoids the lines
/// between distant points.
func traced(_ points: [(Double, Double)]) -> [(Double, Double)] {
    var out = points
    for (a, b) in zip(points, points.dropFirst()) {
        for step in 1..<8 {
            let t = Double(step) / 8
            out.append((a.0 + (b.0 - a.0) * t, a.1 + (b.1 - a.1) * t))
        }
    }
    return out
}

/// A chart that only says why it is empty, at the size of the others so the grid stays even.
func placeholderChart(id: String, title: String, message: String) -> String {
    "<svg id=\"\(escapeXML(id))\" class=\"chart empty\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 560 340\" width=\"560\" height=\"340\" role=\"img\">"
        + "<title>\(escapeXML(title))</title><text class=\"chart-title\" x=\"66\" y=\"22\">\(escapeXML(title))</text>"
        + "<rect class=\"plot\" x=\"66\" y=\"40\" width=\"476\" height=\"250\"/>"
        + "<text class=\"note-text\" x=\"304\" y=\"170\" text-anchor=\"middle\">\(escapeXML(message))</text></svg>\n"
}
