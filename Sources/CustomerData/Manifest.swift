import Foundation

/// One binary or text file of a dataset, as recorded in the manifest.
public struct DatasetFile: Codable, Sendable, Equatable {
    public var name: String
    public var bytes: Int
    /// Format 1: the `ContentHasher` value of the whole file, 16 hex digits. Format 2: the
    /// hash of `parts` (`combinedHash`).
    public var contentHash: String
    /// `f32`, `i32`, `i64`, `u8` or `text`.
    public var dtype: String
    public var shape: [Int]
    /// Format 2: the file's parts in order (`DatasetPartLayout`), each hashed on its own.
    public var parts: [Part]?

    public init(name: String, bytes: Int, contentHash: String, dtype: String, shape: [Int], parts: [Part]? = nil) {
        self.name = name
        self.bytes = bytes
        self.contentHash = contentHash
        self.dtype = dtype
        self.shape = shape
        self.parts = parts
    }
}

/// Everything a reader needs to interpret and verify a dataset directory.
public struct DatasetManifest: Codable, Sendable, Equatable {
    /// 2: files hashed in parts of `rowsPerPart` rows. 1 (still read): whole-file hashes.
    public static let currentFormatVersion = 2
    public static let readableFormatVersions = 1...2

    public struct Source: Codable, Sendable, Equatable {
        public var preset: String
        public var input: String
        /// The time format the input was read with (after `auto` was resolved).
        public var timeFormat: String
        /// True when days are calendar days since 1970-01-01; false for relative day numbers.
        public var calendarDays: Bool
        /// What the amount column means for this source (e.g. items standing in for spend).
        public var amountMeaning: String
    }

    public struct Counts: Codable, Sendable, Equatable {
        public var rows: Int
        public var imported: Int
        public var rejected: Int
        public var skippedNonPurchase: Int
        public var blankLines: Int
        public var headerLines: Int
        public var eventsInHistory: Int
        public var eventsInHorizon: Int
        public var eventsAfterHorizon: Int
        public var customersSeen: Int
        /// Customers in the dataset: those with a purchase on or before the cut-off.
        public var customers: Int
        public var customersWithoutHistory: Int
        public var products: Int
    }

    public struct Labels: Codable, Sendable, Equatable {
        public var churnRate: Double
        public var stageCounts: [Int]
        public var meanHorizonSpend: Double
    }

    public struct Split: Codable, Sendable, Equatable {
        public var seed: UInt64
        /// Train, validation, test.
        public var fractions: [Double]
        public var sizes: [Int]
        /// True when no customer hashed into train and statistics were fitted on all customers.
        public var statisticsFittedOnAllCustomers: Bool
    }

    public struct Graph: Codable, Sendable, Equatable {
        public var customerNodes: Int
        public var productNodes: Int
        /// Entries of the symmetric CSR: twice the number of customer–product pairs.
        public var directedEdges: Int
        public var nodeFeatureNames: [String]
        public var customerFeatureMean: [Double]
        public var customerFeatureStd: [Double]
        public var productFeatureMean: [Double]
        public var productFeatureStd: [Double]

        /// Why these statistics cannot z-score the node features this program computes, or nil.
        public var unusableForScoring: String? {
            guard nodeFeatureNames == CustomerData.nodeFeatureNames else {
                return "the graph statistics describe node features \(nodeFeatureNames), this program computes \(CustomerData.nodeFeatureNames)"
            }
            guard customerFeatureMean.count == 5, customerFeatureStd.count == 5,
                  productFeatureMean.count == 3, productFeatureStd.count == 3 else {
                return "the graph statistics have \(customerFeatureMean.count) customer and \(productFeatureMean.count) product columns, not 5 and 3"
            }
            guard (customerFeatureStd + productFeatureStd).allSatisfy({ $0.isFinite && $0 > 1e-9 && $0 < 1e9 }),
                  (customerFeatureMean + productFeatureMean).allSatisfy({ $0.isFinite && abs($0) < 1e9 }) else {
                return "the graph statistics hold non-finite or out-of-range values, or a vanishing deviation"
            }
            return nil
        }
    }

    /// The training examples an import added at earlier cut-offs (`--snapshots K --snapshot-every P`).
    ///
    /// Each earlier cut-off `c − j·P` periods (j = 1…K−1) is a dataset of its own in the
    /// subdirectory `directory`: the same window and horizon lengths, the main cut-off's
    /// normalisation, and only the customers of the main dataset's training split who had bought
    /// by that cut-off. Validation and test customers exist at the main cut-off only, so the
    /// held-out comparison is the same for every K; the graph is built at the main cut-off only.
    public struct Snapshots: Codable, Sendable, Equatable {
        public struct Entry: Codable, Sendable, Equatable {
            public var directory: String
            public var cutoffDay: Int
            public var cutoffDate: String?
            public var customers: Int
            public var fingerprint: String

            init(_ manifest: DatasetManifest, directory: String) {
                self.directory = directory
                cutoffDay = manifest.spec.cutoffDay
                cutoffDate = manifest.cutoffDate
                customers = manifest.counts.customers
                fingerprint = manifest.fingerprint
            }
        }
        /// K: cut-offs in all, the main one included.
        public var count: Int
        /// P: periods between consecutive cut-offs.
        public var everyPeriods: Int
        /// The earlier cut-offs, latest first.
        public var datasets: [Entry]

        /// The subdirectory of the j-th earlier cut-off (j = 1 is P periods before the main one).
        public static func directoryName(_ j: Int) -> String { "snapshot-\(j)" }

        /// Training examples added by the earlier cut-offs.
        public var customers: Int { datasets.reduce(0) { $0 + $1.customers } }
    }

    public var formatVersion: Int
    public var source: Source
    public var counts: Counts
    public var spec: FeatureSpec
    /// ISO dates of the cut-off, the first history day and the last horizon day (calendar sources only).
    public var cutoffDate: String?
    public var historyStartDate: String?
    public var horizonEndDate: String?
    public var featureNames: [String]
    public var normalisation: FeatureNormalisation
    public var stageNames: [String]
    public var labels: Labels
    public var split: Split
    public var graph: Graph?
    /// Earlier cut-offs whose training customers add examples (`--snapshots`); nil for one cut-off.
    public var snapshots: Snapshots?
    public var files: [DatasetFile]
    /// Rows (customers, or graph nodes) per part of every file; nil in format 1.
    public var rowsPerPart: Int?
    /// Hash over the files' sizes and hashes and every field that changes how they are read.
    public var fingerprint: String

    /// Recomputes the fingerprint from the other fields.
    public func computeFingerprint() -> String {
        var hasher = ContentHasher(seed: UInt64(formatVersion))
        func add(_ text: String) { hasher.update(text + "\u{1F}") }
        func add(_ values: [Double]) { for v in values { add(String(v.bitPattern, radix: 16)) } }
        add("spec"); add("\(spec.periodDays) \(spec.historyPeriods) \(spec.cutoffDay) \(spec.horizonDays) \(spec.stageThresholds)")
        add("features"); for name in featureNames { add(name) }
        add("normalisation"); add(normalisation.mean); add(normalisation.std)
        add("stages"); for name in stageNames { add(name) }
        add("counts"); add("\(counts.customers) \(counts.products) \(counts.imported) \(counts.rejected)")
        add("split"); add("\(split.seed) \(split.sizes)"); add(split.fractions)
        if let graph {
            add("graph"); add("\(graph.customerNodes) \(graph.productNodes) \(graph.directedEdges)")
            for name in graph.nodeFeatureNames { add(name) }
        }
        if let rowsPerPart { add("parts \(rowsPerPart)") }
        if let snapshots {
            add("snapshots \(snapshots.count) \(snapshots.everyPeriods)")
            for entry in snapshots.datasets { add("\(entry.directory) \(entry.cutoffDay) \(entry.customers) \(entry.fingerprint)") }
        }
        add("files")
        for file in files.sorted(by: { $0.name < $1.name }) {
            add("\(file.name) \(file.bytes) \(file.contentHash) \(file.dtype) \(file.shape)")
        }
        return ContentHasher.hex(hasher.finalize())
    }

    /// Where each file's parts begin; nil in format 1.
    public var partLayout: DatasetPartLayout? {
        rowsPerPart.map { DatasetPartLayout(rowsPerPart: $0, customers: counts.customers, products: graph?.productNodes ?? 0) }
    }

    func encoded() throws -> Data {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try encoder.encode(self)
    }
}

// MARK: Labels a model can learn from

extension DatasetManifest {
    /// A stage with fewer customers than this gets a warning: its share of the test split
    /// (15% by default) is then two or three customers, too few to measure the stage by.
    public static let smallStageCustomers = 20

    /// Why the churn labels give a model nothing to learn, or nil: every customer churned, or
    /// none did.
    public var constantChurnProblem: String? {
        guard counts.customers > 0, labels.churnRate == 0 || labels.churnRate == 1 else { return nil }
        let window = horizonEndDate.map { "from the cut-off \(cutoffDate!) to \($0)" } ?? "in the \(spec.horizonDays)-day horizon"
        return labels.churnRate == 1
            ? "every one of the \(counts.customers) customers churned (no purchase \(window)): the horizon probably runs past the data; `clm-data inspect EVENTS` shows its dates and suggests a cut-off and horizon"
            : "none of the \(counts.customers) customers churned (each bought \(window)): choose a longer --horizon or other dates; `clm-data inspect EVENTS` suggests them"
    }

    /// Why the stage labels give a model nothing to learn, or nil: every customer is in one stage.
    public var constantStageProblem: String? {
        guard counts.customers > 0, let full = labels.stageCounts.firstIndex(of: counts.customers) else { return nil }
        return "every one of the \(counts.customers) customers is in stage '\(stageNames[full])': choose other --stage-thresholds, a cut-off or a horizon"
    }

    /// What an import warns about: labels that are all the same, and stages with fewer than
    /// `smallStageCustomers` customers.
    public var labelWarnings: [String] {
        var warnings = [constantChurnProblem, constantStageProblem].compactMap { $0 }
        if constantStageProblem == nil {
            for (name, count) in zip(stageNames, labels.stageCounts) where count < Self.smallStageCustomers {
                warnings.append("stage '\(name)' has \(count) customer\(count == 1 ? "" : "s"), fewer than \(Self.smallStageCustomers): its test split holds too few to measure it by; consider other --stage-thresholds")
            }
        }
        return warnings
    }
}
