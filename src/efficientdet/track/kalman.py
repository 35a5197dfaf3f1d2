"""Constant-velocity Kalman filter over box centre, aspect ratio and height (numpy only).

State ``x = (cx, cy, a, h, vcx, vcy, va, vh)`` with ``a = w / h``; measurement ``z = (cx, cy, a, h)``.
Process and measurement noise scale with the box height, so a 20 px and a 200 px object are
followed with the same relative uncertainty (the SORT / ByteTrack parameterisation: position noise
1/20 of the height, velocity noise 1/160 of the height per frame).
"""

from __future__ import annotations

import numpy as np

_POS = 1.0 / 20.0  # std of position noise per unit of box height
_VEL = 1.0 / 160.0  # std of velocity noise per unit of box height
_ASPECT_POS, _ASPECT_VEL = 1e-2, 1e-5  # aspect-ratio noise (unitless, not scaled by height)


def xyxy_to_xyah(box: np.ndarray) -> np.ndarray:
    """(4,) xyxy -> (cx, cy, w / h, h)."""
    x1, y1, x2, y2 = (float(v) for v in box)
    w, h = x2 - x1, max(y2 - y1, 1e-6)
    return np.array([(x1 + x2) / 2, (y1 + y2) / 2, w / h, h])


def xyah_to_xyxy(xyah: np.ndarray) -> np.ndarray:
    """(cx, cy, w / h, h) -> (4,) xyxy."""
    cx, cy, a, h = (float(v) for v in xyah[:4])
    w = a * h
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


class KalmanBoxFilter:
    """One object's state: :meth:`predict` moves it one frame, :meth:`update` corrects it with a box."""

    _F = np.eye(8)
    _F[:4, 4:] = np.eye(4)  # x_{t+1} = x_t + v_t
    _H = np.eye(4, 8)

    def __init__(self, box: np.ndarray) -> None:
        """Start at ``box`` (xyxy) with zero velocity and a wide velocity uncertainty."""
        z = xyxy_to_xyah(box)
        self.mean = np.concatenate([z, np.zeros(4)])
        h = z[3]
        std = np.array([2 * _POS * h, 2 * _POS * h, _ASPECT_POS, 2 * _POS * h,
                        10 * _VEL * h, 10 * _VEL * h, _ASPECT_VEL, 10 * _VEL * h])
        self.cov = np.diag(std**2)

    def predict(self, freeze_height_velocity: bool = False) -> None:
        """Advance one frame. ``freeze_height_velocity``: stop the height changing (for a lost object,
        whose extrapolated size would otherwise drift)."""
        if freeze_height_velocity:
            self.mean[7] = 0.0
        h = self.mean[3]
        q = np.array([_POS * h, _POS * h, _ASPECT_POS, _POS * h, _VEL * h, _VEL * h, _ASPECT_VEL, _VEL * h])
        self.mean = self._F @ self.mean
        self.cov = self._F @ self.cov @ self._F.T + np.diag(q**2)

    def update(self, box: np.ndarray) -> None:
        """Correct with a measured box (xyxy)."""
        z = xyxy_to_xyah(box)
        h = self.mean[3]
        r = np.diag(np.array([_POS * h, _POS * h, 1e-1, _POS * h]) ** 2)
        s = self._H @ self.cov @ self._H.T + r
        gain = np.linalg.solve(s, self._H @ self.cov).T  # cov H^T S^-1 (S symmetric)
        self.mean = self.mean + gain @ (z - self._H @ self.mean)
        self.cov = self.cov - gain @ s @ gain.T

    @property
    def box(self) -> np.ndarray:
        """The current estimate as (4,) xyxy."""
        return xyah_to_xyxy(self.mean)
