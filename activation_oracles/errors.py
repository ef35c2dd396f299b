"""Typed errors for activation_oracles.

Every error derives from :class:`AOError` and also from the built-in exception a
Python user would reach for first, so ``except IndexError`` still catches a bad
layer index. Messages say what was given, what was expected, and how to fix it.

>>> from activation_oracles.errors import AOError, LayerNotFoundError
>>> issubclass(LayerNotFoundError, IndexError) and issubclass(LayerNotFoundError, AOError)
True
"""

from __future__ import annotations


class AOError(Exception):
    """Base class of every error raised on purpose by activation_oracles.

    ``exit_status`` is what the ``ao`` command line exits with when this error ends a
    command: 2 (the usage-error status, as argparse uses) when the arguments themselves
    are wrong, 1 when a well-formed command failed while running (a file that cannot be
    written or read, the network, a numerical failure).
    """

    exit_status: int = 2


class ModelSpecError(AOError, ValueError):
    """The model spec is neither a known name, a local directory, nor a hub id."""


class OfflineError(AOError, ConnectionError):
    """A hub download was needed but the machine is offline (or HF_HUB_OFFLINE is set)."""

    exit_status = 1


class LayerDiscoveryError(AOError, LookupError):
    """The decoder-block stack of a model could not be found structurally."""


class NotDecoderLMError(AOError, TypeError):
    """The object given is not a decoder-only language model."""


class LayerNotFoundError(AOError, IndexError):
    """A layer index is outside ``[-n_layers, n_layers)``."""


class PositionError(AOError, IndexError):
    """A token position is out of range for its row, or the position list is malformed."""


class VectorShapeError(AOError, ValueError):
    """Injected vectors have the wrong count, width (d_model) or batch size."""


class NonFiniteError(AOError, ValueError):
    """A tensor holds NaN or inf where finite values are required."""

    exit_status = 1


class BackendError(AOError, ValueError):
    """An unknown hook backend, or one that cannot run in this environment."""


class ModeError(AOError, ValueError):
    """An unknown injection mode."""


class EmptyInputError(AOError, ValueError):
    """An empty prompt, question, or list where content is required."""


class MissingTokenizerError(AOError, ValueError):
    """A model given without a tokenizer where text must be encoded (wrap it: ``ao.as_model(model, tokenizer)``)."""


class ChoicesError(AOError, ValueError):
    """The choices given to ``choose`` are empty, too few, or duplicated."""


class ActivationsMismatchError(AOError, ValueError):
    """Two activation sets (or activations and an oracle) do not fit together."""


class AdapterError(AOError, ValueError):
    """An oracle adapter is missing, truncated, unsafe, or made for another base model."""


class UnsafeFileError(AOError, ValueError):
    """A file would need unpickling to load; activation_oracles never unpickles."""

    exit_status = 1


class OracleNotAvailableError(AOError, FileNotFoundError):
    """The requested shipped oracle does not exist in this installation."""


class ConfigError(AOError, ValueError):
    """An invalid configuration value or an unknown configuration key."""


class DataError(AOError, ValueError):
    """A data file is missing, empty, or lacks a required column."""

    exit_status = 1


class CheckpointError(AOError, RuntimeError):
    """A training checkpoint is corrupted or incompatible."""

    exit_status = 1


class OutputDirError(AOError, FileExistsError):
    """An output directory already holds another run."""


class UnknownTaskError(AOError, ValueError):
    """An organism or audit task name that is not registered."""


class OrganismError(AOError, ValueError):
    """An organism folder is incomplete, its card does not match its adapter, or its options are invalid."""


class OrganismCheckError(OrganismError):
    """An organism failed its behaviour check (or was never checked) and is not audited as it is."""


class BaseMismatchError(AOError, ValueError):
    """Two models that must share base weights and tokenizer (organism and oracle, organism and base) do not."""


class ArgumentError(AOError, ValueError):
    """A plain argument (``batch_size``, ``max_new_tokens``, ``temperature``, ...) is outside its range."""


class ArgumentTypeError(ArgumentError, TypeError):
    """An argument has the wrong type (``chat="yes"``, ``batch_size=1.5``, ``path=None``, ...)."""


class PromptError(AOError, ValueError):
    """A prompt cannot be shown to the model: text that is not valid Unicode (lone surrogates, undecoded
    bytes), or a chat message with an unknown role or a content that is not text."""


class PromptTooLongError(PromptError, IndexError):
    """A prompt has more tokens than the model has positions (``config.max_position_embeddings``)."""


class DeviceError(AOError, ValueError):
    """A torch device that is malformed or not available on this machine (``device="cuda"`` without a GPU)."""


class ActivationsFileError(AOError, ValueError):
    """A safetensors file with activation_oracles' format tag whose metadata is missing, malformed or
    inconsistent with its tensors (damaged, or edited by hand)."""

    exit_status = 1


class InputFileNotFoundError(AOError, FileNotFoundError):
    """A file to read does not exist, or the path names a directory."""


class OutputWriteError(AOError, OSError):
    """A file or folder cannot be written where asked: the path is a directory, its folder is missing,
    read-only or not writable (nothing is left behind)."""

    exit_status = 1


class CLIUsageError(AOError, ValueError):
    """A command-line argument is invalid in a way argparse cannot check (e.g. an output folder that is missing)."""


class RemoteCodeError(UnsafeFileError):
    """A model needs Python code from its repository (``auto_map`` / trust_remote_code); it is never run."""
