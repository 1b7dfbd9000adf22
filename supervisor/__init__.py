"""Erlang/OTP supervisors for Trio: a pure restart policy (`SupervisorCore`) and a runtime (`serve`).

Children are Trio tasks, OS processes (`Process`, ready via `notify_ready`) or nested supervisors. OS processes can be
forked from a pre-imported template process instead of executed (`ForkServer`, `supervisor.zygote`).
"""

from supervisor.actions import Action as Action
from supervisor.actions import Exit as Exit
from supervisor.actions import Initialized as Initialized
from supervisor.actions import Reply as Reply
from supervisor.actions import Report as Report
from supervisor.actions import ReportKind as ReportKind
from supervisor.actions import RetryLater as RetryLater
from supervisor.actions import Start as Start
from supervisor.actions import Terminate as Terminate
from supervisor.core import ChildCounts as ChildCounts
from supervisor.core import ChildInfo as ChildInfo
from supervisor.core import ChildState as ChildState
from supervisor.core import SupervisorCore as SupervisorCore
from supervisor.errors import ChildError as ChildError
from supervisor.errors import ChildExit as ChildExit
from supervisor.errors import RestartIntensityExceeded as RestartIntensityExceeded
from supervisor.errors import StartError as StartError
from supervisor.errors import SupervisorError as SupervisorError
from supervisor.errors import SupervisorNotRunning as SupervisorNotRunning
from supervisor.forkserver import ForkServer as ForkServer
from supervisor.handle import Handle as Handle
from supervisor.process import START_ERROR as START_ERROR
from supervisor.process import Process as Process
from supervisor.process import ProcessStartError as ProcessStartError
from supervisor.process import Spawner as Spawner
from supervisor.ready import READY_FD_ENV as READY_FD_ENV
from supervisor.ready import notify_ready as notify_ready
from supervisor.reasons import KILLED as KILLED
from supervisor.reasons import NORMAL as NORMAL
from supervisor.reasons import SHUTDOWN as SHUTDOWN
from supervisor.reasons import is_abnormal as is_abnormal
from supervisor.refs import ChildRef as ChildRef
from supervisor.runtime import serve as serve
from supervisor.spec import BRUTAL_KILL as BRUTAL_KILL
from supervisor.spec import INFINITY as INFINITY
from supervisor.spec import ChildSpec as ChildSpec
from supervisor.spec import ChildType as ChildType
from supervisor.spec import Restart as Restart
from supervisor.spec import Strategy as Strategy
from supervisor.spec import SupervisorSpec as SupervisorSpec
from supervisor.spec import SupFlags as SupFlags
