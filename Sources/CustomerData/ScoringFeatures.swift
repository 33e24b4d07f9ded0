/// One purchase as a scoring caller has it (already parsed, no CSV involved).
public struct CustomerEvent: Sendable, Equatable {
    public var customerID: String
    /// Day number in the dataset's convention (days since 1970-01-01 for calendar sources).
    public var day: Int
    public var amount: Double
    public var quantity: Double
    public var productID: String?
    /// Lines sharing an order id (and arriving together) count as one transaction.
    public var orderID: String?

    public init(customerID: String, day: Int, amount: Double, quantity: Double = 1, productID: String? = nil, orderID: String? = nil) {
        self.customerID = customerID
        self.day = day
        self.amount = amount
        self.quantity = quantity
        self.productID = productID
        self.orderID = orderID
    }
}

/// Normalised feature sequences for a set of customers, laid out like `features.f32`.
public struct FeatureSequences: Sendable, Equatable {
    /// Customers with at least one purchase on or before the as-of day, in dataset order.
    public var customerIDs: [String]
    public var historyLength: Int
    public var featureCount: Int
    /// [customerIDs.count, historyLength, featureCount].
    public var features: [Float]
    public var lengths: [Int32]

    /// The [T, F] rows of the customer at `index`.
    public func sequence(of index: Int) -> ArraySlice<Float> {
        let size = historyLength * featureCount
        return features[index * size ..< (index + 1) * size]
    }
}

/// Computes the features a model trained on a dataset expects, for customers as of `asOf`.
///
/// Uses the same aggregation and feature code as the importer with the history window ending
/// on `asOf` (inclusive) and no labels; events after `asOf` are ignored. With `asOf` equal to
/// the dataset's cut-off and the same events, the result equals the stored features exactly.
/// Customers without a purchase on or before `asOf` are left out (a model has nothing to read).
public func scoringFeatures<Events: Sequence<CustomerEvent>>(
    events: Events, asOf: Int, spec: FeatureSpec, normalisation: FeatureNormalisation
) -> FeatureSequences {
    let aggregates = windowAggregates(events: events, asOf: asOf, spec: spec)
    let order = aggregates.datasetOrder()
    let periods = spec.historyPeriods, width = customerFeatureNames.count
    var features = [Float](repeating: 0, count: order.count * periods * width)
    var lengths = [Int32](repeating: 0, count: order.count)
    features.withUnsafeMutableBufferPointer { buffer in
        for (position, c) in order.enumerated() {
            let row = buffer.baseAddress! + position * periods * width
            let length = aggregates.rawFeatures(Int(c), into: row)
            normalisation.apply(row, length: length, width: width)
            lengths[position] = Int32(length)
        }
    }
    return FeatureSequences(customerIDs: order.map { aggregates.customerIDString(Int($0)) }, historyLength: periods,
                            featureCount: width, features: features, lengths: lengths)
}

/// The customer–product graph of `events` up to `asOf` with node features z-scored by a trained
/// dataset's `statistics`; `customerIDs[i]` is customer node i. Nil when no event names a product.
public func scoringGraph<Events: Sequence<CustomerEvent>>(
    events: Events, asOf: Int, spec: FeatureSpec, statistics: DatasetManifest.Graph
) -> (graph: CustomerProductGraph, customerIDs: [String])? {
    let aggregates = windowAggregates(events: events, asOf: asOf, spec: spec)
    guard aggregates.products.count > 0 else { return nil }
    let order = aggregates.datasetOrder()
    let graph = buildCustomerProductGraph(aggregates: aggregates, order: order, statistics: statistics).0
    return (graph, order.map { aggregates.customerIDString(Int($0)) })
}

/// Per-customer aggregates of `events` in `spec`'s window moved to end on `asOf`.
private func windowAggregates<Events: Sequence<CustomerEvent>>(events: Events, asOf: Int, spec: FeatureSpec) -> CustomerAggregates {
    var windowSpec = spec
    windowSpec.cutoffDay = asOf
    windowSpec.horizonDays = 0
    let aggregates = CustomerAggregates(spec: windowSpec)
    // Values the importer would reject are left out rather than allowed to overflow a sum.
    for event in events where event.day <= asOf && event.amount.isFinite && abs(event.amount) <= FixedPoint.limit
        && event.quantity.isFinite && abs(event.quantity) <= FixedPoint.limit {
        var customer = event.customerID
        var product = event.productID ?? ""
        let orderHash: UInt64 = event.orderID.map { id in withBytesOf(id) { hashIdentifier($0, $1) } | 1 } ?? 0
        customer.withUTF8 { customerBytes in
            product.withUTF8 { productBytes in
                aggregates.consume(RawEvent(
                    customer: UnsafeRawBufferPointer(customerBytes), day: event.day, amount: event.amount,
                    quantity: event.quantity, product: UnsafeRawBufferPointer(productBytes), orderHash: orderHash))
            }
        }
    }
    return aggregates
}

/// `scoringFeatures` with the spec and statistics stored in a dataset's manifest.
public func scoringFeatures<Events: Sequence<CustomerEvent>>(
    events: Events, asOf: Int, manifest: DatasetManifest
) -> FeatureSequences {
    scoringFeatures(events: events, asOf: asOf, spec: manifest.spec, normalisation: manifest.normalisation)
}
