import Collectives
import Foundation
import Testing
@testable import Training

@Suite struct SharedStorageCheckTests {
    func temporaryDirectory() throws -> URL {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("shared-check-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
        return url
    }

    @Test func oneRankPassesAndLeavesNoTokenBehind() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root) }
        let checkpoints = root.appendingPathComponent("checkpoints/nested")
        var reported: [String] = []
        let hosts = try SharedStorageCheck.run(checkpointRoot: checkpoints.path, datasetPath: root.path,
                                               world: SingleProcessCommunicator()) { reported.append($0) }
        #expect(hosts.count == 1 && hosts[0] == SharedStorageCheck.localHostname())
        #expect(reported == ["placement: \(hosts[0]) rank 0"])
        #expect(try FileManager.default.contentsOfDirectory(atPath: checkpoints.path).isEmpty,
                "the token must be removed after the check")
    }

    @Test func aMissingDatasetStopsTheJobNamingTheRank() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root) }
        let error = #expect(throws: AgreementError.self) {
            try SharedStorageCheck.run(checkpointRoot: root.path, datasetPath: root.appendingPathComponent("absent").path,
                                       world: SingleProcessCommunicator())
        }
        #expect(error?.message.contains("rank 0 (\(SharedStorageCheck.localHostname())) cannot see the dataset directory") == true,
                "\(String(describing: error))")
    }

    @Test func aCopyOfTheTokenIsNotTheSharedDirectory() throws {
        let root = try temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: root) }
        try Data("stale".utf8).write(to: root.appendingPathComponent(".shared-check-1"))
        #expect(SharedStorageCheck.inspect(checkpointRoot: root.path, tokenName: ".shared-check-1", expected: "fresh",
                                           datasetPath: root.path) == .tokenDiffers)
        #expect(SharedStorageCheck.inspect(checkpointRoot: root.path, tokenName: ".shared-check-2", expected: "fresh",
                                           datasetPath: root.path) == .tokenMissing)
    }

    @Test func theMessageGroupsRanksByProblemWithTheirHosts() {
        let message = SharedStorageCheck.describe(
            [[], [], [.tokenMissing, .datasetMissing], [.tokenMissing]], hosts: ["a", "a", "b", "b"],
            checkpointRoot: "/shared/ckpt", datasetPath: "/shared/data")
        #expect(message?.contains("ranks 2 (b), 3 (b) cannot read the token rank 0 (a) wrote into the checkpoint root /shared/ckpt") == true,
                "\(message ?? "nil")")
        #expect(message?.contains("rank 2 (b) cannot see the dataset directory /shared/data") == true)
        #expect(SharedStorageCheck.describe([[], []], hosts: ["a", "b"], checkpointRoot: "/c", datasetPath: "/d") == nil)
        #expect(SharedStorageCheck.placement(["a", "b", "a"]) == "placement: a ranks 0,2; b rank 1")
    }
}
