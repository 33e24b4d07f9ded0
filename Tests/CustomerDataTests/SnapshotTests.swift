import Foundation
import Testing
@testable import CustomerData

// Training examples at earlier cut-offs (`--snapshots K --snapshot-every P`): each must be the
// example an import at that cut-off makes, and nothing about the main cut-off may change.

/// Synthetic events with a window where every earlier cut-off below still has customers and a
/// full horizon: 2022-01-01 plus 730 days, cut-off 2023-06-30, 26 weeks of history, 13 of horizon.
private func snapshotOptions(snapshots: Int = 1, every: Int? = nil) throws -> ImportOptions {
    var options = ImportOptions()
    options.maxRejectFraction = 0
    options.cutoffDay = try parseDay("2023-06-30")
    options.historyPeriods = 26
    options.horizonDays = 91
    options.rowsPerPart = 64
    options.snapshots = snapshots
    options.snapshotEveryPeriods = every
    return options
}

private func syntheticInput(_ scratch: Scratch) throws -> String {
    let input = scratch.path + "/events.csv"
    _ = try generateSyntheticEvents(options: SyntheticOptions(customers: 400, products: 40, seed: 7), to: input)
    return input
}

@Test("the example of a training customer at c - jP is the main example of an import with --cutoff c - jP")
func earlierCutoffExamplesEqualAnImportAtThatCutoff() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let input = try syntheticInput(scratch)
    let options = try snapshotOptions(snapshots: 4, every: 2)
    let (summary, dataset) = try importFile(input, into: scratch, options, name: "k4")
    let earlier = try dataset.snapshotDatasets()
    #expect(earlier.count == 3 && summary.manifest.snapshots?.count == 4 && summary.manifest.snapshots?.everyPeriods == 2)

    var counts: [Int] = []
    for (j, snapshot) in earlier.enumerated() {
        let back = 2 * (j + 1)
        var reference = try snapshotOptions()
        reference.cutoffDay = options.cutoffDay! - back * 7
        let (_, at) = try importFile(input, into: scratch, reference, name: "cutoff-\(back)")
        #expect(snapshot.manifest.spec == at.manifest.spec, "snapshot \(j + 1) has the window of an import at its cut-off")

        // Exactly the reference's training customers: those who had bought by that cut-off,
        // assigned by the same split.
        let ids = try snapshot.customerIDs(), referenceIDs = try at.customerIDs()
        let referenceRow = Dictionary(uniqueKeysWithValues: referenceIDs.enumerated().map { ($1, $0) })
        let referenceTraining = at.indices(in: .train).map { referenceIDs[$0] }
        #expect(ids == referenceTraining, "snapshot \(j + 1): \(ids.count) customers, the import at its cut-off trains \(referenceTraining.count)")
        #expect(ids.count > 100)
        counts.append(ids.count)

        var worst = 0.0
        for (row, id) in ids.enumerated() {
            let r = referenceRow[id]!
            #expect(snapshot.lengths[row] == at.lengths[r] && snapshot.churn[row] == at.churn[r]
                    && snapshot.spend[row] == at.spend[r] && snapshot.stage[row] == at.stage[r], "labels of \(id) at cut-off -\(back)")
            // The stored features are normalised with each dataset's own statistics (the main
            // cut-off's for the snapshot), so they are compared as raw values.
            for step in 0..<Int(at.lengths[r]) {
                for f in 0..<at.featureCount {
                    let a = rawFeature(snapshot, customer: row, step: step, feature: f)
                    let b = rawFeature(at, customer: r, step: step, feature: f)
                    worst = max(worst, abs(a - b) / max(1, abs(b)))
                }
            }
        }
        #expect(worst < 1e-5, "snapshot \(j + 1): raw features differ by up to \(worst) (relative)")
    }
    // Customers whose first purchase came later have no example at the earliest cut-off.
    #expect(counts.last! < dataset.indices(in: .train).count, "examples per earlier cut-off \(counts)")
}

@Test("earlier cut-offs change nothing of the main dataset: every file, validation and test rows included, and the manifest but its snapshot entry")
func earlierCutoffsLeaveTheMainDatasetAsItIs() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let input = try syntheticInput(scratch)
    let one = try Importer.run(input: input, output: scratch.path + "/k1", options: try snapshotOptions())
    let four = try Importer.run(input: input, output: scratch.path + "/k4", options: try snapshotOptions(snapshots: 4, every: 2))
    #expect(one.manifest.snapshots == nil)
    #expect(!(try String(contentsOfFile: scratch.path + "/k1/manifest.json", encoding: .utf8)).contains("snapshot"))
    #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path + "/k1").allSatisfy { !$0.hasPrefix("snapshot") })
    #expect(one.manifest.graph != nil, "the graph is built at the main cut-off either way")

    for file in one.manifest.files {
        let a = try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/k1/" + file.name))
        let b = try Data(contentsOf: URL(fileURLWithPath: scratch.path + "/k4/" + file.name))
        #expect(a == b, "\(file.name) differs between one cut-off and four")
    }
    var withoutSnapshots = four.manifest
    withoutSnapshots.snapshots = nil
    withoutSnapshots.fingerprint = withoutSnapshots.computeFingerprint()
    #expect(withoutSnapshots == one.manifest)
    #expect(four.manifest.fingerprint != one.manifest.fingerprint, "the fingerprint covers the earlier cut-offs")

    // Every example of an earlier cut-off is a training customer of the main split.
    let main = try CustomerDataset.open(at: URL(fileURLWithPath: scratch.path + "/k4"))
    let training = Set(main.indices(in: .train).map { try! main.customerIDs()[$0] })
    for snapshot in try main.snapshotDatasets() {
        let ids = try snapshot.customerIDs()
        #expect(Set(ids).isSubset(of: training) && snapshot.split.allSatisfy { $0 == 0 })
    }
}

@Test("a dataset with earlier cut-offs is replaced whole by the next import, and a damaged earlier cut-off is named")
func earlierCutoffsAreReplacedAndVerified() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let input = try syntheticInput(scratch)
    let out = scratch.path + "/out"
    _ = try Importer.run(input: input, output: out, options: try snapshotOptions(snapshots: 3, every: 4))
    let spend = out + "/snapshot-2/spend.f32"
    var bytes = try Data(contentsOf: URL(fileURLWithPath: spend))
    bytes[0] ^= 0xFF
    try bytes.write(to: URL(fileURLWithPath: spend))
    let main = try CustomerDataset.open(at: URL(fileURLWithPath: out))
    #expect(throws: DataError.self) { _ = try main.snapshotDatasets() }
    do { _ = try main.snapshotDatasets() } catch { #expect("\(error)".contains("snapshot-2/spend.f32"), "\(error)") }

    _ = try Importer.run(input: input, output: out, options: try snapshotOptions())
    #expect(try FileManager.default.contentsOfDirectory(atPath: out).allSatisfy { !$0.hasPrefix("snapshot") })
    #expect(try FileManager.default.contentsOfDirectory(atPath: scratch.path).sorted() == ["events.csv", "out"],
            "the replaced dataset and its earlier cut-offs are gone")
}

@Test("snapshot options that cannot work are refused before anything is written, naming the flag")
func badSnapshotOptionsAreRefused() throws {
    let scratch = Scratch()
    defer { scratch.cleanup() }
    let input = try syntheticInput(scratch)
    let out = scratch.path + "/out"
    for (options, words) in [(try snapshotOptions(snapshots: 3), "--snapshot-every"),
                             (try snapshotOptions(snapshots: 2, every: 0), "--snapshot-every must be at least 1"),
                             (try snapshotOptions(snapshots: 0, every: 1), "--snapshots must be between"),
                             (try snapshotOptions(snapshots: 2, every: 200), "200 periods before the main one")] {
        do {
            _ = try Importer.run(input: input, output: out, options: options)
            Issue.record("accepted \(options.snapshots) cut-offs every \(options.snapshotEveryPeriods ?? -1) periods")
        } catch {
            #expect("\(error)".contains(words), "\(error)")
        }
        #expect(!FileManager.default.fileExists(atPath: out))
    }
}
