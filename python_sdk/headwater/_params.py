"""Flow parameters checked and converted against the flow function's annotations.

pydantic v2 (``TypeAdapter``) does the work: int, float, str, bool, lists, dicts,
tuples, Optional and unions, Literal, Enum, datetime/date, dataclasses, pydantic
models, and any class (an isinstance check). It is imported on first use only, and
not at all for the common case of a value that already has its plain annotated type
(``n: int`` given 3), so ``from headwater import flow, task`` and most embedded runs
stay light. A bad value is a ParameterError of one line naming the parameter, the
expected type and the value (docs/flows.md).
"""

from __future__ import annotations

import contextlib
import inspect
import re
import typing
from collections.abc import Callable, Mapping
from typing import Any

from headwater.wire import ParameterError

#: Annotations that accept anything: no check, no conversion.
_ANY: tuple[Any, ...] = (inspect.Parameter.empty, Any, object)
#: Annotations a value of exactly that type satisfies as it is (no pydantic needed).
_PLAIN = (int, float, str, bool, bytes)


def type_name(annotation: Any) -> str:
    """The annotation as people write it: ``list[int] | None``, ``date``, ``Color``
    (``Annotated[int, Field(gt=0)]`` as ``int``: pydantic's message says the rest)."""
    if typing.get_origin(annotation) is typing.Annotated:
        return type_name(typing.get_args(annotation)[0])
    if isinstance(annotation, type) and not typing.get_args(annotation):
        return annotation.__name__
    text = repr(annotation).replace("NoneType", "None")
    return re.sub(r"(?:[A-Za-z_]\w*\.)+([A-Za-z_]\w*)", r"\1", text)


def _short(value: Any, limit: int = 80) -> str:
    try:
        text = repr(value)
    except Exception:  # a value whose repr fails still gets a message
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."


class ParameterTypes:
    """The annotations of one flow's parameters, and validators built on first use.

    Args:
        flow_name: the flow's name (for messages).
        fn: the flow function.
        names: its parameters' names.
    """

    def __init__(self, flow_name: str, fn: Callable[..., Any], names: list[str]) -> None:
        self.flow_name = flow_name
        self.annotations = _annotations(fn, names)
        self._adapters: dict[str, Any] = {}
        self._schemas: dict[str, tuple[str, str]] = {}

    def checked(self, name: str) -> bool:
        """Whether values of this parameter are checked (it has a real annotation)."""
        return self.annotations.get(name, Any) not in _ANY

    def _adapter(self, name: str) -> Any:
        adapter = self._adapters.get(name)
        if adapter is None:
            from pydantic import ConfigDict, PydanticSchemaGenerationError, TypeAdapter

            annotation = self.annotations[name]
            try:
                adapter = TypeAdapter(annotation)
            except PydanticSchemaGenerationError:  # any class: checked with isinstance
                adapter = TypeAdapter(annotation, config=ConfigDict(arbitrary_types_allowed=True))
            self._adapters[name] = adapter
        return adapter

    def _refuse(self, name: str, value: Any, detail: str) -> ParameterError:
        expected = type_name(self.annotations[name])
        return ParameterError(
            f"flow {self.flow_name!r}: parameter {name!r} expects {expected}, got "
            f"{_short(value)}" + (f" ({detail})" if detail else "")
        )

    def validate(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The values checked and converted (``"3"`` -> 3 for ``int``, a dict -> the
        dataclass); ParameterError for the first one that does not fit."""
        out = dict(values)
        for name, value in values.items():
            annotation = self.annotations.get(name, Any)
            if annotation in _ANY or (annotation in _PLAIN and type(value) is annotation):
                continue
            out[name] = self._validate(name, value)
        return out

    def convert_default(self, name: str, value: Any) -> Any:
        """A default converted to its parameter's annotation, or as it is when it does
        not fit or needs nothing (None, a value of the plain annotated type)."""
        annotation = self.annotations.get(name, Any)
        if value is None or annotation in _ANY:
            return value
        if isinstance(annotation, type) and type(value) is annotation:
            return value
        try:
            return self._adapter(name).validate_python(value)
        except Exception:  # (pydantic's ValidationError, or an annotation it cannot use)
            return value

    def _validate(self, name: str, value: Any) -> Any:
        from pydantic import ValidationError

        try:
            return self._adapter(name).validate_python(value)
        except ValidationError as exc:
            raise self._refuse(name, value, _first_error(exc)) from None

    def from_text(self, name: str, raw: str) -> Any:
        """A value given as text (``headwater run -p name=raw``), converted to the
        annotation: tried as the text itself (``3`` for int, ``2026-01-02`` for a date,
        ``red`` for an Enum), then as JSON (``[1, 2]``, ``{"x": 1}``, ``null``; ``None``
        too, where the annotation takes None).
        Unannotated: JSON when it is valid JSON, else the text."""
        annotation = self.annotations.get(name, Any)
        if annotation in _ANY:
            import json  # only for values given as text (not part of every import)

            try:
                return json.loads(raw)
            except json.JSONDecodeError:
                return raw
        if annotation is str:
            return raw
        from pydantic import ValidationError

        adapter = self._adapter(name)
        try:
            return adapter.validate_python(raw)
        except ValidationError as as_text:
            try:
                return adapter.validate_json(raw)
            except ValidationError as as_json:
                if raw.strip() == "None":  # Python's spelling of JSON's null
                    with contextlib.suppress(ValidationError):
                        return adapter.validate_python(None)
                looks_json = raw.lstrip()[:1] in ("[", "{", '"')
                detail = _first_error(as_json if looks_json else as_text)
                raise self._refuse(name, raw, detail) from None

    def schema(self, name: str) -> tuple[str, str]:
        """(type name, JSON Schema text) of a parameter; ("", "") when unannotated, and
        no schema for a type JSON Schema cannot express (any class)."""
        known = self._schemas.get(name)
        if known is not None:
            return known
        annotation = self.annotations.get(name, Any)
        if annotation in _ANY:
            return "", ""
        import json

        from pydantic import PydanticUserError

        try:
            text = json.dumps(
                self._adapter(name).json_schema(), sort_keys=True, separators=(",", ":")
            )
        except PydanticUserError:
            text = ""
        self._schemas[name] = (type_name(annotation), text)
        return self._schemas[name]


def _first_error(exc: Any) -> str:
    errors = exc.errors(include_url=False)
    if not errors:
        return ""
    first = errors[0]
    where = ".".join(str(p) for p in first.get("loc", ()))
    return (f"{where}: " if where else "") + str(first.get("msg", ""))


def _annotations(fn: Callable[..., Any], names: list[str]) -> dict[str, Any]:
    """Resolved annotations by parameter name (string annotations evaluated in the
    function's module). One that cannot be resolved (a name imported only under
    TYPE_CHECKING) is not checked rather than failing the flow's definition."""
    target = inspect.unwrap(fn)
    try:
        # (with Annotated's extras: ``Annotated[int, Field(gt=0)]`` keeps its constraint)
        hints = typing.get_type_hints(target, include_extras=True)
    except Exception:
        hints = {}
        raw = getattr(target, "__annotations__", {})
        namespace = getattr(target, "__globals__", {})
        for name in names:
            annotation = raw.get(name, inspect.Parameter.empty)
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, namespace)  # as get_type_hints does
                except Exception:
                    annotation = Any
            hints[name] = annotation
    return {name: hints.get(name, inspect.Parameter.empty) for name in names}


__all__ = ["ParameterTypes", "type_name"]
