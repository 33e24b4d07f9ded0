import Checkpoints
import Foundation
import Models
import Yams

/// Everything a training job needs to know, read by the coordinator from a YAML file (keys in
/// snake_case, documented in cluster/README.md) and broadcast to every rank as JSON.
public struct TrainingConfiguration: Codable, Sendable, Equatable {
    /// How the learning rate grows with the number of ranks (the global batch grows with it).
    public enum LearningRateScaling: String, Codable, Sendable { case none, linear, sqrt }

    public struct LSTMSettings: Codable, Sendable, Equatable {
        public var hidden = 50
        public var layers = 2
        public var dropout: Float = 0.2
        /// Positive-class weight of the churn loss (PyTorch's pos_weight); nil = 1, which keeps
        /// the predicted probabilities calibrated.
        public var positiveWeight: Float? = nil
        public var clvWeight: Float = 1
        /// `ziln` (expected spend from a zero-inflated lognormal) or `log_mse` (squared error on
        /// log1p spend); see `CLVLoss`.
        public var clvLoss: CLVLoss = .ziln
        /// Train a lifecycle-stage head beside churn and CLV (class-weighted cross-entropy), so
        /// data sets without products get stages from a model.
        public var stageHead = true
        public var stageWeight: Float = 0.5
        /// Units of a dense path from customer-level inputs (the last step, per-feature means and
        /// the length; see `CustomerInputs`) to the heads; 0 leaves it out.
        public var customerUnits = 0

        enum CodingKeys: String, CodingKey, CaseIterable {
            case hidden, layers, dropout
            case positiveWeight = "positive_weight"
            case clvWeight = "clv_weight"
            case clvLoss = "clv_loss"
            case stageHead = "stage_head"
            case stageWeight = "stage_weight"
            case customerUnits = "customer_units"
        }

        public init(hidden: Int = 50, layers: Int = 2, dropout: Float = 0.2, positiveWeight: Float? = nil, clvWeight: Float = 1,
                    clvLoss: CLVLoss = .ziln, stageHead: Bool = true, stageWeight: Float = 0.5) {
            self.hidden = hidden
            self.layers = layers
            self.dropout = dropout
            self.positiveWeight = positiveWeight
            self.clvWeight = clvWeight
            self.clvLoss = clvLoss
            self.stageHead = stageHead
            self.stageWeight = stageWeight
        }

        // Keys left out of the file keep their defaults.
        public init(from decoder: Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let defaults = LSTMSettings()
            hidden = try container.decodeIfPresent(Int.self, forKey: .hidden) ?? defaults.hidden
            layers = try container.decodeIfPresent(Int.self, forKey: .layers) ?? defaults.layers
            dropout = try container.decodeIfPresent(Float.self, forKey: .dropout) ?? defaults.dropout
            positiveWeight = try container.decodeIfPresent(Float.self, forKey: .positiveWeight)
            clvWeight = try container.decodeIfPresent(Float.self, forKey: .clvWeight) ?? defaults.clvWeight
            clvLoss = try container.decodeIfPresent(CLVLoss.self, forKey: .clvLoss) ?? defaults.clvLoss
            stageHead = try container.decodeIfPresent(Bool.self, forKey: .stageHead) ?? defaults.stageHead
            stageWeight = try container.decodeIfPresent(Float.self, forKey: .stageWeight) ?? defaults.stageWeight
            customerUnits = try container.decodeIfPresent(Int.self, forKey: .customerUnits) ?? defaults.customerUnits
        }
    }

    public struct GNNSettings: Codable, Sendable, Equatable {
        public var hidden = 64
        public var layers = 2
        public var dropout: Float = 0.2
        /// Neighbours sampled per hop, nearest hop first (PyG's num_neighbors).
        public var fanouts = [10, 5]
        /// Weigh classes by inverse frequency in the training split.
        public var balanceClasses = true
        /// Also train the no-graph ablation (every neighbour input zero, the same budget) and
        /// report it beside the model, with bootstrap intervals.
        public var ablation = true

        enum CodingKeys: String, CodingKey, CaseIterable {
            case hidden, layers, dropout, fanouts, ablation
            case balanceClasses = "balance_classes"
        }

        public init() {}

        public init(from decoder: Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let defaults = GNNSettings()
            hidden = try container.decodeIfPresent(Int.self, forKey: .hidden) ?? defaults.hidden
            layers = try container.decodeIfPresent(Int.self, forKey: .layers) ?? defaults.layers
            dropout = try container.decodeIfPresent(Float.self, forKey: .dropout) ?? defaults.dropout
            fanouts = try container.decodeIfPresent([Int].self, forKey: .fanouts) ?? defaults.fanouts
            balanceClasses = try container.decodeIfPresent(Bool.self, forKey: .balanceClasses) ?? defaults.balanceClasses
            ablation = try container.decodeIfPresent(Bool.self, forKey: .ablation) ?? defaults.ablation
        }
    }

    public struct EarlyStopping: Codable, Sendable, Equatable {
        /// A validation metric name as written in the metrics log (e.g. `val_auc`, `val_loss`).
        public var metric = "val_loss"
        /// Epochs without improvement before stopping; 0 turns early stopping off.
        public var patience = 0
        public var minDelta: Double = 0

        enum CodingKeys: String, CodingKey, CaseIterable {
            case metric, patience
            case minDelta = "min_delta"
        }

        public init() {}

        public init(from decoder: Decoder) throws {
            let container = try decoder.container(keyedBy: CodingKeys.self)
            let defaults = EarlyStopping()
            metric = try container.decodeIfPresent(String.self, forKey: .metric) ?? defaults.metric
            patience = try container.decodeIfPresent(Int.self, forKey: .patience) ?? defaults.patience
            minDelta = try container.decodeIfPresent(Double.self, forKey: .minDelta) ?? defaults.minDelta
        }
    }

    public var model: ModelKind = .lstm
    /// Dataset directory written by `clm-data import` (shared storage, same path on every host).
    public var data = ""
    /// Root of the checkpoint store (shared storage); checkpoints go to `<checkpoints>/<run>/`.
    public var checkpoints = "runs/checkpoints"
    public var run = "run"
    public var epochs = 10
    /// Allow at least this many optimizer steps (raising the epochs), and do not stop early
    /// before them while the early-stopping metric has not improved since its first
    /// validation: a small data set gives a handful of steps per epoch, and a patience counted
    /// in epochs would otherwise end the run before the model has learnt anything. Once the
    /// metric has improved, patience stops the run as usual (`DataParallelTrainer.earlyStop`).
    public var minSteps = 300
    /// Customers per rank per step; the global batch is this times the number of ranks.
    public var batchSize = 64
    public var learningRate: Float = 0.002
    public var learningRateScaling: LearningRateScaling = .sqrt
    public var warmupSteps = 0
    /// How the rate falls after warm-up; a name the schedule does not know fails the load.
    public var decay: LearningRateSchedule.Decay = .cosine
    /// Global gradient norm limit; 0 turns clipping off.
    public var clipNorm: Float = 1
    public var weightDecay: Float = 0
    public var seed: UInt64 = 42
    /// Write a checkpoint every this many epochs (and at the end).
    public var checkpointEveryEpochs = 1
    /// Also write one every this many steps inside an epoch; 0 = only at epoch ends.
    public var checkpointEverySteps = 0
    public var keepCheckpoints = 3
    public var validateEveryEpochs = 1
    public var earlyStopping = EarlyStopping()
    /// Compare a parameter checksum across ranks every this many steps.
    public var checksumEverySteps = 50
    /// A collective that has not completed after this many seconds ends the job.
    public var watchdogSeconds: Double = 120
    /// Start the gradient all-reduce of finished layers while earlier layers still run backward.
    public var overlapAllreduce = false
    public var lstm = LSTMSettings()
    public var gnn = GNNSettings()

    public init() {}

    enum CodingKeys: String, CodingKey, CaseIterable {
        case model, data, checkpoints, run, epochs, seed, decay, lstm, gnn
        case minSteps = "min_steps"
        case batchSize = "batch_size"
        case learningRate = "learning_rate"
        case learningRateScaling = "learning_rate_scaling"
        case warmupSteps = "warmup_steps"
        case clipNorm = "clip_norm"
        case weightDecay = "weight_decay"
        case checkpointEveryEpochs = "checkpoint_every_epochs"
        case checkpointEverySteps = "checkpoint_every_steps"
        case keepCheckpoints = "keep_checkpoints"
        case validateEveryEpochs = "validate_every_epochs"
        case earlyStopping = "early_stopping"
        case checksumEverySteps = "checksum_every_steps"
        case watchdogSeconds = "watchdog_seconds"
        case overlapAllreduce = "overlap_allreduce"
    }

    /// Keys allowed in each section: a misspelt key is an error, not a silently ignored line.
    static let knownKeys: [String: Set<String>] = [
        "": Set(CodingKeys.allCases.map(\.rawValue)),
        "lstm": Set(LSTMSettings.CodingKeys.allCases.map(\.rawValue)),
        "gnn": Set(GNNSettings.CodingKeys.allCases.map(\.rawValue)),
        "early_stopping": Set(EarlyStopping.CodingKeys.allCases.map(\.rawValue)),
    ]

    public init(from decoder: Decoder) throws {
        let container = try decoder.container(keyedBy: CodingKeys.self)
        let defaults = TrainingConfiguration()
        func value<T: Decodable>(_ key: CodingKeys, _ fallback: T) throws -> T {
            try container.decodeIfPresent(T.self, forKey: key) ?? fallback
        }
        model = try value(.model, defaults.model)
        data = try value(.data, defaults.data)
        checkpoints = try value(.checkpoints, defaults.checkpoints)
        run = try value(.run, defaults.run)
        epochs = try value(.epochs, defaults.epochs)
        minSteps = try value(.minSteps, defaults.minSteps)
        batchSize = try value(.batchSize, defaults.batchSize)
        learningRate = try value(.learningRate, defaults.learningRate)
        learningRateScaling = try value(.learningRateScaling, defaults.learningRateScaling)
        warmupSteps = try value(.warmupSteps, defaults.warmupSteps)
        let decayName = try value(.decay, defaults.decay.rawValue)
        guard let decay = LearningRateSchedule.Decay(rawValue: decayName) else {
            let names = LearningRateSchedule.Decay.allCases.map(\.rawValue)
            throw ConfigurationError.invalidValue(
                key: "decay", message: "must be \(names.dropLast().joined(separator: ", ")) or \(names.last!), not '\(decayName)'")
        }
        self.decay = decay
        clipNorm = try value(.clipNorm, defaults.clipNorm)
        weightDecay = try value(.weightDecay, defaults.weightDecay)
        seed = try value(.seed, defaults.seed)
        checkpointEveryEpochs = try value(.checkpointEveryEpochs, defaults.checkpointEveryEpochs)
        checkpointEverySteps = try value(.checkpointEverySteps, defaults.checkpointEverySteps)
        keepCheckpoints = try value(.keepCheckpoints, defaults.keepCheckpoints)
        validateEveryEpochs = try value(.validateEveryEpochs, defaults.validateEveryEpochs)
        earlyStopping = try value(.earlyStopping, defaults.earlyStopping)
        checksumEverySteps = try value(.checksumEverySteps, defaults.checksumEverySteps)
        watchdogSeconds = try value(.watchdogSeconds, defaults.watchdogSeconds)
        overlapAllreduce = try value(.overlapAllreduce, defaults.overlapAllreduce)
        lstm = try value(.lstm, defaults.lstm)
        gnn = try value(.gnn, defaults.gnn)
    }

    /// Checks values that decode but make no sense, naming the key.
    public func validate() throws {
        func require(_ condition: Bool, _ key: String, _ message: String) throws {
            if !condition { throw ConfigurationError.invalidValue(key: key, message: message) }
        }
        try require(!data.isEmpty, "data", "is required: the dataset directory written by clm-data import")
        try require(!run.isEmpty && !run.contains("/"), "run", "must be a non-empty name without '/'")
        try require(epochs >= 1, "epochs", "must be at least 1")
        try require(minSteps >= 0, "min_steps", "must not be negative")
        try require(lstm.clvWeight >= 0 && lstm.clvWeight.isFinite, "lstm.clv_weight", "must be a non-negative number")
        try require(lstm.customerUnits >= 0 && lstm.customerUnits <= 4096, "lstm.customer_units", "must be between 0 (off) and 4096")
        try require(lstm.stageWeight >= 0 && lstm.stageWeight.isFinite, "lstm.stage_weight", "must be a non-negative number")
        try require(batchSize >= 1, "batch_size", "must be at least 1")
        try require(learningRate > 0 && learningRate.isFinite, "learning_rate", "must be a positive number")
        try require(clipNorm >= 0, "clip_norm", "must be 0 (off) or positive")
        try require(keepCheckpoints >= 1, "keep_checkpoints", "must be at least 1")
        try require(checkpointEveryEpochs >= 1, "checkpoint_every_epochs", "must be at least 1")
        try require(validateEveryEpochs >= 1, "validate_every_epochs", "must be at least 1")
        try require(watchdogSeconds > 0, "watchdog_seconds", "must be positive")
        try require(lstm.hidden >= 1 && lstm.layers >= 1, "lstm", "hidden and layers must be at least 1")
        try require(lstm.dropout >= 0 && lstm.dropout < 1, "lstm.dropout", "must be in [0, 1)")
        try require(gnn.hidden >= 1 && gnn.layers >= 1, "gnn", "hidden and layers must be at least 1")
        try require(gnn.fanouts.count == gnn.layers && gnn.fanouts.allSatisfy { $0 > 0 },
                    "gnn.fanouts", "needs one positive fan-out per layer (\(gnn.layers))")
        try require(gnn.dropout >= 0 && gnn.dropout < 1, "gnn.dropout", "must be in [0, 1)")
    }

    /// Reads a YAML file, applies `overrides` ("key=value", dotted keys for sections) and validates.
    public static func load(yamlFile path: String, overrides: [String] = []) throws -> TrainingConfiguration {
        let text: String
        do {
            text = try String(contentsOfFile: path, encoding: .utf8)
        } catch {
            throw ConfigurationError.unreadable(path: path, reason: error.localizedDescription)
        }
        return try parse(yaml: text, source: path, overrides: overrides)
    }

    public static func parse(yaml text: String, source: String = "configuration", overrides: [String] = []) throws -> TrainingConfiguration {
        let loaded: Any?
        do {
            loaded = try Yams.load(yaml: text)
        } catch {
            throw ConfigurationError.malformed(source: source, reason: "\(error)")
        }
        var tree = loaded as? [String: Any] ?? [:]
        if loaded != nil && !(loaded is [String: Any]) {
            throw ConfigurationError.malformed(source: source, reason: "the top level must be a mapping of keys to values")
        }
        // The file's keys first, then each override's, so an error names where the key came from.
        try checkKeys(tree, section: "", source: source)
        for override in overrides {
            try applyOverride(override, to: &tree)
        }
        try checkKeys(tree, section: "", source: "\(source) with --set")
        let configuration: TrainingConfiguration
        do {
            let normalised = try Yams.dump(object: tree)
            configuration = try YAMLDecoder().decode(TrainingConfiguration.self, from: normalised)
        } catch let error as DecodingError {
            // A value its key cannot take is refused while decoding, naming the key; the YAML
            // decoder hands that error on wrapped.
            if case .dataCorrupted(let context) = error, let refused = context.underlyingError as? ConfigurationError {
                throw refused
            }
            throw ConfigurationError.malformed(source: source, reason: describe(error))
        }
        try configuration.validate()
        return configuration
    }

    private static func checkKeys(_ tree: [String: Any], section: String, source: String) throws {
        let allowed = knownKeys[section] ?? []
        for (key, value) in tree {
            let path = section.isEmpty ? key : "\(section).\(key)"
            guard allowed.contains(key) else {
                throw ConfigurationError.unknownKey(key: path, source: source,
                                                    known: allowed.sorted().joined(separator: ", "))
            }
            if let nested = value as? [String: Any] {
                guard knownKeys[key] != nil, section.isEmpty else {
                    throw ConfigurationError.invalidValue(key: path, message: "must be a single value, not a mapping")
                }
                try checkKeys(nested, section: key, source: source)
            }
        }
    }

    private static func applyOverride(_ override: String, to tree: inout [String: Any]) throws {
        guard let equals = override.firstIndex(of: "=") else {
            throw ConfigurationError.malformedOverride(override)
        }
        let key = String(override[..<equals]).trimmingCharacters(in: .whitespaces)
        let rawValue = String(override[override.index(after: equals)...])
        // The value is parsed as YAML, so numbers, booleans and lists keep their types.
        let value = (try? Yams.load(yaml: rawValue)).flatMap { $0 } ?? rawValue
        let parts = key.split(separator: ".").map(String.init)
        let source = "--set \(override)"
        if let section = parts.first, parts.count <= 2 {
            let allowed = knownKeys[""] ?? []
            guard allowed.contains(section) else {
                throw ConfigurationError.unknownKey(key: section, source: source, known: allowed.sorted().joined(separator: ", "))
            }
            if parts.count == 2 {
                guard let sectionKeys = knownKeys[section] else {
                    throw ConfigurationError.invalidValue(key: key, message: "'\(section)' is a single value, not a section (\(source))")
                }
                guard sectionKeys.contains(parts[1]) else {
                    throw ConfigurationError.unknownKey(key: key, source: source, known: sectionKeys.sorted().joined(separator: ", "))
                }
            }
        }
        switch parts.count {
        case 1:
            tree[parts[0]] = value
        case 2:
            var section = tree[parts[0]] as? [String: Any] ?? [:]
            section[parts[1]] = value
            tree[parts[0]] = section
        default:
            throw ConfigurationError.malformedOverride(override)
        }
    }

    private static func describe(_ error: DecodingError) -> String {
        func path(_ context: DecodingError.Context) -> String {
            context.codingPath.map(\.stringValue).joined(separator: ".")
        }
        switch error {
        case .typeMismatch(_, let context), .valueNotFound(_, let context), .dataCorrupted(let context):
            return "\(path(context)): \(context.debugDescription)"
        case .keyNotFound(let key, let context):
            return "\(path(context)): missing \(key.stringValue)"
        @unknown default:
            return "\(error)"
        }
    }

    /// The JSON every rank receives; sorted keys so its hash is the same everywhere.
    public func canonicalJSON() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys]
        return try encoder.encode(self)
    }
}

public enum ConfigurationError: Error, CustomStringConvertible, Equatable {
    case unreadable(path: String, reason: String)
    case malformed(source: String, reason: String)
    case unknownKey(key: String, source: String, known: String)
    case invalidValue(key: String, message: String)
    case malformedOverride(String)

    public var description: String {
        switch self {
        case .unreadable(let path, let reason): return "cannot read configuration \(path): \(reason)"
        case .malformed(let source, let reason): return "\(source): \(reason)"
        case .unknownKey(let key, let source, let known): return "\(source): unknown key '\(key)' (known here: \(known))"
        case .invalidValue(let key, let message): return "configuration key '\(key)' \(message)"
        case .malformedOverride(let text): return "override '\(text)' is not key=value (sections as section.key=value)"
        }
    }
}
