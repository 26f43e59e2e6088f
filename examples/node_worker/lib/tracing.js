'use strict';
// OpenTelemetry execution spans (optional). Not implemented yet: tracing is off.

/** Tracing hooks for the worker, or null when OTEL_TRACES_EXPORTER is unset or "none". */
function fromEnvironment() {
  return null;
}

module.exports = { fromEnvironment };
