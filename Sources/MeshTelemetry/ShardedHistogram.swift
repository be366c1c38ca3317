import Synchronization

/// One event loop's part of a histogram series: its samples, recorded without a lock.
///
/// swift-prometheus' `Histogram` takes a mutex for every sample and walks all its buckets
/// (about 280 instructions; the caller's proxy records five samples a request), and every
/// event loop of a proxy takes the same lock. A shard has one writer, the loop it belongs to,
/// so a sample is a few relaxed atomic loads and stores (plain moves on x86, no locked
/// instruction); a scrape reads every shard of the series and adds them up
/// (``HistogramSeries``), as per-thread histograms in Envoy and Linkerd do.
///
/// Record from the shard's own event loop only: two writers would lose counts (never
/// memory safety: every cell is an atomic).
public final class HistogramShard: @unchecked Sendable {
    /// Upper bounds of the buckets (`le`), ascending.
    private let bounds: UnsafeMutableBufferPointer<Double>
    /// Samples per bucket (not cumulative), then those above the last bound, then the sum's
    /// bits.
    private let cells: UnsafeMutablePointer<Atomic<UInt64>>
    private var cellCount: Int { bounds.count + 2 }

    init(bounds: [Double]) {
        self.bounds = .allocate(capacity: bounds.count)
        _ = self.bounds.initialize(from: bounds)
        cells = .allocate(capacity: bounds.count + 2)
        for index in 0..<(bounds.count + 2) { (cells + index).initialize(to: Atomic(0)) }
    }

    deinit {
        cells.deinitialize(count: cellCount)
        cells.deallocate()
        bounds.deallocate()
    }

    /// Counts `value` in the first bucket whose bound is at least `value`, and adds it to the
    /// sum.
    public func record(_ value: Double) {
        var index = 0
        while index < bounds.count, value > bounds[index] { index += 1 }
        let cell = cells + index
        cell.pointee.store(cell.pointee.load(ordering: .relaxed) &+ 1, ordering: .relaxed)
        let sum = cells + bounds.count + 1
        sum.pointee.store((Double(bitPattern: sum.pointee.load(ordering: .relaxed)) + value).bitPattern, ordering: .relaxed)
    }

    /// Adds this shard's counts (one per bucket, then the overflow) and sum to `counts` and
    /// `sum`.
    func add(into counts: inout [UInt64], sum: inout Double) {
        for index in 0...bounds.count { counts[index] &+= (cells + index).pointee.load(ordering: .relaxed) }
        sum += Double(bitPattern: (cells + bounds.count + 1).pointee.load(ordering: .relaxed))
    }
}

/// One series (a metric name and label set) of a histogram whose samples are recorded in
/// per-loop ``HistogramShard``s; rendered by ``ProxyMetrics/exposition()`` in Prometheus' text
/// format, as swift-prometheus renders its own histograms.
final class HistogramSeries: Sendable {
    /// `name="value",…`, escaped.
    let labels: String
    let buckets: [Double]
    /// Every shard ever made: a loop keeps its edges for good, and counts never go down.
    private let shards = Mutex<[HistogramShard]>([])

    init(labels: String, buckets: [Double]) {
        self.labels = labels
        self.buckets = buckets
    }

    /// Labels as a series line carries them: `name="value",…`, values escaped.
    static func render(_ labels: [(String, String)]) -> String {
        labels.map { "\($0.0)=\"\(escape($0.1, quotes: true))\"" }.joined(separator: ",")
    }

    /// A new shard of this series, for one event loop.
    func makeShard() -> HistogramShard {
        let shard = HistogramShard(bounds: buckets)
        shards.withLock { $0.append(shard) }
        return shard
    }

    /// The `_bucket` lines (cumulative, `+Inf` last), `_sum` and `_count` of this series.
    /// `_count` is the `+Inf` bucket, so the two always agree, whatever a loop records
    /// meanwhile.
    func emit(name: String, into buffer: inout [UInt8]) {
        var counts = [UInt64](repeating: 0, count: buckets.count + 1)
        var sum = 0.0
        for shard in shards.withLock({ $0 }) { shard.add(into: &counts, sum: &sum) }
        let separator = labels.isEmpty ? "" : ","
        var cumulative: UInt64 = 0
        for (index, bound) in buckets.enumerated() {
            cumulative &+= counts[index]
            buffer.append(contentsOf: "\(name)_bucket{\(labels)\(separator)le=\"\(bound.description)\"} \(cumulative)\n".utf8)
        }
        cumulative &+= counts[buckets.count]
        buffer.append(contentsOf: "\(name)_bucket{\(labels)\(separator)le=\"+Inf\"} \(cumulative)\n".utf8)
        let braced = labels.isEmpty ? "" : "{\(labels)}"
        buffer.append(contentsOf: "\(name)_sum\(braced) \(sum.description)\n".utf8)
        buffer.append(contentsOf: "\(name)_count\(braced) \(cumulative)\n".utf8)
    }

    /// Text as the exposition format wants it: backslash and line feed escaped, and double
    /// quotes too in a label value (`quotes`).
    static func escape(_ value: String, quotes: Bool) -> String {
        var out = ""
        for character in value {
            switch character {
            case "\\": out += "\\\\"
            case "\"" where quotes: out += "\\\""
            case "\n": out += "\\n"
            default: out.append(character)
            }
        }
        return out
    }
}

/// The histograms recorded in shards, by metric name, then label set: made once per series,
/// rendered after the registry's metrics.
final class ShardedHistograms: Sendable {
    private struct Family {
        var help: String
        var series: [String: HistogramSeries] = [:]
    }

    private let families = Mutex<[String: Family]>([:])

    /// A new shard of the series `name` with `labels` (the series is made on first use).
    func shard(name: String, help: String, labels: [(String, String)], buckets: [Double]) -> HistogramShard {
        let rendered = HistogramSeries.render(labels)
        let series = families.withLock { families in
            var family = families[name] ?? Family(help: help)
            if let known = family.series[rendered] { return known }
            let series = HistogramSeries(labels: rendered, buckets: buckets)
            family.series[rendered] = series
            families[name] = family
            return series
        }
        return series.makeShard()
    }

    /// Every family: `# HELP`, `# TYPE histogram`, then its series, in name and label order.
    func emit(into buffer: inout [UInt8]) {
        let families = self.families.withLock { $0 }
        for name in families.keys.sorted() {
            guard let family = families[name] else { continue }
            let help = HistogramSeries.escape(family.help, quotes: false)
            buffer.append(contentsOf: "# HELP \(name) \(help)\n# TYPE \(name) histogram\n".utf8)
            for labels in family.series.keys.sorted() { family.series[labels]?.emit(name: name, into: &buffer) }
        }
    }
}
