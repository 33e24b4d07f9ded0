import Foundation
import Models
import Scoring
import ScoringService
import ScoringTestSupport
import TestSupport
import Testing

@Suite("Interoperability", .serialized)
struct InteropTests {
    static let script = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../scripts/score_reference.py").standardizedFileURL.path

    /// The first Python that imports NumPy: the one on PATH, else Debian's (scripts/common.sh
    /// installs python3-numpy for it).
    static func pythonWithNumPy() -> String {
        for candidate in [which("python3"), "/usr/bin/python3"].compactMap({ $0 }) {
            if let probe = try? runChild(candidate, ["-c", "import numpy"]), probe.status == 0 { return candidate }
        }
        return "/usr/bin/python3"
    }

    static func which(_ name: String) -> String? {
        for directory in (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":") {
            let path = "\(directory)/\(name)"
            if FileManager.default.isExecutableFile(atPath: path) { return path }
        }
        return nil
    }

    @Test("an independent NumPy forward over model.safetensors gives the service's scores, for every head layout",
          arguments: [(CLVLoss.logMSE, 0, 0), (CLVLoss.ziln, 4, 0), (CLVLoss.ziln, 4, 5)])
    func numpyReference(clvLoss: CLVLoss, stages: Int, customerUnits: Int) async throws {
        let fixture = try ScoringFixture(customers: 40)
        let heads = fixture.architecture(clvLoss: clvLoss, stageCount: stages, customerHidden: customerUnits)
        let checkpoint = try fixture.saveCheckpoint(step: 2, seed: 21, heads: heads)
        let service = try await RunningService(ServiceConfiguration(checkpoints: fixture.root, run: "test"))
        let body = featuresBody([("short", 1), ("mid", 9), ("full", fixture.dataset.historyLength), ("odd", 17)])
        let reply = try await service.send("POST", "/v1/score", body: body)
        await service.stop()
        #expect(reply.status == 200, "\(reply.text)")
        let served = try service.json(reply)["scores"] as! [[String: Any]]

        let input = fixture.directory.path("request.json")
        try body.write(toFile: input, atomically: true, encoding: .utf8)
        let child = try runChild(Self.pythonWithNumPy(), [Self.script, checkpoint.path, input])
        #expect(child.status == 0, "score_reference.py failed: \(child.errors)")
        let reference = child.output.split(separator: "\n").map {
            try! JSONSerialization.jsonObject(with: Data($0.utf8)) as! [String: Any]
        }
        #expect(reference.count == served.count)
        for (ours, theirs) in zip(served, reference) {
            #expect(ours["customer_id"] as? String == theirs["customer_id"] as? String)
            let churn = ours["churn_probability"] as! Double, expected = theirs["churn_probability"] as! Double
            // The service prints six decimals; float32 against float64 adds a few ulp.
            #expect(abs(churn - expected) < 2e-6, "\(ours["customer_id"]!): \(churn) vs \(expected)")
            let spend = ours["expected_spend"] as! Double, expectedSpend = theirs["expected_spend"] as! Double
            #expect(abs(spend - expectedSpend) <= 2e-6 + 1e-5 * expectedSpend, "\(ours["customer_id"]!): \(spend) vs \(expectedSpend)")
            if stages > 0 {
                // The stage head gives the stage: its softmax, not the rule's.
                #expect(ours["stage_source"] as? String == "lstm")
                let servedStages = ours["stage_probabilities"] as! [String: Double]
                let referenceStages = theirs["stage_probabilities"] as! [Double]
                for (k, name) in fixture.dataset.manifest.stageNames.enumerated() {
                    #expect(abs(servedStages[name]! - referenceStages[k]) < 2e-6, "\(name)")
                }
            } else {
                #expect(ours["stage_source"] as? String == "rule")
            }
        }
        let churns = served.map { $0["churn_probability"] as! Double }
        #expect(Set(churns).count == churns.count, "the customers should differ, or the comparison proves little")
    }
}
