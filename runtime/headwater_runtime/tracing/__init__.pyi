# The public names of headwater_runtime.tracing (one list: read by type checkers, and
# parsed at run time by headwater.wire.lazy.attach_stub to import each on first use).
from ._config import EXPORTERS as EXPORTERS
from ._config import PROTOCOLS as PROTOCOLS
from ._config import Tracing as Tracing
from ._config import TracingConfigError as TracingConfigError
from ._config import TracingSettings as TracingSettings
from ._config import configure_tracing as configure_tracing
from ._config import tracing_settings_from_env as tracing_settings_from_env
from ._runs import RunTracer as RunTracer
from ._runs import in_span as in_span
from ._spans import active_tracer as active_tracer
from ._spans import cli_span as cli_span
from ._spans import current_context as current_context
from ._spans import extract as extract
from ._spans import inject as inject
from ._spans import record_failure as record_failure
from .names import TRACER_NAME as TRACER_NAME
