"""The GNSS receiver: fixes on the integrated path, in the region's geodetic frame."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from robolake.simulate.motion import enu_to_geodetic

if TYPE_CHECKING:
    from robolake.simulate.draft import Draft
    from robolake.simulate.ros import Codec


class GpsSource:
    """Latitude, longitude and fix status (0: fix) per message; a fault may drop fixes
    (status -1) or make them NaN."""

    def __init__(self, rec: Draft):
        east, north = rec.traj.position(rec.rel_t["gps"])
        self.lat, self.lon = enu_to_geodetic(east, north, rec.origin)
        self.alt = rec.origin[2]
        self.status = np.zeros(rec.counts["gps"], dtype=np.int64)

    def messages(self, codec: Codec, frame_id: str) -> Callable[[int, int], Any]:
        lat, lon, status = self.lat.tolist(), self.lon.tolist(), self.status.tolist()

        def message(i: int, stamp: int) -> Any:
            return codec.navsatfix(codec.header(stamp, frame_id, i), status[i], lat[i], lon[i],
                                   self.alt)

        return message
