/// How a fit's sums over customers reach the fit: as they are in one process; added up over
/// every rank's customers in a data-parallel one.
///
/// The likelihoods, gradients and Hessians of the baselines are sums over customers, so each
/// rank sums its own and `sum` combines them. Every rank then holds the same totals and runs
/// the same optimiser steps, so the fit is identical on every rank and equal to the
/// one-process fit up to the order of the additions.
public struct CustomerSums: Sendable {
    /// Element-wise totals of `values` over every rank (the same count on each).
    public let sum: @Sendable ([Double]) throws -> [Double]
    /// Element-wise maxima over every rank.
    public let maximum: @Sendable ([Double]) throws -> [Double]

    public init(sum: @escaping @Sendable ([Double]) throws -> [Double],
                maximum: @escaping @Sendable ([Double]) throws -> [Double]) {
        self.sum = sum
        self.maximum = maximum
    }

    /// One process holds every customer.
    public static let oneProcess = CustomerSums(sum: { $0 }, maximum: { $0 })

    /// Runs `check` on this rank's customers and fails on every rank if it failed on any, so no
    /// rank waits in a later sum for one that gave up.
    func agree(_ model: String, _ check: () throws -> Void) throws {
        var failure: Error? = nil
        do { try check() } catch { failure = error }
        let failures = try sum([failure == nil ? 0 : 1])[0]
        if let failure { throw failure }
        if failures > 0 {
            throw BaselineError("\(model): another rank's customers could not be used (its error says why)")
        }
    }
}
