import CustomerData
import Foundation
import Models
import Testing
@testable import Training

@Suite struct ConfigurationTests {
    @Test func theShippedConfigurationsParse() throws {
        let lstm = try TrainingConfiguration.load(yamlFile: "cluster/lstm.yaml")
        #expect(lstm.model == .lstm)
        #expect(lstm.earlyStopping.metric == "val_auc")
        let gnn = try TrainingConfiguration.load(yamlFile: "cluster/gnn.yaml")
        #expect(gnn.model == .gnn)
        #expect(gnn.gnn.fanouts == [10, 5])
    }

    @Test func aMisspeltKeyIsAnErrorThatNamesIt() {
        let error = #expect(throws: ConfigurationError.self) {
            try TrainingConfiguration.parse(yaml: "data: d\nepochz: 3\n", source: "test.yaml")
        }
        #expect(error?.description.contains("unknown key 'epochz'") == true, "\(String(describing: error))")
        let nested = #expect(throws: ConfigurationError.self) {
            try TrainingConfiguration.parse(yaml: "data: d\nlstm:\n  hiden: 3\n")
        }
        #expect(nested?.description.contains("unknown key 'lstm.hiden'") == true)
        // A misspelt --set is blamed on the flag, not on the file it overrides.
        let fromFlag = #expect(throws: ConfigurationError.self) {
            try TrainingConfiguration.parse(yaml: "data: d\n", source: "cluster/lstm.yaml", overrides: ["lstm.hiden=32"])
        }
        #expect(fromFlag?.description.contains("--set lstm.hiden=32: unknown key 'lstm.hiden'") == true, "\(String(describing: fromFlag))")
        #expect(fromFlag?.description.contains("cluster/lstm.yaml") == false)
        let topLevel = #expect(throws: ConfigurationError.self) {
            try TrainingConfiguration.parse(yaml: "data: d\n", source: "cluster/lstm.yaml", overrides: ["epochz=3"])
        }
        #expect(topLevel?.description.contains("--set epochz=3: unknown key 'epochz'") == true, "\(String(describing: topLevel))")
    }

    @Test func overridesReplaceFileValuesWithTheirYAMLTypes() throws {
        let configuration = try TrainingConfiguration.parse(
            yaml: "data: d\nepochs: 3\nlstm:\n  hidden: 10\n",
            overrides: ["epochs=7", "lstm.hidden=12", "gnn.fanouts=[4, 3]", "run=trial"])
        #expect(configuration.epochs == 7)
        #expect(configuration.lstm.hidden == 12)
        #expect(configuration.lstm.layers == 2, "unset keys keep their defaults")
        #expect(configuration.lstm.clvWeight == TrainingConfiguration.LSTMSettings().clvWeight && configuration.lstm.clvLoss == .ziln, "unset keys inside a section keep their defaults")
        #expect(configuration.gnn.fanouts == [4, 3])
        #expect(configuration.run == "trial")
    }

    @Test func valuesThatMakeNoSenseAreRefusedByKey() {
        for (yaml, key) in [("data: d\nepochs: 0\n", "epochs"), ("epochs: 2\n", "data"),
                            ("data: d\nlstm:\n  dropout: 1.5\n", "lstm.dropout"),
                            ("data: d\ngnn:\n  fanouts: [3]\n", "gnn.fanouts"),
                            ("data: d\ndecay: wobbly\n", "decay")] {
            let error = #expect(throws: ConfigurationError.self) { try TrainingConfiguration.parse(yaml: yaml) }
            #expect(error?.description.contains("'\(key)'") == true, "\(yaml) → \(String(describing: error))")
        }
        let typeError = #expect(throws: ConfigurationError.self) {
            try TrainingConfiguration.parse(yaml: "data: d\nepochs: many\n")
        }
        #expect(typeError?.description.contains("epochs") == true, "\(String(describing: typeError))")
        #expect(throws: ConfigurationError.self) { try TrainingConfiguration.parse(yaml: "data: d", overrides: ["epochs"]) }
    }

    @Test func decayIsANameTheScheduleKnowsOrTheLoadFails() throws {
        #expect(try TrainingConfiguration.parse(yaml: "data: d\n").decay == .cosine)
        #expect(try TrainingConfiguration.parse(yaml: "data: d\ndecay: linear\n").decay == .linear)
        #expect(try TrainingConfiguration.parse(yaml: "data: d\n", overrides: ["decay=constant"]).decay == .constant)
        let misspelt = #expect(throws: ConfigurationError.self) {
            try TrainingConfiguration.parse(yaml: "data: d\n", overrides: ["decay=cosin"])
        }
        #expect(misspelt == .invalidValue(key: "decay", message: "must be constant, linear or cosine, not 'cosin'"))
        // Workers decode the coordinator's JSON with the same rule: the name is what is sent.
        let json = String(decoding: try TrainingConfiguration.parse(yaml: "data: d\ndecay: constant\n").canonicalJSON(), as: UTF8.self)
        #expect(json.contains("\"decay\":\"constant\""))
        let tampered = Data(json.replacingOccurrences(of: "\"decay\":\"constant\"", with: "\"decay\":\"wobbly\"").utf8)
        #expect(throws: ConfigurationError.self) { try JSONDecoder().decode(TrainingConfiguration.self, from: tampered) }
    }

    @Test func canonicalJSONIsStable() throws {
        let a = try TrainingConfiguration.parse(yaml: "data: d\nepochs: 3\nseed: 5\n")
        let b = try TrainingConfiguration.parse(yaml: "seed: 5\nepochs: 3\ndata: d\n")
        #expect(try a.canonicalJSON() == b.canonicalJSON())
    }

    /// Every rank finds its own customers from the split column: contiguous blocks of each
    /// split in dataset order, exact for validation and test, padded for training so every rank
    /// runs the same steps; the distinct training rows of all ranks are every training customer once.
    @Test(arguments: [(10, 3), (9, 3), (2, 4), (1, 1), (40, 5)]) func ownShardsCoverEverySplitOnce(customers: Int, ranks: Int) {
        let splits = (0..<customers).map { UInt8(($0 * 7 + $0 / 3) % 3 == 2 ? 1 : ($0 % 5 == 4 ? 2 : 0)) }
        let plans = (0..<ranks).map { rank in splits.withUnsafeBufferPointer { ShardPlan.own(splits: $0, ranks: ranks, rank: rank) } }
        let trainRows = splits.indices.filter { splits[$0] == 0 }.map { Int32($0) }
        #expect(Set(plans.map(\.train.count)).count == 1)
        #expect(plans[0].train.count == (trainRows.count + ranks - 1) / ranks)
        #expect(plans.flatMap { $0.train.prefix($0.trainDistinct) } == trainRows)
        #expect(plans.flatMap(\.validation) == splits.indices.filter { splits[$0] == 1 }.map { Int32($0) })
        #expect(plans.flatMap(\.test) == splits.indices.filter { splits[$0] == 2 }.map { Int32($0) })
        #expect(plans.allSatisfy { $0.train.allSatisfy { splits[Int($0)] == 0 } && $0.totals == plans[0].totals })
        #expect(epochOrder(count: 20, seed: 1, epoch: 2, rank: 0) == epochOrder(count: 20, seed: 1, epoch: 2, rank: 0))
        #expect(epochOrder(count: 20, seed: 1, epoch: 2, rank: 0) != epochOrder(count: 20, seed: 1, epoch: 3, rank: 0))
    }

    /// With the manifest's split counts per part, a rank reads only the parts that hold its
    /// customers and finds the plan the whole-column scan finds; the parts it skips may hold
    /// anything, and a part whose bytes disagree with its counts is refused.
    @Test(arguments: [(10, 3, 4), (9, 3, 2), (2, 4, 1), (1, 1, 1), (40, 5, 3), (1000, 7, 64), (30, 2, 1)])
    func partSizesFindTheScannedPlanReadingOwnPartsOnly(customers: Int, ranks: Int, rowsPerPart: Int) throws {
        let splits = (0..<customers).map { UInt8(($0 * 7 + $0 / 3) % 3 == 2 ? 1 : ($0 % 5 == 4 ? 2 : 0)) }
        let partRanges = stride(from: 0, to: customers, by: rowsPerPart).map { $0..<min($0 + rowsPerPart, customers) }
        let sizes = SplitPartSizes(rowsPerPart: rowsPerPart, sizes: partRanges.map { range in
            (0..<3).map { s in range.filter { Int(splits[$0]) == s }.count }
        })
        for rank in 0..<ranks {
            let scanned = splits.withUnsafeBufferPointer { ShardPlan.own(splits: $0, ranks: ranks, rank: rank) }
            let planned = try splits.withUnsafeBufferPointer { try ShardPlan.own(splits: $0, partSizes: sizes, ranks: ranks, rank: rank) }
            #expect(planned == scanned, "rank \(rank) of \(ranks)")
            // Parts holding none of this rank's rows (nor, for a rank without training
            // customers, the repeated first ones) are not read: scrambling them changes nothing.
            let needed = Set((scanned.train + scanned.validation + scanned.test).map { Int($0) / rowsPerPart })
            var scrambled = splits
            for (index, range) in partRanges.enumerated() where !needed.contains(index) { for row in range { scrambled[row] = 9 } }
            let again = try scrambled.withUnsafeBufferPointer { try ShardPlan.own(splits: $0, partSizes: sizes, ranks: ranks, rank: rank) }
            #expect(again == scanned, "rank \(rank) of \(ranks) read a part it does not own")
        }
        // A part whose counts disagree with its bytes, or counts that do not cover the column.
        var wrong = sizes
        wrong.sizes[0] = [wrong.sizes[0][0] + 1, max(0, wrong.sizes[0][1] - 1), wrong.sizes[0][2]]
        if wrong != sizes && wrong.sizes[0].reduce(0, +) == sizes.sizes[0].reduce(0, +) {
            #expect(throws: DataError.self) {
                try splits.withUnsafeBufferPointer { try ShardPlan.own(splits: $0, partSizes: wrong, ranks: 1, rank: 0) }
            }
        }
        var short = sizes
        short.sizes.removeLast()
        if customers > rowsPerPart {
            #expect(throws: DataError.self) {
                try splits.withUnsafeBufferPointer { try ShardPlan.own(splits: $0, partSizes: short, ranks: ranks, rank: 0) }
            }
        }
    }
}
