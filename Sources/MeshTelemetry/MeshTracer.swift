import Logging
import OTel
import ServiceLifecycle
import Tracing

/// The proxy's tracer: a span per hop, exported over OTLP/HTTP by swift-otel.
///
/// One per proxy rather than swift-otel's global bootstrap, so that every proxy of the demo
/// (several in one process) reports under its own `service.name`. Only W3C Trace Context
/// is propagated (`traceparent`, `tracestate`); the proxy turns B3 input into it.
public final class MeshTracer: Sendable {
    public let tracer: any Tracer
    /// Share of new traces recorded. The proxy rolls this dice itself and asks the tracer for a
    /// span only when a trace is sampled (by it or by a trusted caller): an unsampled request
    /// costs a header, not a span.
    public let samplingRatio: Double
    private let services: ServiceGroup

    /// - Parameters:
    ///   - endpoint: the OTLP/HTTP traces URL (`http://collector:4318/v1/traces`); a URL
    ///     without a path gets `/v1/traces`.
    ///   - samplingRatio: share of new traces recorded (0…1); a sampled caller's decision is
    ///     kept (parent-based), so a trace is never cut in the middle.
    public init(endpoint: String, serviceName: String, samplingRatio: Double, logger: Logger) throws(TracingSetupError) {
        guard endpoint.hasPrefix("http://") || endpoint.hasPrefix("https://") else {
            throw TracingSetupError(message: "trace endpoint '\(endpoint)' must be an http:// or https:// URL, e.g. http://127.0.0.1:4318/v1/traces")
        }
        guard (0...1).contains(samplingRatio) else {
            throw TracingSetupError(message: "trace sampling ratio \(samplingRatio) must be between 0 and 1")
        }
        self.samplingRatio = samplingRatio
        let afterScheme = endpoint.split(separator: "/", omittingEmptySubsequences: true).dropFirst(2)
        var configuration = OTel.Configuration.default
        configuration.serviceName = serviceName
        configuration.propagators = [.traceContext]
        configuration.metrics.enabled = false
        configuration.logs.enabled = false
        configuration.traces.enabled = true
        // Spans are only started for sampled traces (see `samplingRatio`): keep them all.
        configuration.traces.sampler = .parentBasedAlwaysOn
        configuration.traces.exporter = .otlp
        configuration.traces.otlpExporter.protocol = .httpProtobuf
        configuration.traces.otlpExporter.endpoint = afterScheme.isEmpty
            ? (endpoint.hasSuffix("/") ? endpoint + "v1/traces" : endpoint + "/v1/traces") : endpoint
        // Spans leave within a second; the batch queue is bounded (drops beyond it).
        configuration.traces.batchSpanProcessor.scheduleDelay = .seconds(1)
        configuration.traces.batchSpanProcessor.maxQueueSize = 2048
        configuration.diagnosticLogger = .custom(logger)
        do {
            let backend = try OTel.makeTracingBackend(configuration: configuration)
            tracer = backend.factory
            services = ServiceGroup(services: [backend.service], gracefulShutdownSignals: [], cancellationSignals: [], logger: logger)
        } catch {
            throw TracingSetupError(message: "cannot set up tracing to \(endpoint): \(error)")
        }
    }

    /// Runs the exporter until ``shutdown()``.
    public func run() async {
        try? await services.run()
    }

    /// Exports what is queued, then stops.
    public func shutdown() async {
        await services.triggerGracefulShutdown()
    }
}

/// Tracing could not be set up as configured.
public struct TracingSetupError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}
