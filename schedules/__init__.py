"""Learning-rate and hyperparameter schedules: pure functions ``step -> value``."""

from schedules._base import ScalarOrSchedule as ScalarOrSchedule
from schedules._base import Schedule as Schedule
from schedules._base import constant as constant
from schedules._base import resolve as resolve

__all__ = ["ScalarOrSchedule", "Schedule", "constant", "resolve"]
