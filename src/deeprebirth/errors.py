"""User-facing errors.

Anything raised as a :class:`DeepRebirthError` is a problem with the user's input (a model
name, a file, a directory) and is shown by the CLI as one line, without a traceback.
"""


class DeepRebirthError(Exception):
    """An error whose message is meant for the user, printed as one line by the CLI."""


class UnknownModelError(DeepRebirthError, KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class CheckpointError(DeepRebirthError):
    """A weights file that cannot be read, is unsafe, or does not fit the model."""


class DataNotFoundError(DeepRebirthError, FileNotFoundError):
    """A data set that cannot be found where we looked."""


class DataError(DeepRebirthError):
    """A data file that cannot be read (a corrupt or truncated image)."""


class TraceError(DeepRebirthError):
    """A model that torch.fx cannot capture as a graph."""
