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

    @Test func canonicalJSONIsStable() throws {
        let a = try TrainingConfiguration.parse(yaml: "data: d\nepochs: 3\nseed: 5\n")
        let b = try TrainingConfiguration.parse(yaml: "seed: 5\nepochs: 3\ndata: d\n")
        #expect(try a.canonicalJSON() == b.canonicalJSON())
    }

    @Test func shardPlansBalanceAndCover() {
        let plan = ShardPlan.balanced((0..<10).map { Int32($0) }, ranks: 3, seed: 1)
        #expect(plan.counts == [4, 4, 4])
        #expect(Set(plan.rows.flatMap { $0 }) == Set((0..<10).map { Int32($0) }))
        let exact = ShardPlan.exact((0..<10).map { Int32($0) }, ranks: 3)
        #expect(exact.counts == [4, 3, 3])
        #expect(exact.rows.flatMap { $0 } == (0..<10).map { Int32($0) })
        #expect(ShardPlan.exactCounts(total: 10, ranks: 3) == exact.counts)
        #expect(epochOrder(count: 20, seed: 1, epoch: 2, rank: 0) == epochOrder(count: 20, seed: 1, epoch: 2, rank: 0))
        #expect(epochOrder(count: 20, seed: 1, epoch: 2, rank: 0) != epochOrder(count: 20, seed: 1, epoch: 3, rank: 0))
    }

    /// The baselines fit on each rank's distinct training customers: the first `distinctCount`
    /// rows of every rank must together be every customer exactly once.
    @Test(arguments: [(10, 3), (9, 3), (2, 4), (1, 1), (17, 5)]) func distinctRowsOfBalancedShardsAreEveryCustomerOnce(total: Int, ranks: Int) {
        let plan = ShardPlan.balanced((0..<total).map { Int32($0) }, ranks: ranks, seed: 4)
        let distinct = (0..<ranks).flatMap { rank in plan.rows[rank].prefix(ShardPlan.distinctCount(total: total, ranks: ranks, rank: rank)) }
        #expect(distinct.sorted() == (0..<total).map { Int32($0) })
    }
}
