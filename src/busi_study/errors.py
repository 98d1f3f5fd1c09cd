"""Errors a user can act on: each carries a one-line message that says what to do."""


class StudyError(RuntimeError):
    """An expected problem (missing data, offline, bad file, bad parameter).

    The runner prints ``str(error)`` as one line instead of a traceback.
    """


class DataSourceError(StudyError):
    """The data could not be found, downloaded or unpacked."""


class ParameterError(StudyError):
    """A profile or command-line parameter is unknown or invalid."""
