"""Field types that several plugin schemas share (Kong's typedefs)."""

from __future__ import annotations

from typing import Annotated

import msgspec

from gateway.config.typedefs import KongString as KongString  # Kong's string: never ""

# kong.tools.http validate_header_name: letters, digits, "-" and "_"
HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]+$")]
