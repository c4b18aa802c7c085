"""The one family of errors that mean "the user asked for something we cannot do".

The CLI prints these as a single line (problem and fix) and exits 2; everything else is a bug
and keeps its traceback.
"""

# The command line's exit codes, shared by the CLI and the search's outcome.
EXIT_OK = 0
EXIT_USER_ERROR = 2  # bad input: a one-line message names the problem and the fix
EXIT_NOTHING_MET = 3  # ran fine, but no configuration met the budget (or fits): nothing to deploy


class UserError(Exception):
    """A mistake the user can fix: bad recipe, missing file, unknown name, model that does not fit."""

    def __init__(self, problem: str, fix: str | None = None) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(self.one_line())

    def one_line(self) -> str:
        text = self.problem.rstrip(". ")
        if self.fix:
            text += f"; fix: {self.fix.rstrip('. ')}"
        return " ".join(text.split())


def nearest(name: str, options: list[str], n: int = 3) -> str:
    """'did you mean' text for an unknown name."""
    import difflib

    close = difflib.get_close_matches(name, options, n=n, cutoff=0.4)
    if close:
        return "did you mean " + " or ".join(repr(c) for c in close) + "?"
    return "choose one of: " + ", ".join(sorted(options))
