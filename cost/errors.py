"""cost/ stands alone (it imports nothing from optimizer/); its input errors are ValueErrors with a fix."""


class CostInputError(ValueError):
    """A bad input to the cost arithmetic: one line naming the problem and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}; fix: {fix}")


def require_positive(name: str, value: float) -> None:
    if not value > 0:
        raise CostInputError(f"{name} must be positive (got {value})", f"give the measured or planned {name}")


def require_fraction(name: str, value: float, hint: str) -> None:
    """value in (0, 1]."""
    if not 0 < value <= 1:
        raise CostInputError(f"{name} must be in (0, 1] (got {value})", hint)
