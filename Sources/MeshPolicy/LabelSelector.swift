import MeshCore

/// A label expression, as in Kubernetes selectors: requirements joined by commas, all of
/// which must hold. `app=api`, `env in (prod,staging)`, `tier!=debug`, `env notin (dev)`,
/// `has(pci)`, `!has(debug)`.
public struct LabelSelector: Sendable, Equatable, CustomStringConvertible {
    public enum Requirement: Sendable, Equatable {
        case equals(String, String)
        case notEquals(String, String)
        case isIn(String, Set<String>)
        case notIn(String, Set<String>)
        case exists(String)
        case doesNotExist(String)

        func matches(_ labels: [String: String]) -> Bool {
            switch self {
            case .equals(let key, let value): return labels[key] == value
            case .notEquals(let key, let value): return labels[key] != value
            case .isIn(let key, let values): return labels[key].map(values.contains) ?? false
            case .notIn(let key, let values): return !(labels[key].map(values.contains) ?? false)
            case .exists(let key): return labels[key] != nil
            case .doesNotExist(let key): return labels[key] == nil
            }
        }
    }

    public let requirements: [Requirement]
    public let description: String

    /// Parses an expression.
    /// - Throws: ``MeshError`` `invalid-request` naming the part that does not parse.
    public init(parsing text: String) throws {
        var requirements: [Requirement] = []
        for part in Self.splitTopLevel(text) {
            let item = part.trimmingCharacters(in: " ")
            guard !item.isEmpty else { continue }
            requirements.append(try Self.parseRequirement(item, in: text))
        }
        guard !requirements.isEmpty else {
            throw MeshError(.invalidRequest, "label expression '\(text)' is empty")
        }
        self.requirements = requirements
        self.description = text
    }

    public func matches(_ labels: [String: String]) -> Bool {
        requirements.allSatisfy { $0.matches(labels) }
    }

    /// Commas inside `( … )` belong to a value list, not between requirements.
    private static func splitTopLevel(_ text: String) -> [String] {
        var parts: [String] = []
        var current = ""
        var depth = 0
        for char in text {
            if char == "(" { depth += 1 }
            if char == ")" { depth -= 1 }
            if char == "," && depth == 0 {
                parts.append(current)
                current = ""
            } else {
                current.append(char)
            }
        }
        parts.append(current)
        return parts
    }

    private static func parseRequirement(_ item: String, in text: String) throws -> Requirement {
        func fail(_ why: String) -> MeshError {
            MeshError(.invalidRequest, "label expression '\(text)': '\(item)' \(why); use key=value, key!=value, key in (a,b), key notin (a,b), has(key) or !has(key)")
        }
        func key(_ raw: Substring) throws -> String {
            let key = String(raw).trimmingCharacters(in: " ")
            guard !key.isEmpty, key.count <= 63, key.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "-_./".contains($0)) }) else {
                throw fail("has an invalid key")
            }
            return key
        }
        if item.hasPrefix("!has(") && item.hasSuffix(")") {
            return .doesNotExist(try key(item.dropFirst(5).dropLast()))
        }
        if item.hasPrefix("has(") && item.hasSuffix(")") {
            return .exists(try key(item.dropFirst(4).dropLast()))
        }
        if let range = item.firstRange(of: " notin ") ?? item.firstRange(of: " in ") {
            let isNot = item[range].contains("notin")
            let name = try key(item[..<range.lowerBound])
            let rest = String(item[range.upperBound...]).trimmingCharacters(in: " ")
            guard rest.hasPrefix("("), rest.hasSuffix(")") else { throw fail("needs a value list in parentheses") }
            let values = Set(rest.dropFirst().dropLast().split(separator: ",").map { String($0).trimmingCharacters(in: " ") }
                .filter { !$0.isEmpty })
            guard !values.isEmpty else { throw fail("has an empty value list") }
            return isNot ? .notIn(name, values) : .isIn(name, values)
        }
        if let range = item.firstRange(of: "!=") {
            return .notEquals(try key(item[..<range.lowerBound]), String(item[range.upperBound...]).trimmingCharacters(in: " "))
        }
        if let range = item.firstRange(of: "==") ?? item.firstRange(of: "=") {
            return .equals(try key(item[..<range.lowerBound]), String(item[range.upperBound...]).trimmingCharacters(in: " "))
        }
        throw fail("is not a requirement")
    }
}

extension String {
    func trimmingCharacters(in set: Character) -> String {
        var slice = Substring(self)
        while slice.first == set { slice.removeFirst() }
        while slice.last == set { slice.removeLast() }
        return String(slice)
    }
}
