import ArgumentParser
import CustomerData

/// The event-file flags of `clm-data inspect`, `clm-data import` and `clm-score batch`, declared once so the tools
/// spell and explain them alike; `EventFileOptions` decides what they mean.
public struct EventFileArguments: ParsableArguments {
    @Option(help: "Input layout.") public var preset: Preset = .canonical
    @Option(help: "Customer id column (header name, or 1-based position).") public var customerCol: String?
    @Option(help: "Time column (name or position).") public var timeCol: String?
    @Option(help: "Time format (auto picks it from the first rows).") public var timeFormat: TimeFormat = .auto
    @Option(help: "Amount (spend) column (name or position).") public var amountCol: String?
    @Option(help: "Quantity column (name or position); default 1 per row.") public var quantityCol: String?
    @Option(help: "Product id column (name or position): the customer-product graph's edges.") public var productCol: String?
    @Option(help: "Order id column: rows of one order count as one transaction.") public var orderCol: String?
    @Option(help: "Event type column: only purchase/order/transaction/sale rows count.") public var eventTypeCol: String?
    @Option(help: "Field delimiter (one character, or 'tab').") public var delimiter: String = ","
    @Flag(help: "Fields are separated by runs of spaces or tabs.") public var whitespace = false
    @Flag(help: "The file has no header line (columns by position).") public var noHeader = false

    public init() {}

    /// Whether any of these flags was given: a tool whose event file is optional (`serve
    /// --graph-events`) refuses them without the file, instead of ignoring them.
    public var anyGiven: Bool {
        preset != .canonical || timeFormat != .auto || delimiter != "," || whitespace || noHeader
            || [customerCol, timeCol, amountCol, quantityCol, productCol, orderCol, eventTypeCol].contains { $0 != nil }
    }

    /// The checked options; a bad combination throws `DataError.invalidOption` naming the flag.
    public func options() throws -> EventFileOptions {
        try EventFileOptions(
            preset: preset, timeFormat: timeFormat, delimiter: delimiter, whitespace: whitespace, noHeader: noHeader,
            customerCol: customerCol, timeCol: timeCol, amountCol: amountCol, quantityCol: quantityCol,
            productCol: productCol, orderCol: orderCol, eventTypeCol: eventTypeCol)
    }
}

// Enums as arguments: `--help` lists their values, and a misspelt one fails while parsing.
extension Preset: ExpressibleByArgument {}
extension TimeFormat: ExpressibleByArgument {}
