/// A fast random source for the data path (SplitMix64, seeded from the system's generator;
/// one per event loop): sampling decisions, the ids of unsampled traces, the balancer's two
/// choices. Not for secrets: trace ids travel in clear headers anyway.
struct FastRandom {
    private var state: UInt64

    init() { state = UInt64.random(in: 1...UInt64.max) }

    /// The same sequence on every run (tests that generate their cases).
    init(seed: UInt64) { state = seed }

    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }

    /// True with probability `ratio`.
    mutating func chance(_ ratio: Double) -> Bool {
        ratio >= 1 || (ratio > 0 && Double(next() >> 11) * 0x1p-53 < ratio)
    }

    /// A number in `0..<bound` (bound > 0).
    mutating func below(_ bound: Int) -> Int {
        Int(next() % UInt64(bound))
    }
}
