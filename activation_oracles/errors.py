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
    """Base class of every error raised on purpose by activation_oracles."""


class ModelSpecError(AOError, ValueError):
    """The model spec is neither a known name, a local directory, nor a hub id."""


class OfflineError(AOError, ConnectionError):
    """A hub download was needed but the machine is offline (or HF_HUB_OFFLINE is set)."""


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


class BackendError(AOError, ValueError):
    """An unknown hook backend, or one that cannot run in this environment."""


class ModeError(AOError, ValueError):
    """An unknown injection mode."""


class EmptyInputError(AOError, ValueError):
    """An empty prompt, question, or list where content is required."""


class ChoicesError(AOError, ValueError):
    """The choices given to ``choose`` are empty, too few, or duplicated."""


class ActivationsMismatchError(AOError, ValueError):
    """Two activation sets (or activations and an oracle) do not fit together."""


class AdapterError(AOError, ValueError):
    """An oracle adapter is missing, truncated, unsafe, or made for another base model."""


class UnsafeFileError(AOError, ValueError):
    """A file would need unpickling to load; activation_oracles never unpickles."""


class OracleNotAvailableError(AOError, FileNotFoundError):
    """The requested shipped oracle does not exist in this installation."""


class ConfigError(AOError, ValueError):
    """An invalid configuration value or an unknown configuration key."""


class DataError(AOError, ValueError):
    """A data file is missing, empty, or lacks a required column."""


class CheckpointError(AOError, RuntimeError):
    """A training checkpoint is corrupted or incompatible."""


class OutputDirError(AOError, FileExistsError):
    """An output directory already holds another run."""


class UnknownTaskError(AOError, ValueError):
    """An organism or audit task name that is not registered."""


class OrganismError(AOError, ValueError):
    """An organism folder is incomplete, its card does not match its adapter, or its options are invalid."""


class BaseMismatchError(AOError, ValueError):
    """Two models that must share base weights and tokenizer (organism and oracle, organism and base) do not."""
