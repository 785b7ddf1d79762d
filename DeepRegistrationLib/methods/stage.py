"""What every stage kind shares: typed settings parsed from a preset, and what a runner receives and returns.

A stage's settings are a dataclass deriving from :class:`StageSettings`, built from the preset's JSON object by
:meth:`StageSettings.from_dict`, which refuses unknown fields and checks every value (types and ranges) before
any image is read. A runner is called as ``run(settings, context, state) -> StageOutcome``:

* :class:`StageContext`: the normalised images, the pyramid, the fixed image's centre, the device, the
  stage's index, and the progress / cancel hooks;
* :class:`StageState`: the transform so far, as a linear part and an optional deformable part; the
  registration's transform is ``compose(deformable, linear)`` (fixed -> moving, LPS mm: the deformation is
  applied to a fixed point first, then the linear map).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable

from ..errors import InputError, RegistrationCancelled

if TYPE_CHECKING:  # imported for annotations only: this module stays free of torch
    import torch

    from ..image import Image
    from ..transforms import Transform
    from ..transforms.linear import LinearTransform
    from .pyramid import Pyramid

__all__ = ["StageSettings", "StageContext", "StageState", "StageOutcome", "ProgressCallback", "check_number",
           "check_flag"]

ProgressCallback = Callable[[dict], None]


def check_number(name: str, value: Any, low: float | None = None, high: float | None = None, *,
                 integer: bool = False, low_open: bool = False) -> None:
    """Refuse ``value`` unless it is a finite number (a whole number when ``integer``) within ``[low, high]``
    (``(low, high]`` when ``low_open``); the message names the field and the range."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok and integer:
        ok = float(value) == int(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value <= high
    if not ok:
        kind = "a whole number" if integer else "a number"
        lo = "" if low is None else (f" > {low:g}" if low_open else f" >= {low:g}")
        hi = "" if high is None else f"{' and' if lo else ''} <= {high:g}"
        raise InputError(f"{name} must be {kind}{lo}{hi}, got {value!r}")


def check_flag(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InputError(f"{name} must be true or false, got {value!r}")


@dataclass
class StageSettings:
    """Base of a stage kind's settings. ``model`` names the stage kind in the registry."""

    model: str

    def pyramid_levels(self) -> list[float]:
        """The pyramid spacings (mm, coarse to fine) this stage optimises on; none for a stage on its own grid."""
        return []

    def smoothing_factor(self) -> float:
        """Gaussian sigma of the pyramid levels as a fraction of the level spacing."""
        return 0.0

    def iterations_per_level(self) -> list[int]:
        """Steps per pyramid level (what a progress bar counts); one step for a single-shot stage."""
        return [1]

    def validate(self) -> "StageSettings":
        """Check every value; return ``self``. Subclasses extend this."""
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StageSettings":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise InputError(f"unknown stage parameter(s) {sorted(unknown)} for a {data.get('model')!r} stage "
                             f"(known: {sorted(known)})")
        return cls(**data).validate()

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in fields(cls)}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class StageContext:
    """What a runner may use besides its settings and the state (read-only)."""

    fixed: "Image"  # the fixed image, intensities normalised to [0, 1]
    moving: "Image"  # the moving image, likewise
    pyramid: "Pyramid"
    center: "torch.Tensor"  # (dim,) float64: the fixed image's centre (LPS mm), on the device
    device: "torch.device"
    index: int  # the stage's position in the configuration (for progress events)
    progress: ProgressCallback | None = None
    cancel: Callable[[], bool] | None = None

    @property
    def dim(self) -> int:
        return self.fixed.dim

    def check_cancel(self) -> None:
        """Raise :class:`RegistrationCancelled` when the cancel flag is set."""
        if self.cancel is not None and self.cancel():
            raise RegistrationCancelled("registration cancelled")

    def report(self, event: dict) -> None:
        if self.progress is not None:
            self.progress({"stage": self.index, **event})


@dataclass(frozen=True)
class StageState:
    """The transform so far: ``compose(deformable, linear)`` when there is a deformable part, else ``linear``."""

    linear: "LinearTransform"
    deformable: "Transform | None" = None


@dataclass
class StageOutcome:
    """A runner's result: the new state, the final similarity value (NaN when the stage has none) and figures."""

    state: StageState
    loss: float = float("nan")
    figures: dict = field(default_factory=dict)
