#if canImport(Glibc)
import Glibc
#else
import Darwin
#endif
import Collectives

/// An event file that every rank of an exchange reads a share of, in stripes: the import and
/// the multi-rank batch scorer both parse it this way and route each event to the rank that
/// owns its customer, so that every owner sees its customers' rows in file order.
final class StripedEventFile {
    let path: String
    let source: CSVEventSource
    let layout: CSVLayout
    let fileBytes: Int
    let plan: StripePlan
    private let fd: Int32

    /// Opens `path` on every rank and probes its layout the way one pass would; `check` runs
    /// first on every rank (the caller's own validation). The ranks agree on failures and on
    /// the file's size, since a stale copy on one host would route nonsense.
    init(path: String, format: CSVFormat, bytesPerRank: Int, exchange: any Communicator, check: () throws -> Void = {}) throws {
        let source = CSVEventSource(path: path, format: format)
        let (fd, fileBytes, layout): (Int32, Int, CSVLayout) = try exchange.agreeing("opening \(path)") {
            try check()
            let layout = try source.probeLayout()
            let fd = open(path, O_RDONLY | O_CLOEXEC)
            guard fd >= 0 else { throw DataError.io(path: path, operation: "open", message: systemMessage()) }
            return (fd, fileSize(path) ?? 0, layout)
        }
        self.path = path
        self.source = source
        self.fd = fd
        self.fileBytes = fileBytes
        self.layout = layout
        plan = StripePlan(fileSize: fileBytes, ranks: exchange.size, bytesPerRank: max(1, bytesPerRank))
        let sizes = try exchange.allgather([Int64(fileBytes)])
        try exchange.onEveryRank("comparing the input's size") {
            guard Set(sizes).count == 1 else {
                throw DataError.invalidOption("\(path) has different sizes on the ranks (\(sizes.map(String.init).joined(separator: ", ")) bytes); every rank must read the same file")
            }
        }
    }

    deinit { _ = close(fd) }

    /// Parses this rank's share of stripe `round` into `sink`; returns the stats and the lines read.
    func read<Sink: EventSink>(round: Int, rank: Int, sink: Sink, rejects: RejectSink?) throws -> (ReadStats, Int) {
        let range = try plan.range(round: round, rank: rank, fd: fd, path: path)
        return try source.run(fd: fd, range: range, layout: layout, sink: sink, rejects: rejects)
    }

    /// The day of the file's last event, the same on every rank; `rejects` receives this
    /// rank's rejected rows with their file-wide line numbers.
    func lastEventDay(exchange: any Communicator, rejects: RejectsCollector? = nil) throws -> Int {
        let tracker = LastDayTracker()
        var linesBefore = 0
        for round in 0..<plan.rounds {
            let lines = try exchange.agreeing("finding the last event day") {
                try read(round: round, rank: exchange.rank, sink: tracker, rejects: rejects).1
            }
            if let rejects { try number(rejects, roundLines: lines, linesBefore: &linesBefore, exchange: exchange) }
        }
        return Int(try exchange.allreduceMax([Int64(tracker.lastDay)])[0])
    }

    /// Makes the line numbers of the rejects of the round just read file-wide: the ranks read
    /// the round's ranges in rank order, so a rank's lines follow those of the ranks before it.
    private func number(_ rejects: RejectsCollector, roundLines lines: Int, linesBefore: inout Int, exchange: any Communicator) throws {
        let lineCounts = try exchange.allgather([Int64(lines)])
        rejects.number(from: linesBefore + lineCounts[..<exchange.rank].reduce(0) { $0 + Int($1) })
        linesBefore += lineCounts.reduce(0) { $0 + Int($1) }
    }

    /// Parses every stripe, routes each event to its customer's owner and aggregates what this
    /// rank owns into `aggregates`. With `rejects`, their line numbers are made file-wide.
    /// Returns this rank's read stats.
    func aggregateOwnedCustomers(into aggregates: CustomerAggregates, rejects: RejectsCollector?, exchange: any Communicator) throws -> ReadStats {
        let router = EventRouter(for: aggregates, ranks: exchange.size)
        var stats = ReadStats()
        var linesBefore = 0
        for round in 0..<plan.rounds {
            let lines = try exchange.agreeing("reading \(path)") { () -> Int in
                let (roundStats, lines) = try read(round: round, rank: exchange.rank, sink: router, rejects: rejects)
                stats.add(roundStats)
                return lines
            }
            if let rejects { try number(rejects, roundLines: lines, linesBefore: &linesBefore, exchange: exchange) }
            try Importer.announceProducts(router: router, into: aggregates.products, exchange: exchange)
            try Importer.exchangeEvents(router: router, into: aggregates, exchange: exchange)
        }
        aggregates.finishAdding()
        return stats
    }
}
