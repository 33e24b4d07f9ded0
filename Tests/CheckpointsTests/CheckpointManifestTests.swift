import Foundation
import Testing
@testable import Checkpoints

func sampleManifest(run: String = "churn", step: Int = 0) -> CheckpointManifest {
    CheckpointManifest(
        runName: run,
        step: step,
        epoch: 2,
        created: Date(timeIntervalSince1970: 1_740_830_400),
        programVersion: "0.3.0",
        worldSize: 4,
        modelKind: .lstm,
        configuration: ["hidden": 64, "layers": 2, "optimizer": ["name": "adam", "lr": 0.001], "dropout": nil, "bidirectional": false],
        featureSpec: [
            "features": ["recency", "frequency", "monetary"],
            "period": "week",
            "normalisation": ["mean": [1.5, 2, 30.25], "std": [0.5, 1, 12]],
            "stageThresholds": ["atRisk": 0.4, "churned": 0.8],
            "note": "NaN",
        ],
        datasetFingerprint: "sha256:ab12",
        randomState: UInt64.max - 1,
        metrics: ["auc": 0.8125, "loss": 0.4375]
    )
}

@Suite struct CheckpointManifestTests {
    @Test func roundTripsThroughJSON() throws {
        var manifest = sampleManifest()
        manifest.files = ["model.safetensors": FileDigest(sha256: String(repeating: "a1", count: 32), bytes: 123)]
        let data = try manifest.jsonData()
        let decoded = try CheckpointManifest(jsonData: data)
        #expect(decoded == manifest)
        #expect(decoded.randomState == UInt64.max - 1)
        #expect(decoded.featureSpec["note"] == .string("NaN"))
        #expect(decoded.configuration["optimizer"]?["lr"] == .number(0.001))
        #expect(decoded.configuration["dropout"] == .null)
        #expect(decoded.configuration["bidirectional"] == .bool(false))
        #expect(try decoded.jsonData() == data, "encoding is deterministic")
    }

    @Test func jsonIsPrettySortedAndCarriesTheRandomStateAsAString() throws {
        let text = String(decoding: try sampleManifest().jsonData(), as: UTF8.self)
        #expect(text.contains("\n  \"configuration\""))
        #expect(text.contains("\"randomState\" : \"18446744073709551614\""))
        #expect(text.contains("\"createdAt\" : \"2025-03-01T12:00:00Z\""))
        #expect(text.contains("\"modelKind\" : \"lstm\""))
        let keys = ["configuration", "createdAt", "datasetFingerprint", "epoch", "featureSpec", "files", "formatVersion",
                    "metrics", "modelKind", "programVersion", "randomState", "runName", "step", "worldSize"]
        let positions = keys.map { text.range(of: "\n  \"\($0)\"")!.lowerBound }
        #expect(positions == positions.sorted())
    }

    @Test func nonFiniteMetricsSurvive() throws {
        var manifest = sampleManifest()
        manifest.metrics = ["loss": .nan, "gradNorm": .infinity]
        let decoded = try CheckpointManifest(jsonData: manifest.jsonData())
        #expect(decoded.metrics["loss"]?.isNaN == true)
        #expect(decoded.metrics["gradNorm"] == .infinity)
    }

    @Test func rejectsBadManifestsWithReasons() throws {
        let good = try JSONSerialization.jsonObject(with: sampleManifest().jsonData()) as! [String: Any]
        func reason(_ edit: (inout [String: Any]) -> Void) -> String? {
            var object = good
            edit(&object)
            let data = try! JSONSerialization.data(withJSONObject: object)
            let error = #expect(throws: CheckpointError.self) { try CheckpointManifest(jsonData: data, source: "m.json") }
            guard case .invalidManifest(let path, let reason) = error else { return nil }
            #expect(path == "m.json")
            return reason
        }
        #expect(reason { $0["step"] = nil } == "missing key \"step\"")
        #expect(reason { $0["step"] = "three" } == "step: expected a whole number")
        #expect(reason { $0["metrics"] = ["loss": [1]] } == "metrics.loss: expected a number")
        #expect(reason { $0["files"] = 3 } == "files: expected an object")
        #expect(reason { $0["randomState"] = "-1" }?.hasPrefix("randomState: \"-1\" is not an unsigned 64-bit") == true)
        #expect(reason { $0["modelKind"] = "transformer" }?.hasPrefix("modelKind:") == true)
        #expect(reason { $0["formatVersion"] = 2 } == "format version 2 is not supported (this program reads version 1)")
        #expect(reason { $0["createdAt"] = "yesterday" } == "createdAt \"yesterday\" is not an ISO-8601 timestamp")
        #expect(reason { $0["worldSize"] = 0 } == "world size 0 is not positive")
        #expect(reason { $0["files"] = ["model": ["sha256": "xyz", "bytes": 3]] } == "files.model.sha256 \"xyz\" is not 64 lower-case hex digits")
        #expect(reason { $0["files"] = ["../escape": ["sha256": String(repeating: "0", count: 64), "bytes": 3]] }?.contains("single path component") == true)

        let notJSON = #expect(throws: CheckpointError.self) { try CheckpointManifest(jsonData: Data("{".utf8), source: "m.json") }
        #expect(notJSON?.description == "checkpoint: invalid manifest m.json: malformed JSON at byte 1: expected a string key, found the end of the input")
        // Valid JSON that does not fit the field: named in plain words, never Foundation's dump.
        let text = String(decoding: try sampleManifest().jsonData(), as: UTF8.self)
        let huge = text.replacingOccurrences(of: "\"step\" : 0", with: "\"step\" : 1e30")
        #expect(huge != text)
        let tooLarge = #expect(throws: CheckpointError.self) { try CheckpointManifest(jsonData: Data(huge.utf8), source: "m.json") }
        let description = tooLarge?.description ?? ""
        #expect(description.hasPrefix("checkpoint: invalid manifest m.json: step: ") && description.contains("1e30"), "\(description)")
        for raw in ["DecodingError", "Context(", "codingPath", "NSCocoaErrorDomain", "not valid JSON"] {
            #expect(!description.contains(raw), "\(description)")
        }
        // A fraction where a whole number belongs is named by its field, past the fractions
        // that belong where they are (the metrics).
        let fractional = text.replacingOccurrences(of: "\"worldSize\" : 4", with: "\"worldSize\" : 4.5")
        #expect(fractional != text)
        let fraction = #expect(throws: CheckpointError.self) { try CheckpointManifest(jsonData: Data(fractional.utf8), source: "m.json") }
        #expect(fraction?.description == "checkpoint: invalid manifest m.json: worldSize: expected a whole number, found 4.5")
    }

    @Test func acceptsFractionalSecondTimestamps() throws {
        var manifest = sampleManifest()
        manifest.createdAt = "2025-03-01T12:00:00.250+01:00"
        #expect(try CheckpointManifest(jsonData: manifest.jsonData()).createdDate == Date(timeIntervalSince1970: 1_740_826_800.25))
    }
}
