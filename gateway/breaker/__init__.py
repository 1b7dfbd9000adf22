"""Circuit breakers: one state machine per target for the whole gateway (keeper), a published view in each worker."""

from .config import BreakerConfig as BreakerConfig
from .keeper import BreakerBoard as BreakerBoard
from .machine import Breaker as Breaker
from .machine import Verdict as Verdict
from .messages import BreakerUpdate as BreakerUpdate
from .messages import Outcome as Outcome
from .state import TRANSITIONS as TRANSITIONS
from .state import Event as Event
from .state import State as State
from .view import BreakerView as BreakerView
