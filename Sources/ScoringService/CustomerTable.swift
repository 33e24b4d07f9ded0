import CMemoryHints
import CustomerData
import Foundation
import Logging
import Scoring
import Synchronization

/// The event file `GET /v1/customers/{id}` answers from: `clm-score serve --events FILE`.
public struct CustomerEventsSource: Sendable {
    public var path: String
    public var options: EventFileOptions
    /// The day scores are as of; nil: the file's last event day, found again at every reload.
    public var asOf: Int?

    public init(path: String, options: EventFileOptions, asOf: Int?) {
        self.path = path
        self.options = options
        self.asOf = asOf
    }
}

/// The scored event file being served, rebuilt when the file or the served checkpoint changes.
///
/// Like a checkpoint reload: the new table is read and scored on the watcher's thread while the
/// old one keeps answering, and is swapped in as one reference once complete. A rebuild that
/// fails (a damaged file) is logged and counted, and the old table stays; the same file is not
/// tried again until it changes. A request takes the table reference once, so a swap never
/// changes the table under it.
public final class CustomerTable: Sendable {
    public let source: CustomerEventsSource
    private let served = Mutex<ScoredEventFile?>(nil)
    /// What the last build attempt, good or bad, was made from.
    private let lastAttempt = Mutex<Origin?>(nil)
    private let metrics: ServiceMetrics?
    private let logger: Logger
    private let threads: Int?

    /// The file's identity and the checkpoint: a table is current while both are unchanged.
    struct Origin: Equatable {
        var file: FileIdentity
        var checkpoint: String
    }

    /// Device, inode, size and modification time: replacing the file (by rename, or by
    /// rewriting it) changes at least one.
    struct FileIdentity: Equatable {
        var device: UInt64, inode: UInt64, size: Int64, modifiedNanoseconds: Int64

        init?(path: String) {
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            device = UInt64(info.st_dev)
            inode = UInt64(info.st_ino)
            size = Int64(info.st_size)
            modifiedNanoseconds = Int64(info.st_mtim.tv_sec) * 1_000_000_000 + Int64(info.st_mtim.tv_nsec)
        }
    }

    public init(source: CustomerEventsSource, metrics: ServiceMetrics?, logger: Logger, threads: Int? = nil) {
        self.source = source
        self.metrics = metrics
        self.logger = logger
        self.threads = threads
    }

    /// The table being served; nil before the first build.
    public var current: ScoredEventFile? { served.withLock { $0 } }

    /// Builds the table when the file or `scorer`'s checkpoint differs from the last attempt.
    ///
    /// Returns true when a new table is now served. Throws only what `ScoredEventFile` throws
    /// (the start uses it to refuse a file that cannot be served); the watcher logs instead.
    @discardableResult
    public func reloadIfChanged(scorer: LSTMScorer?, rules: ScoringRules) throws -> Bool {
        guard let scorer else { return false }
        guard let file = FileIdentity(path: source.path) else {
            let origin = Origin(file: FileIdentity.missing, checkpoint: scorer.model.info.path)
            if lastAttempt.withLock({ $0 }) != origin {
                lastAttempt.withLock { $0 = origin }
                throw ScoringError.io(path: source.path, reason: "cannot read the --events file (\(String(cString: strerror(errno))))")
            }
            return false
        }
        let origin = Origin(file: file, checkpoint: scorer.model.info.path)
        guard origin != lastAttempt.withLock({ $0 }) else { return false }
        lastAttempt.withLock { $0 = origin }
        let table = try ScoredEventFile(path: source.path, options: source.options, asOf: source.asOf, scorer: scorer,
                                        rules: rules, threads: threads)
        // A file rewritten while it was read would give a table of neither version: read it again next poll.
        guard FileIdentity(path: source.path) == file else {
            lastAttempt.withLock { $0 = nil }
            logger.warning("\(source.path) changed while it was read; reading it again at the next poll")
            return false
        }
        served.withLock { $0 = table }
        // The build's aggregates and features are freed by now, but glibc keeps their pages:
        // without this the process would stay at the build's peak for as long as it serves.
        clm_release_free_memory()
        metrics?.recordTableReload(customers: table.customerCount, seconds: table.buildSeconds)
        logger.info("answering GET /v1/customers/{id} for \(table.customerCount) customers of \(source.path) as of \(ByteParsing.isoDate(table.asOfDay)) with run '\(table.model.run)' step \(table.model.step), built in \(String(format: "%.2f", table.buildSeconds)) s")
        return true
    }

    /// Follows the file and the served checkpoint every `interval` until the task is cancelled.
    public func watch(every interval: Duration, scorer: CheckpointScorer) async {
        while !Task.isCancelled {
            try? await Task.sleep(for: interval)
            if Task.isCancelled { break }
            // Reading and scoring a file takes seconds: keep it off the cooperative pool's threads.
            await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                DispatchQueue.global(qos: .utility).async {
                    self.reloadLogging(scorer: scorer)
                    continuation.resume()
                }
            }
        }
    }

    /// One poll: a failed build is counted and logged, and the table before keeps serving.
    func reloadLogging(scorer: CheckpointScorer) {
        do {
            try reloadIfChanged(scorer: scorer.servedLSTM, rules: scorer.rules)
        } catch {
            metrics?.recordRefusedTableReload()
            let keeping = current.map { "the table of \($0.customerCount) customers built before keeps serving" } ?? "GET /v1/customers/{id} answers 503"
            logger.error("cannot serve \(source.path) by customer id: \(error); \(keeping)")
        }
    }
}

extension CustomerTable.FileIdentity {
    /// Stands for a file that could not be read, so its absence is reported once.
    static let missing = Self(device: .max, inode: .max, size: -1, modifiedNanoseconds: -1)

    init(device: UInt64, inode: UInt64, size: Int64, modifiedNanoseconds: Int64) {
        self.device = device
        self.inode = inode
        self.size = size
        self.modifiedNanoseconds = modifiedNanoseconds
    }
}
