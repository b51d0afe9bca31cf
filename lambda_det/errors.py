"""The errors lambda_det raises for bad input from the user: a flag, a config value, a file.

Each message says what is wrong and what to do. The tools print one as a single ``error: ...``
line and exit with status 2 (``lambda_det.engine.run_main``). This module imports nothing of
lambda_det, so every other module can use it.
"""


class UserError(ValueError):
    """Bad input from the user (a flag, a config value, a file); the message says what and why."""


class ConfigError(UserError):
    """A config value that cannot work."""

    @classmethod
    def check(cls, problems) -> None:
        """Raise one ConfigError listing every problem found (one line each), if there is any."""
        if problems:
            raise cls("the config cannot work:\n  " + "\n  ".join(problems))


class OutputError(UserError):
    """An output location that would lose or hide data, or a write that failed."""


class WeightsError(UserError):
    """A weights file that cannot be read, or that does not fit the model."""


class DatasetError(UserError):
    """A registered dataset whose files are not where its registration says."""


class ExportError(UserError):
    """An export that cannot be made or that does not reproduce the model."""


class ResultFileError(UserError):
    """A run or result file that is not an evaluated run."""


class ConversionError(UserError):
    """A state dict that is not the timm model it should be."""


class TrainingDiverged(UserError):
    """A training run whose loss became non-finite or exploded: its settings cannot train this model."""


def raised_while_handling(exc: BaseException, kind: type):
    """The first exception of ``kind`` in ``exc``'s chain (itself, or one it was raised while handling),
    or None: torch's zip writer fails again in its cleanup after a full disk or a Ctrl-C, and its
    RuntimeError ("unexpected pos") would hide what happened."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, kind):
            return exc
        seen.add(id(exc))
        exc = exc.__context__
    return None
