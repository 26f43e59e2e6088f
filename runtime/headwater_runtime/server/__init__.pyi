# The public names of headwater_runtime.server (one list: read by type checkers, and
# parsed at run time by headwater.wire.lazy.attach_stub to import each on first use).
from ._app import RunningServer as RunningServer
from ._app import limits_from_env as limits_from_env
from ._app import serve_forever as serve_forever
from ._app import settings_from_env as settings_from_env
from ._app import start_server as start_server
from ._auth import TokenAuthInterceptor as TokenAuthInterceptor
from ._cli import add_server_command as add_server_command
from ._core import SERVER_VERSION as SERVER_VERSION
from ._core import ServerCore as ServerCore
from ._core import ServerSettings as ServerSettings
from ._decoding import DecodeInterceptor as DecodeInterceptor
from ._io import StoreIO as StoreIO
from ._payloads import MAX_CHUNK as MAX_CHUNK
from ._payloads import PayloadServicer as PayloadServicer
from ._runs import Dispatch as Dispatch
from ._runs import NoResult as NoResult
from ._runs import PendingAssignment as PendingAssignment
from ._runs import RunManager as RunManager
from ._values import SERVER_VALUES as SERVER_VALUES
from ._values import ServerValues as ServerValues
