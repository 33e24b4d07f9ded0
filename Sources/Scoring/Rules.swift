import Foundation
import Yams

/// Thresholds that turn scores into a lifecycle stage (when no graph model gives one) and a
/// next action. Read from a YAML or JSON file with snake_case keys; a missing key keeps its
/// default, an unknown key is an error.
///
/// Actions, first match wins:
/// 1. churn ≥ `high_churn` and high value → `retention_offer`
/// 2. churn ≥ `high_churn` and not high value → `winback_email`
/// 3. high value (and so low risk) → `upsell`
/// 4. history ≤ `new_customer_max_periods` periods → `onboarding`
/// 5. otherwise → `nurture`
///
/// High value means expected spend ≥ `high_value_amount` when it is set; otherwise the spend of
/// the top `high_value_top_fraction` of the training customers, as the checkpoint stores them
/// (`HighValueLine`), in batch scoring and the service alike.
///
/// Stages come from a model: the GraphSAGE checkpoint where one is given, else the LSTM's stage
/// head. The stage rule applies when `stage_rule: true` asks for it or the checkpoint has no
/// stage head (trained with `lstm.stage_head: false`): churned when churn ≥ `churned_stage_probability`; else
/// loyal when high value, regular when expected spend ≥ `regular_spend_fraction` × the
/// high-value line, otherwise occasional. Its stage probabilities put the churn probability on
/// `churned` and the rest on the active stage the rule picked: a rule's verdict, not a model's
/// distribution over the active stages.
public struct ScoringRules: Codable, Sendable, Equatable {
    public var highChurn: Double = 0.6
    public var highValueTopFraction: Double = 0.2
    public var highValueAmount: Double? = nil
    public var newCustomerMaxPeriods: Int = 4
    public var churnedStageProbability: Double = 0.5
    public var regularSpendFraction: Double = 0.25
    /// Take stages from the rule even when a model (GraphSAGE or the LSTM's stage head) gives them.
    public var stageRule = false

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case highChurn = "high_churn"
        case highValueTopFraction = "high_value_top_fraction"
        case highValueAmount = "high_value_amount"
        case newCustomerMaxPeriods = "new_customer_max_periods"
        case churnedStageProbability = "churned_stage_probability"
        case regularSpendFraction = "regular_spend_fraction"
        case stageRule = "stage_rule"
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = ScoringRules()
        highChurn = try container.decodeIfPresent(Double.self, forKey: .highChurn) ?? defaults.highChurn
        highValueTopFraction = try container.decodeIfPresent(Double.self, forKey: .highValueTopFraction) ?? defaults.highValueTopFraction
        highValueAmount = try container.decodeIfPresent(Double.self, forKey: .highValueAmount)
        newCustomerMaxPeriods = try container.decodeIfPresent(Int.self, forKey: .newCustomerMaxPeriods) ?? defaults.newCustomerMaxPeriods
        churnedStageProbability = try container.decodeIfPresent(Double.self, forKey: .churnedStageProbability) ?? defaults.churnedStageProbability
        regularSpendFraction = try container.decodeIfPresent(Double.self, forKey: .regularSpendFraction) ?? defaults.regularSpendFraction
        stageRule = try container.decodeIfPresent(Bool.self, forKey: .stageRule) ?? defaults.stageRule
    }

    /// Reads rules from YAML (JSON is YAML too), naming the key of any unknown or bad value.
    public static func parse(_ text: String, source: String) throws -> ScoringRules {
        let node: Any?
        do {
            node = try Yams.load(yaml: text)
        } catch {
            throw ScoringError.invalidInput("\(source): not YAML or JSON: \(error)")
        }
        guard let node else { return ScoringRules() }
        guard let mapping = node as? [String: Any] else {
            throw ScoringError.invalidInput("\(source): expected a mapping of rule names to values")
        }
        let known = Set(CodingKeys.allCases.map(\.rawValue))
        if let unknown = mapping.keys.sorted().first(where: { !known.contains($0) }) {
            throw ScoringError.invalidInput("\(source): unknown key '\(unknown)'; known keys: \(known.sorted().joined(separator: ", "))")
        }
        let rules: ScoringRules
        do {
            rules = try YAMLDecoder().decode(ScoringRules.self, from: text)
        } catch let DecodingError.typeMismatch(_, context), let DecodingError.valueNotFound(_, context) {
            throw ScoringError.invalidInput("\(source): '\(context.codingPath.map(\.stringValue).joined(separator: "."))' has the wrong type: \(context.debugDescription)")
        } catch {
            throw ScoringError.invalidInput("\(source): \(error)")
        }
        try rules.validate(source: source)
        return rules
    }

    public static func load(path: String) throws -> ScoringRules {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw ScoringError.io(path: path, reason: "cannot read the rules file")
        }
        return try parse(String(decoding: data, as: UTF8.self), source: path)
    }

    /// Checks ranges; the message names the key.
    public func validate(source: String = "rules") throws {
        func require(_ ok: Bool, _ key: CodingKeys, _ message: String) throws {
            if !ok { throw ScoringError.invalidInput("\(source): \(key.rawValue) \(message)") }
        }
        try require((0...1).contains(highChurn), .highChurn, "must be a probability between 0 and 1, got \(highChurn)")
        try require(highValueTopFraction > 0 && highValueTopFraction <= 1, .highValueTopFraction, "must be in (0, 1], got \(highValueTopFraction)")
        if let highValueAmount {
            try require(highValueAmount.isFinite && highValueAmount >= 0, .highValueAmount, "must be a non-negative amount, got \(highValueAmount)")
        }
        try require(newCustomerMaxPeriods >= 0, .newCustomerMaxPeriods, "must not be negative, got \(newCustomerMaxPeriods)")
        try require((0...1).contains(churnedStageProbability), .churnedStageProbability, "must be a probability between 0 and 1, got \(churnedStageProbability)")
        try require(regularSpendFraction >= 0 && regularSpendFraction <= 1, .regularSpendFraction, "must be between 0 and 1, got \(regularSpendFraction)")
    }

    /// The expected spend at or above which the top `highValueTopFraction` of `spends` lies.
    public func highValueLine(spends: [Float]) -> Double {
        if let highValueAmount { return highValueAmount }
        guard !spends.isEmpty else { return .infinity }
        let sorted = spends.sorted(by: >)
        return Double(sorted[highValueRank(of: sorted.count) - 1])
    }

    /// The line drawn from the training customers' stored spends: halfway between the last
    /// customer inside the top fraction and the first outside it. Those customers are often
    /// scored again, and one sitting exactly on the line would change action with the last bit
    /// of its spend (another kernel, another summation order); halfway, none sits on it.
    public func highValueLine(betweenStoredSpends spends: [Float]) -> Double {
        if let highValueAmount { return highValueAmount }
        guard !spends.isEmpty else { return .infinity }
        let sorted = spends.sorted(by: >)
        let inside = highValueRank(of: sorted.count)
        guard inside < sorted.count else { return Double(sorted[inside - 1]) }
        return (Double(sorted[inside - 1]) + Double(sorted[inside])) / 2
    }

    /// How many of `customers` are high value: the top fraction, at least one, at most all.
    public func highValueRank(of customers: Int) -> Int {
        min(customers, max(1, Int((Double(customers) * highValueTopFraction).rounded(.up))))
    }

    /// The next action for one customer.
    public func action(churnProbability: Double, expectedSpend: Double, historyPeriods: Int, highValueLine: Double) -> String {
        let risky = churnProbability >= highChurn
        let valuable = expectedSpend >= highValueLine
        switch (risky, valuable) {
        case (true, true): return "retention_offer"
        case (true, false): return "winback_email"
        case (false, true): return "upsell"
        case (false, false): return historyPeriods <= newCustomerMaxPeriods ? "onboarding" : "nurture"
        }
    }

    /// The rule stage and its probabilities, in `stageNames` order (churned first).
    public func ruleStage(churnProbability: Double, expectedSpend: Double, highValueLine: Double) -> (index: Int, probabilities: [Double]) {
        let active: Int
        if expectedSpend >= highValueLine {
            active = 3
        } else if expectedSpend >= regularSpendFraction * highValueLine {
            active = 2
        } else {
            active = 1
        }
        var probabilities = [churnProbability, 0, 0, 0]
        probabilities[active] = 1 - churnProbability
        return (churnProbability >= churnedStageProbability ? 0 : active, probabilities)
    }
}
