import CustomerData
import Foundation

/// Which customers' expected spends the high-value line is drawn from when the rules set no
/// `high_value_amount`.
public enum HighValueSource: String, Sendable, CaseIterable {
    /// The training customers', as the model scored them when the checkpoint was written
    /// (`drift.json`): one line for every scored population, so batch scoring and the service
    /// give the same action for the same scores.
    case training
    /// The customers being scored (batch only): the top fraction of this file, wherever its
    /// spends lie. A request to the service has no population to rank, so it cannot do this.
    case scored
}

/// The expected spend at or above which a customer is high value, and where it came from.
public struct HighValueLine: Sendable, Equatable {
    public var amount: Double
    /// Said after the amount wherever it is printed (`high value expected spend >= 41.70 (…)`).
    public var origin: String

    public init(amount: Double, origin: String) {
        self.amount = amount
        self.origin = origin
    }

    /// The line of `source`: `high_value_amount` when the rules set one; else the top
    /// `high_value_top_fraction` of the training customers' spends stored in the checkpoint, or,
    /// for `.scored`, `scoredLine()` over the `scoredCustomers` being scored (called only then:
    /// across ranks it is a collective).
    ///
    /// A checkpoint written before the training spends were stored falls back to the training
    /// dataset's mean horizon spend, and the origin says so: the action is still the same in
    /// batch and service, but the line is not the top fraction.
    public static func of(
        _ source: HighValueSource, rules: ScoringRules, model: ScoringModel,
        scoredCustomers: Int, scoredLine: () throws -> Double
    ) rethrows -> HighValueLine {
        if let amount = rules.highValueAmount { return HighValueLine(amount: amount, origin: "high_value_amount in the rules") }
        let top = "top \(percent(rules.highValueTopFraction))"
        switch source {
        case .scored:
            return HighValueLine(amount: try scoredLine(),
                                 origin: "the \(top) of the \(scoredCustomers) scored customers, --high-value-from scored")
        case .training:
            if let spends = model.drift?.trainingSpends, !spends.isEmpty {
                return HighValueLine(amount: rules.highValueLine(betweenStoredSpends: spends),
                                     origin: "the \(top) of \(spends.count) training customers, stored in the checkpoint")
            }
            return HighValueLine(
                amount: model.dataset.labels.meanHorizonSpend,
                origin: "the training data's mean horizon spend: this checkpoint stores no training customers' spends (written by an older build), so the \(top) line cannot be drawn; retrain, or set high_value_amount in the rules")
        }
    }

    /// The line from the checkpoint (or the rules' amount): what the service always uses.
    public static func fromCheckpoint(rules: ScoringRules, model: ScoringModel) -> HighValueLine {
        of(.training, rules: rules, model: model, scoredCustomers: 0) { .infinity }
    }

    static func percent(_ fraction: Double) -> String {
        let value = fraction * 100
        return (value == value.rounded() ? String(Int(value)) : String(format: "%.1f", value)) + "%"
    }
}
