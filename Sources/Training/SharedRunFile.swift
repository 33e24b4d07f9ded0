import Checkpoints
import Collectives
import Foundation

/// Writes one run file from every rank's rows, in rank order after rank 0's header: each rank
/// writes its own bytes at its offset in a temporary file rank 0 created, and rank 0 renames
/// the whole into place once every rank has finished, so no rank handles another's rows and a
/// reader sees the old file or the whole new one. Returns the bytes this rank wrote.
@discardableResult
func writeSharedRunFile(header: String, rows: [UInt8], to url: URL, world: any Communicator) throws -> Int {
    let headerBytes = Array(header.utf8)
    let sizes = try world.allgather([Int64(rows.count)])
    let offset = headerBytes.count + sizes[..<world.rank].reduce(0) { $0 + Int($1) }
    let created: SharedFileWriter? = try world.agreeing("creating \(url.path)") {
        world.rank == 0 ? try SharedFileWriter.create(for: url) : nil
    }
    let temporary = try world.broadcast(string: created?.temporary.path ?? "", root: 0)
    do {
        try world.agreeing("writing \(url.path)") {
            let writer = try created ?? SharedFileWriter.join(URL(fileURLWithPath: temporary), for: url)
            if world.rank == 0 { try headerBytes.withUnsafeBytes { try writer.write($0, at: 0) } }
            try rows.withUnsafeBytes { try writer.write($0, at: offset) }
            if created == nil { try writer.finish() }
        }
        try world.agreeing("committing \(url.path)") { try created?.commit() }
    } catch {
        created?.abandon()
        throw error
    }
    return rows.count + (world.rank == 0 ? headerBytes.count : 0)
}
