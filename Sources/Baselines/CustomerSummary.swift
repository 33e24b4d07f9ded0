/// One customer's purchase history in the form the BG/NBD and Gamma-Gamma models take.
///
/// Times are in whole periods (say weeks) counted from the customer's first purchase, as in
/// lifetimes' `summary_data_from_transaction_data`: a customer first seen in period 0 and last
/// seen buying again in period 9 of a 12-period window has recency 9 and age 12.
public struct CustomerSummary: Sendable, Equatable, Codable {
    /// Repeat purchase periods: periods after the first with at least one purchase (x).
    public var frequency: Double
    /// Period of the last repeat purchase, 0 without any (t_x).
    public var recency: Double
    /// Periods from the first purchase to the end of observation (T in the literature).
    public var age: Double
    /// Mean spend of the repeat purchase periods, 0 if `frequency` is 0 (m).
    public var monetaryValue: Double

    public init(frequency: Double, recency: Double, age: Double, monetaryValue: Double = 0) {
        self.frequency = frequency
        self.recency = recency
        self.age = age
        self.monetaryValue = monetaryValue
    }
}

/// A baseline was given input it cannot use, or its fit failed; `message` says which and why.
public struct BaselineError: Error, Equatable, CustomStringConvertible {
    public let message: String

    public init(_ message: String) {
        self.message = message
    }

    public var description: String { message }
}

extension CustomerSummary {
    /// Throws unless every summary is one lifetimes' `_check_inputs` would accept for BG/NBD.
    static func validateHistories(_ customers: [CustomerSummary], model: String, allowEmpty: Bool = false) throws {
        guard allowEmpty || !customers.isEmpty else {
            throw BaselineError("\(model): no customers to fit (the summary is empty)")
        }
        for (index, customer) in customers.enumerated() {
            for (name, value) in [("frequency", customer.frequency), ("recency", customer.recency), ("age", customer.age)]
            where !value.isFinite {
                throw BaselineError("\(model): customer \(index) has \(name) \(value); every value must be finite")
            }
            if customer.frequency < 0 || customer.frequency != customer.frequency.rounded() {
                throw BaselineError("\(model): customer \(index) has frequency \(customer.frequency); it counts repeat purchase periods, a whole number ≥ 0")
            }
            if customer.recency < 0 || customer.recency > customer.age {
                throw BaselineError("\(model): customer \(index) has recency \(customer.recency) outside [0, age \(customer.age)]")
            }
            if customer.frequency == 0 && customer.recency != 0 {
                throw BaselineError("\(model): customer \(index) has no repeat purchases but recency \(customer.recency); it must be 0")
            }
        }
    }
}
