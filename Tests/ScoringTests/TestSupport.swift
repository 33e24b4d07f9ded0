import Checkpoints
import CustomerData
import Foundation
import Models
import Scoring
import ScoringTestSupport
import Tensors
import TestSupport
import Testing


extension ScoringFixture {
    /// The events of `customer` in the fixture's event file as `POST /v1/score` event objects.
    func requestEvents(of customer: String) throws -> [String] {
        let lines = try String(contentsOfFile: eventsPath, encoding: .utf8).split(separator: "\n")
        let header = lines[0].split(separator: ",").map(String.init)
        var events: [String] = []
        for line in lines.dropFirst() {
            let fields = Dictionary(uniqueKeysWithValues: zip(header, line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)))
            guard fields["customer_id"] == customer else { continue }
            var event = "{\"date\":\"\(fields["timestamp"]!.prefix(10))\",\"amount\":\(fields["amount"]!)"
            if let q = fields["quantity"], !q.isEmpty { event += ",\"quantity\":\(q)" }
            if let o = fields["order_id"], !o.isEmpty { event += ",\"order_id\":\"\(o)\"" }
            if let p = fields["product_id"], !p.isEmpty { event += ",\"product_id\":\"\(p)\"" }
            events.append(event + "}")
        }
        return events
    }
}

/// Reads a CSV written by batch scoring into rows keyed by column name.
func readScoreCSV(_ path: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> [[String: String]] {
    let text = try String(contentsOfFile: path, encoding: .utf8)
    var lines = text.split(separator: "\n").map(String.init)
    let header = lines.removeFirst().split(separator: ",").map(String.init)
    return lines.map { line in
        let fields = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        #expect(fields.count == header.count, "row \(line)", sourceLocation: sourceLocation)
        return Dictionary(uniqueKeysWithValues: zip(header, fields))
    }
}

/// Polls `condition` until it holds or `deadline` passes; true when it held. For waiting on
/// what a service's watcher does in its own time: the wait ends with the event, not a guess.
func eventually(within deadline: Duration = .seconds(10), _ condition: () async throws -> Bool) async throws -> Bool {
    let clock = ContinuousClock()
    let end = clock.now + deadline
    while clock.now < end {
        if try await condition() { return true }
        try await Task.sleep(for: .milliseconds(20))
    }
    return try await condition()
}

/// Puts a damaged copy of a checkpoint into `run`'s directory under `root`, then points
/// `latest` at it. The checkpoint is saved (by `save`, into a staging store) and damaged before
/// `latest` names it, so a watcher can only ever see the damaged bytes; damaging it after
/// saving let a fast watcher load the intact step first.
func stageDamagedCheckpoint(step: Int, root: URL, run: String, save: (CheckpointStore) throws -> URL) throws {
    let staging = try TemporaryDirectory(prefix: "staging")
    let saved = try save(try CheckpointStore(root: staging.url, run: run, keep: 10))
    let file = saved.appendingPathComponent("model.safetensors")
    var bytes = try Data(contentsOf: file)
    bytes[bytes.count / 2] ^= 0xFF
    try bytes.write(to: file)
    let runDirectory = root.appendingPathComponent(run)
    try FileManager.default.moveItem(at: saved, to: runDirectory.appendingPathComponent(saved.lastPathComponent))
    let pointer = runDirectory.appendingPathComponent(".latest-staging")
    try Data("\(saved.lastPathComponent)\n".utf8).write(to: pointer)
    // rename(2) replaces the pointer in one step, as CheckpointStore moves it.
    guard rename(pointer.path, runDirectory.appendingPathComponent(CheckpointStore.latestFileName).path) == 0 else {
        throw CocoaError(.fileWriteUnknown)
    }
}
