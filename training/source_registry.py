"""From ``[[data.sources]]`` tables to an example stream: the one registry of data-source kinds.

A config names each builder by ``kind`` (:data:`KINDS`, or ``"package.module:Class"`` for a
builder of one's own); :func:`build_builder` turns a :class:`~.config.SourceSpec` into that
builder, reporting unknown keys with the valid ones, and :func:`make_example_stream` mixes the
builders into the seeded stream the trainer and the evaluator read. A config file is data: a
custom kind must name a data-source class, checked before it is instantiated
(:func:`resolve_custom_kind`), never an arbitrary callable.

>>> "classification" in KINDS
True
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from random import Random
from typing import Any

from .example import TrainingExample


_TEXT_SOURCE_KEYS = ("source", "texts", "path", "paths", "format", "field", "column", "split_by", "dataset", "dataset_split",
                     "dataset_config", "limit", "prompts", "n_rollouts", "max_new_tokens", "temperature", "top_p",
                     "rollout_seed", "rollout_batch_size", "system_prompt")
KINDS = ("context_prediction", "classification", "families", "system_prompt_qa", "on_policy")


def _call_checked(factory: Callable[..., Any], params: dict[str, Any], where: str, extra_valid: Sequence[str] = ()
                  ) -> Any:
    """``factory(**params)``, turning unknown keyword arguments into a ConfigError that lists the valid ones."""
    import inspect

    from ..errors import ConfigError

    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):  # pragma: no cover - builtins
        return factory(**params)
    accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    valid = [n for n, p in sig.parameters.items()
             if p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD) and n != "self"]
    unknown = [k for k in params if k not in valid]
    if unknown and not accepts_any:
        raise ConfigError(f"unknown key {unknown[0]!r} in {where}; valid keys are: "
                          f"{', '.join(sorted(set(valid) | set(extra_valid) | {'kind', 'weight'}))}.")
    return factory(**params)


def _tuple_lists(params: dict[str, Any]) -> dict[str, Any]:
    return {k: tuple(v) if isinstance(v, list) and k not in ("texts", "paths", "tasks", "dialogue_paths", "held_out",
                                                                  "prompts", "families") else v
            for k, v in params.items()}


def _text_source(params: dict[str, Any], where: str, model: Any) -> Any:
    """Pick the text source of a context-prediction spec from its keys."""
    from ..errors import ConfigError
    from . import sources as S

    name = params.get("name") or "texts"
    if "source" in params:  # a nested table: {type = "jsonl", paths = [...], ...} (mixture.SOURCE_TYPES)
        from .mixture import SOURCE_TYPES

        table = dict(params["source"])
        kind = table.pop("type", None)
        if kind not in SOURCE_TYPES or kind == "on_policy":
            raise ConfigError(f"{where}: source.type={kind!r}; expected one of "
                              f"{', '.join(k for k in SOURCE_TYPES if k != 'on_policy')} (or kind = 'on_policy').")
        return _call_checked(SOURCE_TYPES[kind], table, f"{where} source")
    if "texts" in params:
        return S.TextListSource(list(params["texts"]), name=name)
    if "dataset" in params:
        kw = {"split": params.get("dataset_split", "train"), "field": params.get("field", "text"),
              "config": params.get("dataset_config"), "limit": params.get("limit")}
        return S.HFDatasetSource(params["dataset"], **kw)
    paths = params.get("paths", params.get("path"))
    if paths is None:
        raise ConfigError(f"{where} names no text: give texts=[...], path=..., paths=[...] or dataset=<hub id>.")
    fmt = params.get("format") or _guess_format(paths)
    if fmt == "text":
        return S.PlainTextSource(paths, split=params.get("split_by", "paragraph"), name=name)
    if fmt == "jsonl":
        return S.JsonlSource(paths, field=params.get("field", "text"), name=name)
    if fmt == "csv":
        if "column" not in params:
            raise ConfigError(f"{where}: a CSV text source needs column=<the text column>.")
        return S.CsvColumnSource(paths, params["column"], name=name)
    if fmt == "chat":
        return S.ChatSource(paths, field=params.get("field", "messages"), name=name)
    raise ConfigError(f"{where}: format={fmt!r}; expected text, jsonl, csv or chat.")


def _guess_format(paths: Any) -> str:
    first = str(paths if isinstance(paths, str) else list(paths)[0]).lower()
    if first.endswith(".jsonl"):
        return "jsonl"
    if first.endswith(".csv"):
        return "csv"
    if first.endswith(".json"):
        return "chat"
    return "text"


def resolve_custom_kind(kind: str, where: str = "a data source") -> type:
    """The class a ``"package.module:Class"`` kind names, checked to be a data source; never called here.

    A config file is data, so the name it gives must not become an arbitrary call:
    ``kind = "os:system"`` would otherwise run a shell command with the table's keys.
    Only a class whose ``examples(tokenizer, rng)`` method makes it a
    :class:`~.example.Builder` is accepted; anything else raises :class:`ConfigError`
    before it is invoked.
    """
    import importlib
    import inspect

    from ..errors import ConfigError

    fix = ("a custom kind must name a data-source class, 'package.module:Class', whose examples(tokenizer, rng) "
           "method yields TrainingExample records (the Builder interface of activation_oracles.training.example)")
    module_name, _, attr = kind.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"{where}: kind={kind!r} is not 'package.module:Class'; {fix}.")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):  # "module:Outer.Inner" reaches a nested class
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"{where}: kind={kind!r} cannot be imported ({exc}); {fix}.") from None
    if not inspect.isclass(obj):
        what = type(obj).__name__
        raise ConfigError(f"{where}: kind={kind!r} names a {what}, not a class; it was not called. Only data-source "
                          f"classes are accepted: {fix}.")
    examples = inspect.getattr_static(obj, "examples", None)
    if examples is None or not callable(getattr(obj, "examples", None)):
        raise ConfigError(f"{where}: kind={kind!r} names the class {obj.__qualname__}, which has no examples() "
                          f"method; it was not instantiated. {fix[0].upper()}{fix[1:]}.")
    # (self,) tokenizer, rng: the call Mixture makes on every builder
    args = (object(),) * (2 if isinstance(examples, (staticmethod, classmethod)) else 3)
    try:
        inspect.signature(obj.examples).bind(*args)
    except TypeError:
        raise ConfigError(f"{where}: kind={kind!r}: {obj.__qualname__}.examples{inspect.signature(obj.examples)} "
                          f"cannot be called as examples(tokenizer, rng); {fix}.") from None
    except ValueError:  # pragma: no cover - builtins without a signature
        pass
    return obj


def build_builder(spec: Any, layer_percents: Sequence[float], *, where: str = "a data source", model: Any = None
                  ) -> Any:
    """The dataset builder a :class:`~.config.SourceSpec` describes.

    ``kind`` is one of :data:`KINDS` or ``"package.module:Class"``, a data-source class (see
    :func:`resolve_custom_kind`; instantiated with the params).
    ``layer_percents`` is passed to builders that take it unless the spec sets its own.
    ``model`` (the target) is needed by ``on_policy``.
    """
    from ..errors import ConfigError

    params = _tuple_lists(dict(spec.params))
    kind = spec.kind
    if ":" in kind:
        factory = resolve_custom_kind(kind, where)
        import inspect

        try:
            takes_lp = "layer_percents" in inspect.signature(factory).parameters
        except (TypeError, ValueError):  # pragma: no cover
            takes_lp = False
        if takes_lp:
            params.setdefault("layer_percents", tuple(layer_percents))
        return _call_checked(factory, params, where)
    params.setdefault("layer_percents", tuple(layer_percents))
    if kind in ("context_prediction", "on_policy"):
        from .context_prediction import ContextPrediction

        text_params = {k: params.pop(k) for k in list(params) if k in _TEXT_SOURCE_KEYS}
        if kind == "on_policy":
            if model is None:
                raise ConfigError(f"{where}: on_policy needs the target model (the trainer passes it).")
            from .on_policy import OnPolicySource

            kw = {"prompts": text_params.get("prompts"), "n_rollouts": text_params.get("n_rollouts", 256),
                  "max_new_tokens": text_params.get("max_new_tokens", 128),
                  "temperature": text_params.get("temperature", 1.0), "top_p": text_params.get("top_p", 1.0),
                  "seed": text_params.get("rollout_seed", 0), "batch_size": text_params.get("rollout_batch_size", 8),
                  "system_prompt": text_params.get("system_prompt")}
            source = OnPolicySource(model, **kw)
            params.setdefault("name", "on_policy")
        else:
            text_params.setdefault("name", params.get("name"))
            source = _text_source(text_params, where, model)
        return _call_checked(_bind_source(ContextPrediction, source), params, where, _TEXT_SOURCE_KEYS)
    if kind == "classification":
        from .classification import Classification

        if "data_dir" not in params:
            raise ConfigError(f"{where}: classification needs data_dir=<folder with gmt/, relations/, ...>.")
        if "tasks" in params:  # tasks may be names or tables describing a ClassificationTask
            from .classification import ClassificationTask

            params["tasks"] = [_call_checked(ClassificationTask, _tuple_lists(t), f"{where} tasks")
                               if isinstance(t, dict) else t for t in params["tasks"]]
        return _call_checked(Classification, params, where)
    if kind == "families":
        from .families import QuestionFamilies

        return _call_checked(QuestionFamilies, params, where)
    if kind == "system_prompt_qa":
        from .system_prompt_qa import SystemPromptQA

        if "qa_path" not in params or "dialogue_paths" not in params:
            raise ConfigError(f"{where}: system_prompt_qa needs qa_path=<qa.json> and dialogue_paths=[...].")
        return _call_checked(SystemPromptQA, params, where)
    raise ConfigError(f"{where}: kind={kind!r} is not known; expected one of {', '.join(KINDS)} or "
                      "'package.module:Class' (a data-source class with an examples(tokenizer, rng) method).")


def _bind_source(cls: Any, source: Any) -> Callable[..., Any]:
    """``cls(source, **kw)`` with ``cls``'s keyword signature (so unknown keys are reported)."""
    import functools
    import inspect

    sig = inspect.signature(cls)
    params = [p for name, p in sig.parameters.items() if name != "source"]

    @functools.wraps(cls)
    def make(**kw: Any) -> Any:
        return cls(source, **kw)

    make.__signature__ = sig.replace(parameters=params)  # type: ignore[attr-defined]
    return make


def make_example_stream(specs: Sequence[Any], tokenizer: Any, layer_percents: Sequence[float], seed: int, *,
                        model: Any = None, section: str = "data") -> Callable[[int], Iterator[TrainingExample]]:
    """``epoch -> iterator``: the weighted :class:`~.mixture.Mixture` of the builders ``specs`` describe.

    The whole stream is fixed by ``seed`` (and the epoch, for finite builders that end).
    Every process builds the same global stream; the trainer shares out each batch.
    The returned function has ``.mixture`` (for its summary) and ``.builders``.
    """
    from ..errors import ConfigError
    from .mixture import Mixture

    if not specs:
        raise ConfigError(f"{section}.sources is empty; add at least one [[{section}.sources]] table "
                          "(or use --preset tiny).")
    builders = [build_builder(s, layer_percents, where=f"{section}.sources[{i}] ({s.kind})", model=model)
                for i, s in enumerate(specs)]
    mixture = Mixture(builders, [float(s.weight) for s in specs], seed=seed, name=section)

    def stream(epoch: int) -> Iterator[TrainingExample]:
        return mixture.examples(tokenizer, None if epoch == 0 else Random(f"{seed}:epoch:{epoch}"))

    stream.mixture = mixture  # type: ignore[attr-defined]
    stream.builders = builders  # type: ignore[attr-defined]
    return stream
