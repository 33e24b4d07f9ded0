import Checkpoints
import Collectives
import DistributedMetrics
import Foundation
import ModelMetrics
import RunFiles
import Tensors

/// This rank's rows of the customers the graph model evaluated: dataset row, true stage,
/// predicted stage, then one probability per stage. They feed the comparisons that need the
/// customers themselves (bootstrap intervals, paired differences) and the predictions file.
public struct StageEvaluationRows: Sendable {
    let values: [Float]
    let classCount: Int
    var width: Int { 3 + classCount }
    var count: Int { values.count / width }
    var datasetRows: [Int] { stride(from: 0, to: values.count, by: width).map { Int(values[$0]) } }
    var truth: [Int] { stride(from: 1, to: values.count, by: width).map { Int(values[$0]) } }
    var predicted: [Int] { stride(from: 2, to: values.count, by: width).map { Int(values[$0]) } }

    static func pack(_ probabilities: [Float], shard: LocalShard, classCount: Int) -> [Float] {
        let width = 3 + classCount
        var rows = [Float](repeating: 0, count: shard.count * width)
        for index in 0..<shard.count {
            let base = index * width
            let customer = probabilities[index * classCount..<(index + 1) * classCount]
            rows[base] = Float(shard.datasetRows[index])
            rows[base + 1] = Float(shard.stages[index])
            rows[base + 2] = Float(customer.indices.max { customer[$0] < customer[$1] }! - index * classCount)
            for (offset, probability) in customer.enumerated() { rows[base + 3 + offset] = probability }
        }
        return rows
    }
}

/// One row per evaluated customer of the LSTM, as floats (dataset rows and stages are below
/// 2²⁴, exact in a float): dataset row, churn label, spend, stage, churn probability, expected
/// spend, CLV loss, ZILN purchase probability (−1 without ZILN), then one probability per
/// stage when the model has a stage head.
public struct LSTMEvaluationRows {
    static let fixedWidth = 8
    let values: [Float]
    let stageCount: Int
    /// Whether the model has a ZILN head: known from the model, not the rows, so that a rank
    /// without customers agrees with the others.
    let hasPurchaseProbability: Bool
    var width: Int { Self.fixedWidth + stageCount }
    var count: Int { values.count / width }

    static func pack(_ predictions: LSTMPredictions, shard: LocalShard, stageCount: Int) -> [Float] {
        let width = fixedWidth + stageCount
        var rows = [Float](repeating: 0, count: shard.count * width)
        for index in 0..<shard.count {
            let base = index * width
            rows[base] = Float(shard.datasetRows[index])
            rows[base + 1] = shard.churn[index]
            rows[base + 2] = shard.spend[index]
            rows[base + 3] = Float(shard.stages[index])
            rows[base + 4] = predictions.churnProbability[index]
            rows[base + 5] = predictions.expectedSpend[index]
            rows[base + 6] = predictions.clvLoss[index]
            rows[base + 7] = predictions.purchaseProbability.isEmpty ? -1 : predictions.purchaseProbability[index]
            for stage in 0..<stageCount {
                rows[base + fixedWidth + stage] = predictions.stageProbabilities[index * stageCount + stage]
            }
        }
        return rows
    }

    func column(_ offset: Int) -> [Double] {
        stride(from: offset, to: values.count, by: width).map { Double(values[$0]) }
    }
    var datasetRows: [Int] { stride(from: 0, to: values.count, by: width).map { Int(values[$0]) } }
    var ids: [Int64] { datasetRows.map { Int64($0) } }
    var churnLabels: [Bool] { column(1).map { $0 >= 0.5 } }
    var spend: [Double] { column(2) }
    var stages: [Int] { column(3).map { Int($0) } }
    var churnProbability: [Double] { column(4) }
    var expectedSpend: [Double] { column(5) }
    var clvLoss: [Double] { column(6) }
    var purchaseProbability: [Double]? { hasPurchaseProbability ? column(7) : nil }
    func predictedStage(_ row: Int) -> Int {
        let base = row * width + Self.fixedWidth
        var best = 0
        for stage in 1..<max(stageCount, 1) where values[base + stage] > values[base + best] { best = stage }
        return best
    }

    /// Churn, spend and (with a stage head) stage metrics of every rank's customers.
    func metrics(prefix: String, clvWeight: Double, stageWeight: Double, majorityStage: Int, spendTail: Bool = false,
                 world: any Communicator) throws -> [String: Double] {
        let labels = churnLabels, probabilities = churnProbability, ids = self.ids
        var metrics = try churnAndSpendMetrics(
            prefix: prefix, labels: labels, churnProbability: probabilities, spend: spend, expectedSpend: expectedSpend,
            ids: ids, spendTail: spendTail, world: world
        ).compactMapValues { $0 }
        if let purchase = purchaseProbability {
            // The ZILN's own churn estimate, 1 − P(purchase), beside the churn head's.
            var binary = BinaryClassificationState()
            for (p, label) in zip(purchase, labels) { binary.add(probability: 1 - p, label: label) }
            metrics[prefix + "auc_ziln"] = try CrossRankMetrics.rocAUC(
                scores: purchase.map { 1 - $0 }, labels: labels, ids: ids, world: world)[0]
            metrics[prefix + "log_loss_ziln"] = try binary.mergedAcross(world).logLoss
        }
        // Summed over every rank: the stage loss, the CLV loss and the customers.
        var sums = [0.0, self.clvLoss.reduce(0, +), Double(count)]
        var stageStates: (MulticlassState, MulticlassState)? = nil
        if stageCount > 0 {
            var state = MulticlassState(classCount: stageCount)
            var majority = MulticlassState(classCount: stageCount)
            let truth = stages
            for row in 0..<count {
                state.add(trueClass: truth[row], predictedClass: predictedStage(row))
                majority.add(trueClass: truth[row], predictedClass: majorityStage)
                sums[0] -= log(max(Double(values[row * width + Self.fixedWidth + truth[row]]), 1e-15))
            }
            stageStates = (try state.mergedAcross(world), try majority.mergedAcross(world))
        }
        try world.allreduce(&sums, op: .sum)
        let customers = sums[2]
        let stageLoss = sums[0] / max(customers, 1)
        if let (state, majority) = stageStates {
            metrics[prefix + "stage_accuracy"] = state.accuracy
            metrics[prefix + "stage_macro_f1"] = state.macroF1
            // What always answering the training split's most frequent stage scores.
            metrics[prefix + "stage_majority_accuracy"] = majority.accuracy
            metrics[prefix + "stage_majority_macro_f1"] = majority.macroF1
            for (trueStage, row) in state.confusionMatrix.enumerated() {
                for (predicted, cases) in row.enumerated() {
                    metrics["\(prefix)stage_confusion_\(trueStage)_\(predicted)"] = Double(cases)
                }
            }
        }
        if let logLoss = metrics[prefix + "log_loss"], customers > 0 {
            let clvLoss = sums[1] / customers
            metrics[prefix + "clv_loss"] = clvLoss
            metrics[prefix + "loss"] = logLoss + clvWeight * clvLoss + stageWeight * stageLoss
        }
        metrics[prefix + "customers"] = customers
        return metrics.filter { $0.value.isFinite }
    }
}

/// The churn and spend metrics every model and baseline is compared on, over every rank's
/// customers: AUC, log loss, F1, Brier, accuracy; spend RMSE and MAE in currency, RMSE of
/// log1p, Spearman and normalized Gini. `ids` are the customers' dataset rows.
func churnAndSpendMetrics(
    prefix: String, labels: [Bool], churnProbability: [Double], spend: [Double], expectedSpend: [Double],
    ids: [Int64], spendTail: Bool = false, world: any Communicator
) throws -> [String: Double?] {
    var binary = BinaryClassificationState()
    var currency = RegressionState()
    var logScale = RegressionState()
    for index in labels.indices {
        binary.add(probability: churnProbability[index], label: labels[index])
        currency.add(prediction: expectedSpend[index], target: spend[index])
        logScale.add(prediction: log1p(max(expectedSpend[index], 0)), target: log1p(spend[index]))
    }
    binary = try binary.mergedAcross(world)
    currency = try currency.mergedAcross(world)
    logScale = try logScale.mergedAcross(world)
    var metrics: [String: Double?] = [:]
    metrics[prefix + "auc"] = try CrossRankMetrics.rocAUC(scores: churnProbability, labels: labels, ids: ids, world: world)[0]
    metrics[prefix + "log_loss"] = binary.logLoss
    metrics[prefix + "f1"] = binary.f1
    metrics[prefix + "brier"] = binary.brierScore
    metrics[prefix + "accuracy"] = binary.accuracy
    metrics[prefix + "clv_rmse"] = currency.rmse
    metrics[prefix + "clv_mae"] = currency.mae
    metrics[prefix + "clv_rmse_log"] = logScale.rmse
    metrics[prefix + "spend_spearman"] = try CrossRankMetrics.spearman(expectedSpend, spend, ids: ids, world: world)
    metrics[prefix + "spend_gini"] = try CrossRankMetrics.normalizedGini(predicted: expectedSpend, actual: spend, ids: ids, world: world)
    // Two more sorts over every rank's customers: only for the evaluations a run reports, not
    // each epoch's validation.
    if spendTail {
        for (key, value) in try spendTailMetrics(predicted: expectedSpend, actual: spend, ids: ids, world: world) {
            metrics[prefix + key] = value
        }
    }
    return metrics
}

/// How much of the spend error a few customers make, and whether the predicted spend is
/// calibrated across its range: `clv_rmse_without_top_0_1pct` leaves out the 0.1% of customers
/// (at least one) with the largest actual spend, and `spend_decile_<d>_predicted/_actual` are the
/// mean predicted and actual spend of each tenth of the customers ranked by predicted spend
/// (1 lowest). Ranks and thresholds come from a sort over every rank's customers.
func spendTailMetrics(predicted: [Double], actual: [Double], ids: [Int64], world: any Communicator) throws -> [String: Double] {
    var rows: [Double] = []
    rows.reserveCapacity(3 * ids.count)
    for index in ids.indices { rows += [actual[index], predicted[index], Double(ids[index])] }
    var result: [String: Double] = [:]
    // Largest actual spends last; a customer's dataset row breaks ties, so any world size agrees.
    let byActual = try DistributedSort.sort(rows, width: 3, keyColumns: [0, 2], world: world)
    let total = byActual.total
    guard total > 0 else { return result }
    let top = max(1, Int((Double(total) * 0.001).rounded(.up)))
    var kept = [0.0, 0.0]
    for row in 0..<byActual.count where byActual.offset + row < total - top {
        let error = byActual.value(row, 1) - byActual.value(row, 0)
        kept[0] += error * error
        kept[1] += 1
    }
    try world.allreduce(&kept, op: .sum)
    if kept[1] > 0 { result["clv_rmse_without_top_0_1pct"] = (kept[0] / kept[1]).squareRoot() }
    let byPredicted = try DistributedSort.sort(rows, width: 3, keyColumns: [1, 2], world: world)
    var deciles = [Double](repeating: 0, count: 30)
    for row in 0..<byPredicted.count {
        let decile = (byPredicted.offset + row) * 10 / total
        deciles[3 * decile] += byPredicted.value(row, 1)
        deciles[3 * decile + 1] += byPredicted.value(row, 0)
        deciles[3 * decile + 2] += 1
    }
    try world.allreduce(&deciles, op: .sum)
    for decile in 0..<10 where deciles[3 * decile + 2] > 0 {
        result["spend_decile_\(decile + 1)_predicted"] = deciles[3 * decile] / deciles[3 * decile + 2]
        result["spend_decile_\(decile + 1)_actual"] = deciles[3 * decile + 1] / deciles[3 * decile + 2]
    }
    return result
}

/// The stage metrics of the graph model over every rank's customers, from this rank's class
/// probabilities (row-major [count, classes]).
func evaluateStages(
    _ probabilities: [Float], shard: LocalShard, classCount: Int, majorityStage: Int, prefix: String, world: any Communicator
) throws -> [String: Double] {
    var state = MulticlassState(classCount: classCount)
    var majority = MulticlassState(classCount: classCount)
    var lossSum = 0.0
    for index in 0..<shard.count {
        let row = probabilities[index * classCount..<(index + 1) * classCount]
        let predicted = row.indices.max { row[$0] < row[$1] }! - index * classCount
        let truth = Int(shard.stages[index])
        state.add(trueClass: truth, predictedClass: predicted)
        majority.add(trueClass: truth, predictedClass: majorityStage)
        lossSum -= log(max(Double(row[index * classCount + truth]), 1e-15))
    }
    let stateCount = state.packed.count
    var packed = state.packed + majority.packed + [lossSum]
    try world.allreduce(&packed, op: .sum)
    guard let merged = state.rebuilt(fromPacked: Array(packed[0..<stateCount])),
          let mergedMajority = majority.rebuilt(fromPacked: Array(packed[stateCount..<2 * stateCount])) else {
        throw AgreementError(message: "merged metric state is malformed")
    }
    var metrics: [String: Double] = [:]
    metrics[prefix + "accuracy"] = merged.accuracy
    metrics[prefix + "macro_f1"] = merged.macroF1
    metrics[prefix + "majority_accuracy"] = mergedMajority.accuracy
    metrics[prefix + "majority_macro_f1"] = mergedMajority.macroF1
    if merged.count > 0 { metrics[prefix + "loss"] = packed.last! / Double(merged.count) }
    metrics[prefix + "customers"] = Double(merged.count)
    for (truth, row) in merged.confusionMatrix.enumerated() {
        for (predicted, count) in row.enumerated() {
            metrics["\(prefix)confusion_\(truth)_\(predicted)"] = Double(count)
        }
    }
    return metrics
}

/// Writes the test rows of every rank as one `TestPredictions` file, each rank its own rows (in
/// shard order, so the file lists customers in dataset order).
func writeLSTMPredictions(_ rows: LSTMEvaluationRows, to url: URL, world: any Communicator) throws {
    let header = TestPredictions.churnHeader(hasPurchaseProbability: rows.hasPurchaseProbability, stageCount: rows.stageCount)
    var text = ""
    let values = rows.values
    for row in 0..<rows.count {
        let base = row * rows.width
        let stages = base + LSTMEvaluationRows.fixedWidth
        TestPredictions.appendChurnRow(
            to: &text, datasetRow: values[base], churnLabel: values[base + 1], probability: values[base + 4],
            spend: values[base + 2], expectedSpend: values[base + 5], stage: values[base + 3],
            purchaseProbability: rows.hasPurchaseProbability ? values[base + 7] : nil,
            predictedStage: rows.stageCount > 0 ? rows.predictedStage(row) : nil,
            stageProbabilities: Array(values[stages..<stages + rows.stageCount]))
    }
    try writeSharedRunFile(header: header, rows: Array(text.utf8), to: url, world: world)
}

/// Writes the GNN's test rows of every rank as one `TestPredictions` file (see `writeLSTMPredictions`).
func writeStagePredictions(_ rows: StageEvaluationRows, to url: URL, world: any Communicator) throws {
    let header = TestPredictions.stageHeader(classCount: rows.classCount)
    var text = ""
    for row in stride(from: 0, to: rows.values.count, by: rows.width) {
        TestPredictions.appendStageRow(to: &text, rows.values[row..<row + rows.width])
    }
    try writeSharedRunFile(header: header, rows: Array(text.utf8), to: url, world: world)
}
