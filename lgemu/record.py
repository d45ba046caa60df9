"""Records: classes made of annotated fields that behave as dataclasses do, for the classes
every boot loads.

`@dataclass` writes each class's methods as source text and compiles it while the module
loads: about half a millisecond a class, and the two dozen records a plain `lgemu boot` loads
(its configuration, the kernel image, the era, the Host's persist states…) made a tenth of its
start-up (issue 12).  A `Record` subclass gets the same behaviour from methods written once,
here, for all of them:

* made from its fields in order, or by name; a field with a default may be left out, and
  `factory(make)` is a default made afresh for each record (a dataclass's `default_factory`);
* shown as ``Name(field=value, …)``;
* equal to a record of the same class with equal fields (`eq=False`: only to itself);
* `frozen=True`: never changed (assigning raises `dataclasses.FrozenInstanceError`, as a
  frozen dataclass's would) and hashed by its fields;
* `replace(**changes)`: a copy with some fields changed; `_fields`: the names, in order.

Records pickle and copy as any object does (their fields are their `__dict__`).  The kill
kinds of `lgemu.kills` are frozen records too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import Any, ClassVar


class _Factory:
    """A default made afresh, by `make()`, for every record that leaves its field out."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


def factory(make: Callable[[], Any]) -> Any:
    """The default of a field whose value is mutable (`field: list[int] = factory(list)`)."""
    return _Factory(make)


class Record:
    """Base of the records; see the module docstring.  Class keywords: `frozen` (default
    False, or the base record's) and `eq` (default True), as `@dataclass` takes them."""

    _fields: ClassVar[tuple[str, ...]] = ()  # field names, in order
    _defaults: ClassVar[dict[str, object]] = {}  # name → default value or _Factory

    _frozen: ClassVar[bool] = False

    def __init_subclass__(cls, frozen: bool | None = None, eq: bool = True,
                          **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if frozen is None:  # a subclass of a frozen record is frozen too
            frozen = cls._frozen
        cls._frozen = frozen
        defaults = dict(cls._defaults)
        own = [name for name, kind in vars(cls).get("__annotations__", {}).items()
               if not str(kind).startswith(("ClassVar", "typing.ClassVar"))]
        for name in own:
            if name in vars(cls):
                defaults[name] = value = vars(cls)[name]
                if isinstance(value, _Factory):
                    delattr(cls, name)  # as with a default_factory, no class attribute
            elif name in defaults:
                del defaults[name]
        names = (*cls._fields, *(name for name in own if name not in cls._fields))
        required = [name for name in names if name not in defaults]
        if required and names.index(required[-1]) > len(required) - 1:
            raise TypeError(f"{cls.__name__}: a field without a default follows one with")
        cls._fields, cls._defaults, cls.__match_args__ = names, defaults, names
        if eq and "__eq__" not in vars(cls):  # a class's own methods stay, as dataclass's do
            cls.__eq__ = Record._eq  # type: ignore[method-assign]
            cls.__hash__ = Record._hash if frozen else None  # type: ignore[assignment]
        if frozen:
            cls.__setattr__ = Record._refuse_set  # type: ignore[method-assign]
            cls.__delattr__ = Record._refuse_delete  # type: ignore[method-assign]

    def __init__(self, *values: object, **named: object) -> None:
        cls = type(self)
        fields, defaults = cls._fields, cls._defaults
        if len(values) > len(fields):
            raise TypeError(f"{cls.__name__} takes {len(fields)} values, not {len(values)}")
        given = dict(zip(fields, values))  # noqa: B905 (fewer values than fields is fine)
        for name, value in named.items():
            if name not in fields or name in given:
                raise TypeError(f"{cls.__name__}: unexpected or repeated value {name!r}")
            given[name] = value
        if named or len(given) < len(fields):
            for name in fields:
                if name not in given:
                    if name not in defaults:
                        raise TypeError(f"{cls.__name__} is missing {name}")
                    default = defaults[name]
                    given[name] = default.make() if isinstance(default, _Factory) else default
            given = {name: given[name] for name in fields}  # __dict__ in field order
        self.__dict__.update(given)

    def _values(self) -> tuple[object, ...]:
        return tuple(self.__dict__[name] for name in self._fields)

    def __repr__(self) -> str:
        shown = ", ".join(f"{name}={self.__dict__[name]!r}" for name in self._fields)
        return f"{type(self).__qualname__}({shown})"

    def replace(self, **changes: object) -> Any:
        """A record of the same class, with `changes` (a dataclass's `dataclasses.replace`)."""
        return type(self)(**{**{name: self.__dict__[name] for name in self._fields},
                             **changes})

    def _eq(self, other: object) -> bool:
        if other.__class__ is not self.__class__:
            return NotImplemented
        return self._values() == other._values()  # type: ignore[attr-defined]

    def _hash(self) -> int:
        return hash(self._values())

    def _refuse_set(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def _refuse_delete(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")
