/// A metric's partial state that ranks can combine, directly or through a sum all-reduce.
///
/// Every conforming state holds only sums (counts, sums of losses or errors), so combining the
/// states of several ranks is element-wise addition: `merge(_:)` adds another state, and
/// `packed` flattens the sums to a `[Double]` whose length depends only on the configuration
/// (threshold, class count, bin count), never on the data. A caller can therefore sum-all-reduce
/// the packed arrays of all ranks and rebuild the combined state on every rank:
///
/// ```swift
/// var buffer = local.packed
/// try world.allreduce(&buffer, op: .sum)
/// let global = local.rebuilt(fromPacked: buffer)!
/// ```
///
/// Counts travel as `Double`, which represents every integer up to 2⁵³ exactly, so summed counts
/// are exact; summed losses can differ from a single-process sum in the last bits because the
/// additions happen in a different order.
///
/// Merging states with different configurations is a programming error and stops the process
/// with a precondition failure; rebuilding from a packed array of the wrong length or with
/// values that cannot be counts returns `nil`.
public protocol MergeableMetricState: Sendable, Equatable {
    /// Adds the observations summarised by `other` to this state.
    mutating func merge(_ other: Self)
    /// The state's sums, flattened; the length depends only on the configuration.
    var packed: [Double] { get }
    /// A state with this state's configuration and the sums in `packed`, or `nil` when `packed`
    /// does not fit this configuration or holds values that are not valid sums.
    func rebuilt(fromPacked packed: [Double]) -> Self?
}

extension MergeableMetricState {
    /// This state combined with `other`, leaving both unchanged.
    public func merging(_ other: Self) -> Self {
        var combined = self
        combined.merge(other)
        return combined
    }
}

/// Reads a packed value that must be a count: finite, non-negative, integral and within `Int`.
@inline(__always)
func countFromPacked(_ value: Double) -> Int? {
    // 2⁶³ itself is exactly representable but does not fit in Int, hence the strict bound.
    guard value.isFinite, value >= 0, value < 9_223_372_036_854_775_808.0,
          value.rounded(.towardZero) == value else { return nil }
    return Int(value)
}

/// Reads a packed value that must be a sum of non-negative terms (a loss or an error).
@inline(__always)
func sumFromPacked(_ value: Double) -> Double? {
    guard value.isFinite, value >= 0 else { return nil }
    return value
}
