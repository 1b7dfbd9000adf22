"""Exit reasons, spelled as in OTP, and the rule that tells normal exits from abnormal ones."""

from typing import Final

NORMAL: Final = "normal"
SHUTDOWN: Final = "shutdown"
KILLED: Final = "killed"


def is_abnormal(reason: object) -> bool:
    """Whether `reason` is abnormal: anything but normal, shutdown or ("shutdown", term)."""
    if isinstance(reason, str):
        return reason not in (NORMAL, SHUTDOWN)
    return not (isinstance(reason, tuple) and len(reason) == 2 and reason[0] == SHUTDOWN)
