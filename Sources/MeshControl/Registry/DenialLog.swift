import MeshCore

/// The most recent denials reported by proxies, by request id, for
/// `mesh explain --request-id` and the dashboard. Bounded: the oldest are forgotten first.
public actor DenialLog {
    private var records: [String: DenialRecord] = [:]
    private var order: [String] = []
    private let capacity: Int

    public init(capacity: Int = 10_000) { self.capacity = capacity }

    public func add(_ batch: [DenialRecord]) {
        for record in batch where records[record.requestID] == nil {
            records[record.requestID] = record
            order.append(record.requestID)
        }
        if order.count > capacity {
            for id in order.prefix(order.count - capacity) { records[id] = nil }
            order.removeFirst(order.count - capacity)
        }
    }

    public func find(_ requestID: String) -> DenialRecord? { records[requestID] }

    /// The latest `limit` denials, newest first, optionally only those of one destination.
    public func recent(limit: Int, destination: ServiceName? = nil) -> [DenialRecord] {
        var result: [DenialRecord] = []
        for id in order.reversed() where result.count < limit {
            guard let record = records[id] else { continue }
            if let destination, record.destination != destination { continue }
            result.append(record)
        }
        return result
    }
}
