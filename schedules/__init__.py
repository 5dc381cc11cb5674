"""Learning-rate and hyperparameter schedules: pure functions ``step -> value``."""

from schedules._base import ScalarOrSchedule as ScalarOrSchedule
from schedules._base import Schedule as Schedule
from schedules._base import constant as constant
from schedules._base import resolve as resolve
from schedules._compose import join as join
from schedules._compose import warmup as warmup
from schedules._cosine import cosine as cosine
from schedules._cosine import sgdr as sgdr
from schedules._cyclical import cyclical as cyclical
from schedules._cyclical import one_cycle as one_cycle
from schedules._decay import factor as factor
from schedules._decay import multi_factor as multi_factor
from schedules._decay import polynomial as polynomial
from schedules._lr_finder import LRFinderResult as LRFinderResult
from schedules._lr_finder import lr_finder as lr_finder
from schedules._ramps import lr_range as lr_range
from schedules._ramps import swa_lr as swa_lr
from schedules._wsd import wsd as wsd

__all__ = [
    "LRFinderResult",
    "ScalarOrSchedule",
    "Schedule",
    "constant",
    "cosine",
    "cyclical",
    "factor",
    "join",
    "lr_finder",
    "lr_range",
    "multi_factor",
    "one_cycle",
    "polynomial",
    "resolve",
    "sgdr",
    "swa_lr",
    "warmup",
    "wsd",
]
