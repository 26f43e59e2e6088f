'use strict';
// OpenTelemetry execution spans for the worker (optional).
//
// The control plane puts the W3C trace context of the task attempt's span into
// Assignment.trace_context (keys "traceparent", "tracestate"); each execution span is
// its child: name "execute <task_name>" (without the "[i]" of mapped children, which
// headwater.map_index carries), kind INTERNAL, headwater.* attributes, status ERROR with
// the exception recorded on failure. Tracing is on only when OTEL_TRACES_EXPORTER is
// "otlp" or "console"; unset or "none" costs nothing.

const { thrownText } = require('./thrown');
const api = require('@opentelemetry/api');
const { W3CTraceContextPropagator } = require('@opentelemetry/core');
const { resourceFromAttributes } = require('@opentelemetry/resources');
const {
  BasicTracerProvider,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  SimpleSpanProcessor,
} = require('@opentelemetry/sdk-trace-base');

const VERSION = require('../package.json').version;
const DEFAULT_SERVICE_NAME = 'headwater-node-worker';
const PROTOCOLS = ['grpc', 'http/protobuf'];

class TracingConfigError extends Error {
  constructor(message) {
    super(message);
    this.name = 'TracingConfigError';
  }
}

/**
 * The task's name as the attempt span has it: mapped child i's assignment is named
 * `name[i]`; span names stay low-cardinality and headwater.map_index says i (as the
 * Python worker does).
 */
function taskName(assignment) {
  const name = assignment.task_name;
  const index = Number(assignment.map_index ?? -1);
  const suffix = `[${index}]`;
  return index >= 0 && name.endsWith(suffix) ? name.slice(0, -suffix.length) : name;
}

/** Creates one span per attempt, as a child of the assignment's trace context. */
class Tracing {
  /**
   * @param {object} options
   * @param {import('@opentelemetry/sdk-trace-base').SpanExporter[]} options.exporters
   * @param {string} [options.serviceName]
   * @param {boolean} [options.batch] batch exports (default); false exports each span at once
   */
  constructor({ exporters, serviceName = DEFAULT_SERVICE_NAME, batch = true }) {
    const processors = exporters.map((e) => (batch ? new BatchSpanProcessor(e) : new SimpleSpanProcessor(e)));
    this.provider = new BasicTracerProvider({
      resource: resourceFromAttributes({ 'service.name': serviceName }),
      spanProcessors: processors,
    });
    this.tracer = this.provider.getTracer('headwater-node-worker', VERSION);
    this.propagator = new W3CTraceContextPropagator();
  }

  /**
   * Start the execution span of an attempt; returns {end, fail, skip, interrupt} (each
   * ends it once). interrupt: cancelled, timed out or abandoned; like the Python worker,
   * the span gets a headwater.interrupted event and no error status (the attempt span on
   * the server says what happened to the attempt).
   */
  start(assignment, workerName) {
    const carrier = { ...(assignment.trace_context ?? {}) };
    const parent = this.propagator.extract(api.ROOT_CONTEXT, carrier, api.defaultTextMapGetter);
    const name = taskName(assignment);
    const attributes = {
      'headwater.task.name': name,
      'headwater.task_type': assignment.task_type,
      'headwater.task_run.id': assignment.token.task_run_id,
      'headwater.attempt': Number(assignment.token.attempt),
      'headwater.flow_run.id': assignment.flow_run_id,
      'headwater.worker.name': workerName,
    };
    const index = Number(assignment.map_index ?? -1);
    if (index >= 0) attributes['headwater.map_index'] = index;
    const span = this.tracer.startSpan(`execute ${name}`, { kind: api.SpanKind.INTERNAL, attributes }, parent);
    let open = true;
    const close = () => {
      const wasOpen = open;
      open = false;
      return wasOpen;
    };
    return {
      end: () => close() && span.end(),
      fail: (err, failure) => {
        if (!close()) return;
        // A thrown value that is no Error is recorded as the failure says it (its type
        // of value, its text, no stack): it was wrapped in an Error here, its stack
        // this file's, where the server's span said "string" (a user trial). The
        // worker's Failure is used when it has one (a value that cannot be described
        // safely, a re-trial: describing it here threw).
        let error;
        try {
          error = failure
            ? { name: failure.type, message: failure.message, stack: failure.stack_trace || undefined }
            : err instanceof Error
              ? err
              : { name: typeof err, message: thrownText(err) };
        } catch {
          error = { name: typeof err, message: 'a thrown value that cannot be described' };
        }
        span.recordException(error);
        span.setStatus({ code: api.SpanStatusCode.ERROR, message: `${error.name}: ${error.message}` });
        span.end();
      },
      skip: (reason) => {
        if (!close()) return;
        span.setAttribute('headwater.message', reason);
        span.end();
      },
      interrupt: (reason) => {
        if (!close()) return;
        span.addEvent('headwater.interrupted', { 'headwater.reason': reason });
        span.end();
      },
    };
  }

  /** Export what is pending and stop. */
  shutdown() {
    return this.provider.shutdown();
  }
}

function otlpExporter(env) {
  const protocol = (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL || 'grpc').trim();
  if (!PROTOCOLS.includes(protocol)) {
    throw new TracingConfigError(
      `OTEL_EXPORTER_OTLP_PROTOCOL '${protocol}' is not supported; use ${PROTOCOLS.join(' or ')}`,
    );
  }
  const base = (env.OTEL_EXPORTER_OTLP_ENDPOINT || '').trim();
  const traces = (env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || '').trim();
  if (protocol === 'grpc') {
    const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-grpc');
    return new OTLPTraceExporter({ url: traces || base || 'http://localhost:4317' });
  }
  const { OTLPTraceExporter } = require('@opentelemetry/exporter-trace-otlp-proto');
  // The generic endpoint is a base URL: signals go to <base>/v1/traces (OTLP spec).
  const url = traces || (base ? `${base.replace(/\/+$/, '')}/v1/traces` : 'http://localhost:4318/v1/traces');
  return new OTLPTraceExporter({ url });
}

/**
 * Tracing configured by the standard OTEL_* variables, or null when
 * OTEL_TRACES_EXPORTER is unset or "none". Throws TracingConfigError for values it
 * does not support.
 */
function fromEnvironment(env = process.env) {
  const names = (env.OTEL_TRACES_EXPORTER || 'none')
    .split(',')
    .map((n) => n.trim().toLowerCase()) // (case-insensitive, as OpenTelemetry's SDKs read it)
    .filter(Boolean);
  if (names.length === 0 || names.includes('none')) return null;
  const exporters = names.map((name) => {
    if (name === 'otlp') return otlpExporter(env);
    if (name === 'console') return new ConsoleSpanExporter();
    throw new TracingConfigError(`OTEL_TRACES_EXPORTER '${name}' is not supported; use otlp, console or none`);
  });
  return new Tracing({ exporters, serviceName: env.OTEL_SERVICE_NAME || DEFAULT_SERVICE_NAME });
}

module.exports = { DEFAULT_SERVICE_NAME, Tracing, TracingConfigError, fromEnvironment, taskName };
