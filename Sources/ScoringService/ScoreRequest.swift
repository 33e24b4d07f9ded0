import Checkpoints
import CustomerData
import Foundation
import Scoring

/// A client mistake: answered with `status` and `{"error": message}`.
public struct ClientError: Error, Equatable, Sendable {
    public var status: Int
    public var message: String
    /// Sent as `Retry-After` (with 503: the service is busy, not broken).
    public var retryAfterSeconds: Int?
    /// nginx's status for a client that disconnected before its request was read: counted
    /// apart from the server's own failures (500) in `/metrics`.
    public static let clientClosedRequest = 499

    public init(_ status: Int = 400, _ message: String, retryAfterSeconds: Int? = nil) {
        self.status = status
        self.message = message
        self.retryAfterSeconds = retryAfterSeconds
    }
}

/// What the service enforces on a request before any of it reaches the model.
public struct RequestLimits: Sendable, Equatable {
    public var maxBodyBytes = 1 << 20
    public var maxCustomers = 1000
    /// Most customers in a request with `"explain": true`: each costs hundreds of forward passes.
    public var maxExplainedCustomers = 100
    public var maxEventsPerCustomer = 10_000
    public var maxIdentifierBytes = IdentifierRules.maximumBytes
    /// Event days and `as_of` outside this range are refused (the importer's default range).
    public var plausibleDays = CSVFormat.defaultPlausibleDays

    public init() {}
}

/// The model facts a request is checked against.
public struct ModelSummary: Sendable, Equatable {
    public var info: CheckpointInfo
    public var historyLength: Int
    public var featureCount: Int
    public var stageNames: [String]
    /// The same line batch scoring draws by default (`HighValueLine`).
    public var highValueLine: HighValueLine
    /// The GraphSAGE checkpoint giving stages, and the day its reference graph runs to.
    public var stageModel: CheckpointInfo?
    public var referenceAsOfDay: Int?
}

/// A validated `POST /v1/score` body.
public struct ScoreRequest: Sendable, Equatable {
    public enum Customer: Sendable, Equatable {
        case events(id: String, events: [CustomerEvent])
        /// Normalised model inputs, `length` rows of `featureCount` values.
        case features(id: String, rows: [Float], length: Int)

        public var id: String {
            switch self {
            case let .events(id, _), let .features(id, _, _): return id
            }
        }
    }

    public var customers: [Customer]
    /// The day features are computed as of; nil means today (UTC).
    public var asOfDay: Int?
    /// `"explain": true`: add reason codes to every score.
    public var explain: Bool

    public init(customers: [Customer], asOfDay: Int? = nil, explain: Bool = false) {
        self.customers = customers
        self.asOfDay = asOfDay
        self.explain = explain
    }

    /// Parses and checks a body, naming the first thing wrong and where it is.
    ///
    /// Unknown fields are refused rather than ignored: a misspelt `"ammount"` silently
    /// scoring zero spend is worse than an error.
    public static func parse(_ body: Data, limits: RequestLimits, model: ModelSummary) throws(ClientError) -> ScoreRequest {
        let root = try RequestJSON.parse(body)
        guard case let .object(members) = root else { throw ClientError(400, "the body must be a JSON object with a \"customers\" array") }
        try checkKeys(members, allowed: ["customers", "as_of", "explain"], at: "body")
        var explain = false
        if let value = members["explain"] {
            guard case let .bool(flag) = value else { throw ClientError(400, "explain: expected true or false") }
            explain = flag
        }
        var asOf: Int? = nil
        if let value = members["as_of"], value != .null { asOf = try plausible(try day(value, at: "as_of"), at: "as_of", limits: limits) }
        guard let customersValue = members["customers"] else { throw ClientError(400, "body: \"customers\" is required") }
        guard case let .array(items) = customersValue else { throw ClientError(400, "customers: expected an array") }
        guard !items.isEmpty else { throw ClientError(400, "customers: must not be empty") }
        guard items.count <= limits.maxCustomers else {
            throw ClientError(413, "customers: \(items.count) customers in one request, the limit is \(limits.maxCustomers)")
        }
        guard !explain || items.count <= limits.maxExplainedCustomers else {
            throw ClientError(413, "customers: \(items.count) customers with \"explain\": true, the limit is \(limits.maxExplainedCustomers) (send more without \"explain\", or in several requests)")
        }
        var customers: [Customer] = []
        customers.reserveCapacity(items.count)
        var seen = Set<String>()
        for (index, item) in items.enumerated() {
            let at = "customers[\(index)]"
            let customer = try parseCustomer(item, at: at, limits: limits, model: model)
            guard seen.insert(customer.id).inserted else {
                throw ClientError(400, "\(at).customer_id: \"\(customer.id)\" appears more than once in this request")
            }
            customers.append(customer)
        }
        return ScoreRequest(customers: customers, asOfDay: asOf, explain: explain)
    }

    private static func parseCustomer(_ value: JSONValue, at: String, limits: RequestLimits, model: ModelSummary) throws(ClientError) -> Customer {
        guard case let .object(members) = value else { throw ClientError(400, "\(at): expected an object") }
        try checkKeys(members, allowed: ["customer_id", "events", "features", "length"], at: at)
        let id = try identifier(members["customer_id"], at: "\(at).customer_id", required: true, limits: limits)!
        switch (members["events"], members["features"]) {
        case (.some, .some):
            throw ClientError(400, "\(at): give either \"events\" or \"features\", not both")
        case (nil, nil):
            throw ClientError(400, "\(at): needs \"events\" (purchases) or \"features\" (model inputs per period)")
        case let (.some(eventsValue), nil):
            if members["length"] != nil { throw ClientError(400, "\(at).length: only applies with \"features\"") }
            guard case let .array(items) = eventsValue else { throw ClientError(400, "\(at).events: expected an array") }
            guard !items.isEmpty else { throw ClientError(400, "\(at).events: must not be empty") }
            guard items.count <= limits.maxEventsPerCustomer else {
                throw ClientError(413, "\(at).events: \(items.count) events, the limit is \(limits.maxEventsPerCustomer) per customer")
            }
            var events: [CustomerEvent] = []
            events.reserveCapacity(items.count)
            for (k, item) in items.enumerated() {
                events.append(try parseEvent(item, customer: id, at: "\(at).events[\(k)]", limits: limits))
            }
            return .events(id: id, events: events)
        case let (nil, .some(featuresValue)):
            guard case let .array(rows) = featuresValue else { throw ClientError(400, "\(at).features: expected an array of rows") }
            guard !rows.isEmpty else { throw ClientError(400, "\(at).features: must have at least one row") }
            guard rows.count <= model.historyLength else {
                throw ClientError(400, "\(at).features: \(rows.count) rows, the model reads at most \(model.historyLength) periods")
            }
            var flat: [Float] = []
            flat.reserveCapacity(rows.count * model.featureCount)
            for (t, row) in rows.enumerated() {
                guard case let .array(values) = row else { throw ClientError(400, "\(at).features[\(t)]: expected an array of \(model.featureCount) numbers") }
                guard values.count == model.featureCount else {
                    throw ClientError(400, "\(at).features[\(t)]: \(values.count) values, the model reads \(model.featureCount) per period")
                }
                for (f, number) in values.enumerated() {
                    let x = try finiteNumber(number, at: "\(at).features[\(t)][\(f)]")
                    // A float32 overflow would reach the model as infinity.
                    guard abs(x) <= Double(Float.greatestFiniteMagnitude) else {
                        throw ClientError(400, "\(at).features[\(t)][\(f)]: \(x) does not fit a 32-bit float")
                    }
                    flat.append(Float(x))
                }
            }
            var length = rows.count
            if let lengthValue = members["length"] {
                let given = try finiteNumber(lengthValue, at: "\(at).length")
                guard given == given.rounded(), given >= 1, given <= Double(rows.count) else {
                    throw ClientError(400, "\(at).length: must be a whole number from 1 to the \(rows.count) rows given, got \(given)")
                }
                length = Int(given)
            }
            return .features(id: id, rows: flat, length: length)
        }
    }

    private static func parseEvent(_ value: JSONValue, customer: String, at: String, limits: RequestLimits) throws(ClientError) -> CustomerEvent {
        guard case let .object(members) = value else { throw ClientError(400, "\(at): expected an object") }
        try checkKeys(members, allowed: ["date", "day", "amount", "quantity", "product_id", "order_id"], at: at)
        let eventDay: Int
        switch (members["date"], members["day"]) {
        case (.some, .some): throw ClientError(400, "\(at): give either \"date\" or \"day\", not both")
        case (nil, nil): throw ClientError(400, "\(at): needs \"date\" (YYYY-MM-DD) or \"day\" (a day number)")
        case let (.some(date), nil):
            guard case let .string(text) = date else { throw ClientError(400, "\(at).date: expected a string YYYY-MM-DD") }
            eventDay = try parseDate(text, at: "\(at).date")
        case let (nil, .some(number)):
            eventDay = try wholeDay(number, at: "\(at).day")
        }
        _ = try plausible(eventDay, at: members["date"] != nil ? "\(at).date" : "\(at).day", limits: limits)
        guard let amountValue = members["amount"] else { throw ClientError(400, "\(at): \"amount\" is required") }
        let amount = try finiteNumber(amountValue, at: "\(at).amount")
        // The importer's limit: larger values could overflow its fixed-point sums.
        guard abs(amount) <= 1e11 else { throw ClientError(400, "\(at).amount: \(amount) is beyond the ±1e11 accepted") }
        // The importer's rule too: the model never saw a negative amount in training.
        guard amount >= 0 else { throw ClientError(400, "\(at).amount: \(amount) is negative (returns are not supported)") }
        var quantity = 1.0
        if let quantityValue = members["quantity"] {
            quantity = try finiteNumber(quantityValue, at: "\(at).quantity")
            guard abs(quantity) <= 1e11 else { throw ClientError(400, "\(at).quantity: \(quantity) is beyond the ±1e11 accepted") }
            guard quantity >= 0 else { throw ClientError(400, "\(at).quantity: \(quantity) is negative") }
        }
        let product = try identifier(members["product_id"], at: "\(at).product_id", required: false, limits: limits)
        let order = try identifier(members["order_id"], at: "\(at).order_id", required: false, limits: limits)
        return CustomerEvent(customerID: customer, day: eventDay, amount: amount, quantity: quantity, productID: product, orderID: order)
    }

    private static func checkKeys(_ members: [String: JSONValue], allowed: Set<String>, at: String) throws(ClientError) {
        if let unknown = members.keys.sorted().first(where: { !allowed.contains($0) }) {
            throw ClientError(400, "\(at): unknown field \"\(unknown)\"; expected \(allowed.sorted().map { "\"\($0)\"" }.joined(separator: ", "))")
        }
    }

    private static func identifier(_ value: JSONValue?, at: String, required: Bool, limits: RequestLimits) throws(ClientError) -> String? {
        guard let value, value != .null else {
            if required { throw ClientError(400, "\(at): is required") }
            return nil
        }
        // Only strings: a number has no one text form ("00001" in the data is 1 in JSON), and the
        // importer reads ids as the text they are.
        guard case let .string(text) = value else {
            throw ClientError(400, "\(at): expected a string (send numeric ids as text, exactly as in the data)")
        }
        guard !text.isEmpty || !required else { throw ClientError(400, "\(at): must not be empty") }
        guard text.utf8.count <= limits.maxIdentifierBytes else {
            throw ClientError(400, "\(at): \(text.utf8.count) bytes, the limit is \(limits.maxIdentifierBytes)")
        }
        if let problem = IdentifierRules.problem(text) { throw ClientError(400, "\(at): \(problem)") }
        return text
    }

    private static func finiteNumber(_ value: JSONValue, at: String) throws(ClientError) -> Double {
        switch value {
        case let .number(number):
            guard number.isFinite else { throw ClientError(400, "\(at): must be a finite number") }
            return number
        // The checkpoint coder spells non-finite numbers as strings; say what is wrong with them.
        case let .string(text) where ["nan", "infinity", "-infinity", "inf", "-inf"].contains(text.lowercased()):
            throw ClientError(400, "\(at): must be a finite number, got \"\(text)\"")
        default:
            throw ClientError(400, "\(at): expected a number")
        }
    }

    private static func wholeDay(_ value: JSONValue, at: String) throws(ClientError) -> Int {
        let number = try finiteNumber(value, at: at)
        guard number == number.rounded(), abs(number) <= 10_000_000 else {
            throw ClientError(400, "\(at): expected a whole day number, got \(number)")
        }
        return Int(number)
    }

    private static func day(_ value: JSONValue, at: String) throws(ClientError) -> Int {
        switch value {
        case let .string(text): return try parseDate(text, at: at)
        case .number: return try wholeDay(value, at: at)
        default: throw ClientError(400, "\(at): expected a date string YYYY-MM-DD or a day number")
        }
    }

    private static func plausible(_ day: Int, at: String, limits: RequestLimits) throws(ClientError) -> Int {
        guard limits.plausibleDays.contains(day) else {
            throw ClientError(400, "\(at): \(ByteParsing.isoDate(day)) (day \(day)) is outside the accepted dates \(ByteParsing.isoDate(limits.plausibleDays.lowerBound)) to \(ByteParsing.isoDate(limits.plausibleDays.upperBound))")
        }
        return day
    }

    /// Whether a `Content-Type` is JSON: the media type exactly `application/json` (any case),
    /// with no parameter but `charset=utf-8`; `application/jsonx` or a Latin-1 charset is not.
    public static func isJSONContentType(_ value: String) -> Bool {
        let parts = value.split(separator: ";", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces).lowercased() }
        guard parts[0] == "application/json" else { return false }
        return parts.dropFirst().allSatisfy { parameter in
            let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
            return pair.count == 2 && pair[0] == "charset" && (pair[1] == "utf-8" || pair[1] == "\"utf-8\"")
        }
    }

    private static func parseDate(_ text: String, at: String) throws(ClientError) -> Int {
        var copy = text
        let parsed: Int? = copy.withUTF8 { bytes in
            guard let base = bytes.baseAddress, bytes.count == 10 else { return nil }
            return ByteParsing.parseISO(base, bytes.count)
        }
        guard let parsed else { throw ClientError(400, "\(at): \"\(text)\" is not a date YYYY-MM-DD") }
        return parsed
    }
}
