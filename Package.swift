// swift-tools-version:6.1
// SwiftMesh — a zero-trust service mesh. See ARCHITECTURE.md for the layer map.
import PackageDescription

let nio: [Target.Dependency] = [
    .product(name: "NIOCore", package: "swift-nio"),
    .product(name: "NIOPosix", package: "swift-nio"),
    .product(name: "NIOHTTP1", package: "swift-nio"),
    .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
]
let tls: [Target.Dependency] = [
    .product(name: "NIOSSL", package: "swift-nio-ssl"),
    .product(name: "NIOTLS", package: "swift-nio"),
]
let log: Target.Dependency = .product(name: "Logging", package: "swift-log")

// Release link of `mesh` (scripts/build-release.sh adds the compiler side): lld, so that
// - the functions a running sidecar executes (Sources/mesh/symbol-order.txt, written by
//   bench/symbol-order.sh) sit together at the front of the code: the kernel maps code 64 KB
//   around each page touched, and spread over the whole binary they kept 20+ MB resident;
// - the private functions that have no symbol to order by sit together in front of them
//   (Sources/mesh/code-layout.ld: they kept another 4 MB resident);
// - relative relocations are packed (RELR): 3.5 MB of them were read at every start;
// - only the symbols the loader needs are exported (a static runtime exports everything).
let releaseLink: [LinkerSetting] = [
    .unsafeFlags([
        "-use-ld=lld",
        "-Xlinker", "-z", "-Xlinker", "pack-relative-relocs",
        "-Xlinker", "--symbol-ordering-file=\(Context.packageDirectory)/Sources/mesh/symbol-order.txt",
        "-Xlinker", "--no-warn-symbol-ordering",
        "-Xlinker", "-T", "-Xlinker", "\(Context.packageDirectory)/Sources/mesh/code-layout.ld",
        "-Xlinker", "--no-export-dynamic",
    ], .when(platforms: [.linux], configuration: .release)),
]

let package = Package(
    name: "SwiftMesh",
    platforms: [.macOS(.v14)],
    products: [
        .executable(name: "mesh", targets: ["mesh"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
        .package(url: "https://github.com/apple/swift-nio-ssl.git", from: "2.37.6"),
        .package(url: "https://github.com/apple/swift-nio-http2.git", from: "1.46.0"),
        .package(url: "https://github.com/apple/swift-certificates.git", from: "1.21.1"),
        .package(url: "https://github.com/apple/swift-crypto.git", "3.12.3"..<"5.0.0"),
        .package(url: "https://github.com/apple/swift-asn1.git", from: "1.7.4"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/vapor/sqlite-nio.git", from: "1.13.2"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/jpsim/Yams.git", from: "6.2.2"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        // Tracing: the OTLP/HTTP exporter only (no gRPC stack in the binary).
        .package(url: "https://github.com/swift-otel/swift-otel.git", from: "1.6.0", traits: ["OTLPHTTP"]),
        .package(url: "https://github.com/apple/swift-distributed-tracing.git", from: "1.7.3"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
    ],
    targets: [
        // Layer 0: pure vocabulary, no NIO.
        .target(name: "MeshCore"),
        .target(name: "MeshIdentity", dependencies: [
            "MeshCore",
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
        ]),
        // Policy model, path normalization, evaluator and explanations: pure, no NIO.
        .target(name: "MeshPolicy", dependencies: ["MeshCore"]),
        // Layer 1: storage, transport.
        .target(name: "MeshStore", dependencies: [
            "MeshCore", log,
            .product(name: "SQLiteNIO", package: "sqlite-nio"),
            .product(name: "PostgresNIO", package: "postgres-nio"),
            .product(name: "NIOSSL", package: "swift-nio-ssl"),
            .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
        ]),
        .target(name: "MeshTransport", dependencies: ["MeshCore", "MeshIdentity", log] + nio + tls + [
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
        ]),
        // Metrics exposition (swift-prometheus), access logs, tracing (swift-otel over OTLP/HTTP).
        .target(name: "MeshTelemetry", dependencies: [
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "OTel", package: "swift-otel"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            log,
        ]),
        // Layer 2: data plane and control plane.
        .target(name: "MeshProxy", dependencies: ["MeshCore", "MeshIdentity", "MeshPolicy", "MeshTelemetry", "MeshTransport", log] + nio + tls + [
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            .product(name: "Prometheus", package: "swift-prometheus"),
            .product(name: "Tracing", package: "swift-distributed-tracing"),
            .product(name: "X509", package: "swift-certificates"),
        ]),
        .target(name: "MeshControl", dependencies: ["MeshCore", "MeshIdentity", "MeshPolicy", "MeshStore", "MeshTransport", log] + nio + tls + [
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Crypto", package: "swift-crypto"),
        ], resources: [
            // The dashboard, compiled into the binary (PackageResources.index_html, …).
            .embedInCode("Dashboard/index.html"),
            .embedInCode("Dashboard/dashboard.css"),
            .embedInCode("Dashboard/dashboard.js"),
        ]),
        // Layer 3: the command line.
        .target(name: "MeshCLI", dependencies: [
            "MeshCore", "MeshIdentity", "MeshPolicy", "MeshStore", "MeshTransport", "MeshProxy", "MeshControl", log,
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
            .product(name: "Yams", package: "Yams"),
        ] + nio),
        .executableTarget(name: "mesh", dependencies: ["MeshCLI"], exclude: ["symbol-order.txt", "code-layout.ld"], linkerSettings: releaseLink),

        // Test fixtures shared by the test targets.
        .target(name: "MeshTesting", dependencies: [
            "MeshCore", "MeshIdentity", "MeshTransport", log,
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Crypto", package: "swift-crypto"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
            // A real WebSocket server for the WebSocket-through-the-mesh test.
            .product(name: "NIOWebSocket", package: "swift-nio"),
        ] + nio + tls, path: "Tests/MeshTesting"),
        .testTarget(name: "MeshCoreTests", dependencies: ["MeshCore"]),
        .testTarget(name: "MeshPolicyTests", dependencies: ["MeshPolicy", "MeshCore"]),
        .testTarget(name: "MeshIdentityTests", dependencies: [
            "MeshIdentity", "MeshTesting", "MeshCore",
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "SwiftASN1", package: "swift-asn1"),
        ]),
        .testTarget(name: "MeshControlTests", dependencies: ["MeshControl", "MeshStore", "MeshCore", log]),
        .testTarget(name: "MeshStoreTests", dependencies: ["MeshStore", "MeshCore", "MeshTesting", log]),
        .testTarget(name: "MeshTelemetryTests", dependencies: ["MeshTelemetry"]),
        .testTarget(name: "MeshProxyTests", dependencies: ["MeshProxy", "MeshTransport", "MeshCore", "MeshIdentity", .product(name: "NIOEmbedded", package: "swift-nio")] + nio),
        // Depends on `mesh` so that `swift test` builds the binary the tests start.
        .testTarget(name: "IntegrationTests", dependencies: [
            "mesh", "MeshCore", "MeshIdentity", "MeshTransport", "MeshTesting",
            .product(name: "NIOHTTP2", package: "swift-nio-http2"),
            .product(name: "NIOHPACK", package: "swift-nio-http2"),
            .product(name: "X509", package: "swift-certificates"),
            .product(name: "Crypto", package: "swift-crypto"),
        ] + nio + tls),
    ]
)

// scripts/build-release.sh builds without the run-time exclusivity checks
// (`-enforce-exclusivity=unchecked`): in SwiftNIO's and the other libraries' code, where they
// were 16 % of a sidecar's instructions. SwiftMesh's own modules keep them in every build:
// they are the code that changes, and an overlapping access there stops the proxy instead of
// corrupting its memory.
for target in package.targets where target.type != .test && target.name != "MeshTesting" {
    target.swiftSettings = (target.swiftSettings ?? []) + [.unsafeFlags(["-Xfrontend", "-enforce-exclusivity=checked"])]
}
