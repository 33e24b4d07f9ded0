import Checkpoints
import Collectives
import Foundation
import ModelMetrics
import Tensors

/// Metrics of one split, merged over every rank's shard.
///
/// Counting states (confusion counts, loss sums) are summed with one all-reduce of their packed
/// form; ROC AUC is computed exactly on rank 0 from the gathered scores (a few floats per
/// customer) and broadcast, so every rank ends with the same numbers.
func evaluate(
    _ predictions: Predictions, shard: LocalShard, model: TrainingConfiguration.ModelKind,
    classCount: Int, clvWeight: Float, prefix: String, world: any Communicator
) throws -> [String: Double] {
    switch model {
    case .lstm: return try evaluateChurn(predictions, shard: shard, clvWeight: clvWeight, prefix: prefix, world: world)
    case .gnn: return try evaluateStages(predictions, shard: shard, classCount: classCount, prefix: prefix, world: world)
    }
}

private func evaluateChurn(
    _ predictions: Predictions, shard: LocalShard, clvWeight: Float, prefix: String, world: any Communicator
) throws -> [String: Double] {
    var binary = BinaryClassificationState()
    var clvLog = RegressionState()
    var clvCurrency = RegressionState()
    for index in 0..<shard.count {
        let probability = Double(predictions.churnProbability[index])
        binary.add(probability: probability, label: shard.churn[index] >= 0.5)
        let target = log1p(Double(shard.spend[index]))
        let predicted = Double(predictions.clvLog[index])
        clvLog.add(prediction: predicted, target: target)
        clvCurrency.add(prediction: max(expm1(predicted), 0), target: Double(shard.spend[index]))
    }
    var packed = binary.packed + clvLog.packed + clvCurrency.packed
    try world.allreduce(&packed, op: .sum)
    let binaryCount = BinaryClassificationState.packedCount
    let regressionCount = RegressionState.packedCount
    guard let mergedBinary = binary.rebuilt(fromPacked: Array(packed[0..<binaryCount])),
          let mergedLog = clvLog.rebuilt(fromPacked: Array(packed[binaryCount..<binaryCount + regressionCount])),
          let mergedCurrency = clvCurrency.rebuilt(fromPacked: Array(packed[(binaryCount + regressionCount)...]))
    else { throw AgreementError(message: "merged metric state is malformed") }

    // Exact AUC: gather (score, label) pairs on rank 0.
    let counts = try world.allgather(value: Int64(shard.count)).map { Int($0) }
    let total = counts.reduce(0, +)
    var pairs = [Float](repeating: 0, count: 2 * shard.count)
    for index in 0..<shard.count {
        pairs[2 * index] = predictions.churnProbability[index]
        pairs[2 * index + 1] = shard.churn[index]
    }
    var gathered = [Float](repeating: 0, count: world.rank == 0 ? 2 * total : 0)
    try pairs.withUnsafeBufferPointer { source in
        try gathered.withUnsafeMutableBufferPointer { destination in
            try world.gatherv(source, into: world.rank == 0 ? destination : nil, counts: counts.map { 2 * $0 }, root: 0)
        }
    }
    var auc = [Double.nan]
    if world.rank == 0 {
        let scores = stride(from: 0, to: gathered.count, by: 2).map { Double(gathered[$0]) }
        let labels = stride(from: 1, to: gathered.count, by: 2).map { gathered[$0] >= 0.5 }
        auc[0] = rocAUC(scores: scores, labels: labels) ?? .nan
    }
    try world.broadcast(&auc, root: 0)

    var metrics: [String: Double] = [:]
    metrics[prefix + "auc"] = auc[0]
    metrics[prefix + "log_loss"] = mergedBinary.logLoss
    metrics[prefix + "f1"] = mergedBinary.f1
    metrics[prefix + "brier"] = mergedBinary.brierScore
    metrics[prefix + "accuracy"] = mergedBinary.accuracy
    metrics[prefix + "clv_rmse_log"] = mergedLog.rmse
    metrics[prefix + "clv_rmse"] = mergedCurrency.rmse
    metrics[prefix + "clv_mae"] = mergedCurrency.mae
    if let logLoss = mergedBinary.logLoss, let mse = mergedLog.meanSquaredError {
        metrics[prefix + "loss"] = logLoss + Double(clvWeight) * mse
    }
    metrics[prefix + "customers"] = Double(total)
    return metrics.filter { !$0.value.isNaN }
}

private func evaluateStages(
    _ predictions: Predictions, shard: LocalShard, classCount: Int, prefix: String, world: any Communicator
) throws -> [String: Double] {
    var state = MulticlassState(classCount: classCount)
    var lossSum = 0.0
    for index in 0..<shard.count {
        let row = predictions.stageProbabilities[index * classCount..<(index + 1) * classCount]
        let predicted = row.indices.max { row[$0] < row[$1] }! - index * classCount
        let truth = Int(shard.stages[index])
        state.add(trueClass: truth, predictedClass: predicted)
        lossSum -= log(max(Double(row[index * classCount + truth]), 1e-15))
    }
    var packed = state.packed + [lossSum]
    try world.allreduce(&packed, op: .sum)
    guard let merged = state.rebuilt(fromPacked: Array(packed.dropLast())) else {
        throw AgreementError(message: "merged metric state is malformed")
    }
    var metrics: [String: Double] = [:]
    metrics[prefix + "accuracy"] = merged.accuracy
    metrics[prefix + "macro_f1"] = merged.macroF1
    if merged.count > 0 { metrics[prefix + "loss"] = packed.last! / Double(merged.count) }
    metrics[prefix + "customers"] = Double(merged.count)
    for (truth, row) in merged.confusionMatrix.enumerated() {
        for (predicted, count) in row.enumerated() {
            metrics["\(prefix)confusion_\(truth)_\(predicted)"] = Double(count)
        }
    }
    return metrics
}

/// Gathers every rank's test predictions on rank 0 and writes them as CSV (atomically), for the
/// run report's ROC, calibration, spend and confusion charts.
///
/// Columns, LSTM: dataset_row, churn_label, churn_probability, spend, expected_spend.
/// GNN: dataset_row, stage, predicted_stage, then one probability per stage.
func writePredictions(
    _ predictions: Predictions, shard: LocalShard, model: TrainingConfiguration.ModelKind, classCount: Int,
    to url: URL?, world: any Communicator
) throws {
    let width = model == .lstm ? 5 : 3 + classCount
    var rows = [Float](repeating: 0, count: shard.count * width)
    for index in 0..<shard.count {
        let base = index * width
        rows[base] = Float(shard.datasetRows[index])
        switch model {
        case .lstm:
            rows[base + 1] = shard.churn[index]
            rows[base + 2] = predictions.churnProbability[index]
            rows[base + 3] = shard.spend[index]
            rows[base + 4] = max(expm1(predictions.clvLog[index]), 0)
        case .gnn:
            let probabilities = predictions.stageProbabilities[index * classCount..<(index + 1) * classCount]
            rows[base + 1] = Float(shard.stages[index])
            rows[base + 2] = Float(probabilities.indices.max { probabilities[$0] < probabilities[$1] }! - index * classCount)
            for (offset, probability) in probabilities.enumerated() { rows[base + 3 + offset] = probability }
        }
    }
    let counts = try world.allgather(value: Int64(rows.count)).map { Int($0) }
    var gathered = [Float](repeating: 0, count: world.rank == 0 ? counts.reduce(0, +) : 0)
    try rows.withUnsafeBufferPointer { source in
        try gathered.withUnsafeMutableBufferPointer { destination in
            try world.gatherv(source, into: world.rank == 0 ? destination : nil, counts: counts, root: 0)
        }
    }
    guard world.rank == 0, let url else { return }
    var header = model == .lstm
        ? "dataset_row,churn_label,churn_probability,spend,expected_spend"
        : "dataset_row,stage,predicted_stage"
    if model == .gnn { header += (0..<classCount).map { ",p_stage_\($0)" }.joined() }
    var text = header + "\n"
    for row in stride(from: 0, to: gathered.count, by: width) {
        text += "\(Int(gathered[row]))"
        for column in 1..<width {
            let value = gathered[row + column]
            text += value == value.rounded() && abs(value) < 1e7 ? ",\(Int(value))" : ",\(value)"
        }
        text += "\n"
    }
    try writeFileAtomically(Data(text.utf8), to: url)
}
