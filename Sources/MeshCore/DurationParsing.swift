/// Parses durations as operators write them: `90s`, `10m`, `24h`, `500ms`, `1h30m`.
public enum DurationParser {
    /// - Returns: the duration in seconds.
    /// - Throws: ``MeshError`` `invalid-duration` with the accepted units.
    public static func seconds(_ text: String) throws -> Double {
        let hint = "use a number with a unit, e.g. 500ms, 30s, 10m, 24h or 1h30m"
        var total = 0.0
        var number = ""
        var unit = ""
        var sawAny = false
        func flush() throws {
            guard let value = Double(number) else {
                throw MeshError(.invalidDuration, "duration '\(text)' is not valid: \(hint)")
            }
            let factor: Double
            switch unit {
            case "ms": factor = 0.001
            case "s": factor = 1
            case "m": factor = 60
            case "h": factor = 3600
            case "d": factor = 86400
            default: throw MeshError(.invalidDuration, "duration '\(text)' has unknown unit '\(unit)': \(hint)")
            }
            total += value * factor
            number = ""
            unit = ""
            sawAny = true
        }
        for char in text {
            if char.isNumber || char == "." {
                if !unit.isEmpty { try flush() }
                number.append(char)
            } else if char.isLetter {
                guard !number.isEmpty else {
                    throw MeshError(.invalidDuration, "duration '\(text)' is not valid: \(hint)")
                }
                unit.append(char)
            } else {
                throw MeshError(.invalidDuration, "duration '\(text)' is not valid: \(hint)")
            }
        }
        if !number.isEmpty { try flush() }
        guard sawAny, total > 0 else {
            throw MeshError(.invalidDuration, "duration '\(text)' must be positive: \(hint)")
        }
        return total
    }
}
