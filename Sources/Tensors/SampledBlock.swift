/// One layer's sampled bipartite graph: destination nodes are the first `destinationCount` of
/// the `sourceCount` source nodes (so a node's own representation is row i of the input), and
/// `offsets`/`neighbours` are the CSR of sampled edges per destination. A neighbour sampled
/// twice counts twice in the mean.
public struct SampledBlock: Sendable, Equatable {
    public var sourceCount: Int
    public var destinationCount: Int
    public var offsets: [Int32]
    public var neighbours: [Int32]

    public init(sourceCount: Int, destinationCount: Int, offsets: [Int32], neighbours: [Int32]) {
        precondition(offsets.count == destinationCount + 1, "offsets needs destinationCount + 1 entries")
        precondition(destinationCount <= sourceCount, "destinations are a prefix of the sources")
        self.sourceCount = sourceCount
        self.destinationCount = destinationCount
        self.offsets = offsets
        self.neighbours = neighbours
    }
}
