/// Mergeable confusion matrix for multi-class metrics: accuracy, per-class and macro F1.
///
/// Classes are the integers `0..<classCount`. The matrix has one row per true class and one
/// column per predicted class.
///
/// Per-class F1 follows the rule of `BinaryClassificationState.f1`: 2·TP / (2·TP + FP + FN),
/// undefined only when TP + FP + FN = 0, i.e. when the class appears neither in the truth nor in
/// the predictions. Macro-F1 averages the defined per-class values and excludes the others, as
/// scikit-learn's `f1_score(average="macro")` does when its labels come from the data (the union
/// of true and predicted classes). A class that is predicted but never true, or true but never
/// predicted, is included with F1 = 0. So declaring more classes than the data uses does not
/// change macro-F1.
///
/// Packed layout (classCount² values): the matrix, row-major (true class major).
public struct MulticlassState: MergeableMetricState {
    /// Number of classes; the matrix is `classCount × classCount`.
    public let classCount: Int
    /// Row-major counts: `counts[trueClass * classCount + predictedClass]`.
    private var counts: [Int]

    /// An empty state for `classCount` ≥ 1 classes.
    public init(classCount: Int) {
        precondition(classCount >= 1, "MulticlassState: classCount \(classCount) must be at least 1")
        self.classCount = classCount
        self.counts = [Int](repeating: 0, count: classCount * classCount)
    }

    /// Rebuilds a state from `packed` (e.g. after a sum all-reduce); the class count is the square
    /// root of its length. `nil` when the length is not a positive square or a value is not a
    /// non-negative integer.
    public init?(packed: [Double]) {
        var classCount = 0
        while (classCount + 1) * (classCount + 1) <= packed.count { classCount += 1 }
        guard classCount >= 1, classCount * classCount == packed.count else { return nil }
        var counts = [Int]()
        counts.reserveCapacity(packed.count)
        for value in packed {
            guard let count = countFromPacked(value) else { return nil }
            counts.append(count)
        }
        self.classCount = classCount
        self.counts = counts
    }

    /// Records one prediction; both classes must be in `0..<classCount`.
    public mutating func add(trueClass: Int, predictedClass: Int) {
        precondition(
            (0..<classCount).contains(trueClass) && (0..<classCount).contains(predictedClass),
            "MulticlassState: class \(trueClass) or \(predictedClass) is outside 0..<\(classCount)"
        )
        counts[trueClass * classCount + predictedClass] += 1
    }

    /// Records one prediction per true class; the counts must match.
    public mutating func add(trueClasses: [Int], predictedClasses: [Int]) {
        precondition(
            trueClasses.count == predictedClasses.count,
            "MulticlassState: \(trueClasses.count) true classes but \(predictedClasses.count) predictions"
        )
        for index in trueClasses.indices {
            add(trueClass: trueClasses[index], predictedClass: predictedClasses[index])
        }
    }

    /// Adds `other`'s observations; the class counts must be equal.
    public mutating func merge(_ other: MulticlassState) {
        precondition(
            classCount == other.classCount,
            "MulticlassState: cannot merge \(other.classCount) classes into \(classCount)"
        )
        for index in counts.indices {
            counts[index] += other.counts[index]
        }
    }

    public var packed: [Double] { counts.map(Double.init) }

    public func rebuilt(fromPacked packed: [Double]) -> MulticlassState? {
        guard packed.count == counts.count else { return nil }
        return MulticlassState(packed: packed)
    }

    /// Number of observations whose true class is `trueClass` and predicted class `predictedClass`.
    public func count(trueClass: Int, predictedClass: Int) -> Int {
        precondition(
            (0..<classCount).contains(trueClass) && (0..<classCount).contains(predictedClass),
            "MulticlassState: class \(trueClass) or \(predictedClass) is outside 0..<\(classCount)"
        )
        return counts[trueClass * classCount + predictedClass]
    }

    /// The confusion matrix: `confusionMatrix[trueClass][predictedClass]`.
    public var confusionMatrix: [[Int]] {
        (0..<classCount).map { row in Array(counts[row * classCount..<(row + 1) * classCount]) }
    }

    /// Number of observations.
    public var count: Int { counts.reduce(0, +) }

    /// Fraction of observations predicted as their true class; `nil` without observations.
    public var accuracy: Double? {
        var correct = 0
        for diagonal in 0..<classCount { correct += counts[diagonal * classCount + diagonal] }
        return ratio(correct, count)
    }

    /// F1 of each class against the rest; `nil` for a class absent from truth and predictions.
    public var perClassF1: [Double?] {
        (0..<classCount).map { cls in
            let truePositives = counts[cls * classCount + cls]
            var actual = 0
            var predicted = 0
            for other in 0..<classCount {
                actual += counts[cls * classCount + other]
                predicted += counts[other * classCount + cls]
            }
            // 2·TP + FP + FN = actual + predicted, where actual = TP + FN and predicted = TP + FP.
            return ratio(2 * truePositives, actual + predicted)
        }
    }

    /// Mean of the defined per-class F1 values; `nil` without observations.
    ///
    /// Classes absent from both truth and predictions are excluded (see the type's documentation).
    public var macroF1: Double? {
        var sum = 0.0
        var included = 0
        for case let f1? in perClassF1 {
            sum += f1
            included += 1
        }
        return included == 0 ? nil : sum / Double(included)
    }
}
