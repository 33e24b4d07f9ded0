import Foundation
import Testing
@testable import CustomerData

/// A fresh directory under the system temporary folder, removed by `cleanup()`.
struct Scratch {
    let path: String

    init(_ label: String = #function) {
        let safe = label.filter { $0.isLetter || $0.isNumber }
        path = NSTemporaryDirectory() + "clm-data-tests-\(safe)-\(UUID().uuidString.prefix(8))"
        try! FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true)
    }

    func file(_ name: String, _ contents: String) -> String {
        let target = path + "/" + name
        precondition(FileManager.default.createFile(atPath: target, contents: Data(contents.utf8)), "cannot create \(target)")
        return target
    }

    func file(_ name: String, bytes: [UInt8]) -> String {
        let target = path + "/" + name
        precondition(FileManager.default.createFile(atPath: target, contents: Data(bytes)), "cannot create \(target)")
        return target
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: path) }
}

func samplePath(_ name: String) -> String {
    Bundle.module.url(forResource: "Samples", withExtension: nil)!.appendingPathComponent(name).path
}

/// Options for small hand-made canonical files: day numbers, a fixed cut-off, no rejects allowed.
func dayOptions(cutoff: Int, period: Int = 7, history: Int = 4, horizon: Int = 14, maxReject: Double = 0) -> ImportOptions {
    var options = ImportOptions()
    options.format.timeFormat = .days
    options.cutoffDay = cutoff
    options.periodDays = period
    options.historyPeriods = history
    options.horizonDays = horizon
    options.maxRejectFraction = maxReject
    // These files are a few hand-written days whose last event is not what a test is about.
    options.allowPartialHorizon = true
    return options
}

func importFile(_ input: String, into scratch: Scratch, _ options: ImportOptions, name: String = "dataset") throws -> (ImportSummary, CustomerDataset) {
    let out = scratch.path + "/" + name
    let summary = try Importer.run(input: input, output: out, options: options)
    return (summary, try CustomerDataset.open(at: URL(fileURLWithPath: out)))
}

/// The rows of a rejects file after its header, as (line, reason).
func readRejects(_ path: String) -> [(line: Int, reason: String)] {
    let text = (try? String(contentsOfFile: path, encoding: .utf8)) ?? ""
    return text.split(separator: "\n").dropFirst().compactMap { row in
        let parts = row.split(separator: ",", maxSplits: 1)
        guard parts.count == 2, let line = Int(parts[0]) else { return nil }
        let rest = parts[1]
        // reason is the first quoted field
        let reason = rest.dropFirst().prefix { $0 != "\"" }
        return (line, String(reason))
    }
}

/// Raw (unnormalised) features of a dataset customer: stored value * std + mean.
func rawFeature(_ data: CustomerDataset, customer: Int, step: Int, feature: Int) -> Double {
    let f = data.featureCount
    let stored = Double(data.features[(customer * data.historyLength + step) * f + feature])
    return stored * data.manifest.normalisation.std[feature] + data.manifest.normalisation.mean[feature]
}
