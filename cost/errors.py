"""cost/ stands alone (it imports nothing from optimizer/); its input errors are ValueErrors with a fix."""


class CostInputError(ValueError):
    """A bad input to the cost arithmetic: one line naming the problem and the fix."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem, self.fix = problem, fix
        super().__init__(f"{problem}; fix: {fix}")
