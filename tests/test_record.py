"""`lgemu.record.Record` stands in for `@dataclass` on the classes every boot loads (issue 12:
start-up), so each record must behave as the dataclass it replaced: checked here side by side
with a dataclass twin declared the same way."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from lgemu.record import Record, factory


@dataclasses.dataclass(frozen=True)
class FrozenTwin:
    a: int
    b: str = "b"
    c: tuple[int, ...] = ()


class Frozen(Record, frozen=True):
    a: int
    b: str = "b"
    c: tuple[int, ...] = ()


@dataclasses.dataclass
class MutableTwin:
    a: int
    items: list[int] = dataclasses.field(default_factory=list)


class Mutable(Record):
    a: int
    items: list[int] = factory(list)


class Identity(Record, frozen=True, eq=False):
    a: int


def twins(make_record: type, make_dataclass: type, *args: object, **kwargs: object) -> tuple:
    return make_record(*args, **kwargs), make_dataclass(*args, **kwargs)


@pytest.mark.parametrize(("args", "kwargs"), [((1,), {}), ((1, "x"), {}), ((), {"a": 2}),
                                              ((3,), {"c": (4, 5)}), ((), {"c": (), "a": 0})])
def test_a_record_is_made_shown_and_compared_as_its_dataclass_twin(args: tuple,
                                                                    kwargs: dict) -> None:
    record, twin = twins(Frozen, FrozenTwin, *args, **kwargs)
    assert repr(record) == repr(twin).replace("FrozenTwin", "Frozen")
    assert vars(record) == vars(twin) and list(vars(record)) == list(vars(twin))
    assert record == Frozen(*args, **kwargs) and hash(record) == hash(Frozen(*args, **kwargs))
    assert record != Frozen(-1) and record != twin
    assert record.replace(b="y") == Frozen(**{**vars(twin), "b": "y"})
    assert pickle.loads(pickle.dumps(record)) == record == copy.deepcopy(record)
    match record:
        case Frozen(a, b, c):
            assert (a, b, c) == (twin.a, twin.b, twin.c)


@pytest.mark.parametrize(("args", "kwargs"), [((), {}), ((1, 2, 3, 4), {}), ((1,), {"a": 1}),
                                              ((), {"a": 1, "d": 2}), ((), {"b": "x"})])
def test_a_record_refuses_the_arguments_its_dataclass_twin_refuses(args: tuple,
                                                                   kwargs: dict) -> None:
    with pytest.raises(TypeError):
        FrozenTwin(*args, **kwargs)
    with pytest.raises(TypeError):
        Frozen(*args, **kwargs)


def test_frozen_records_refuse_changes_as_frozen_dataclasses_do() -> None:
    record = Frozen(1)
    for change in (lambda r: setattr(r, "a", 2), lambda r: setattr(r, "new", 2),
                   lambda r: delattr(r, "a")):
        with pytest.raises(dataclasses.FrozenInstanceError):
            change(record)
        with pytest.raises(dataclasses.FrozenInstanceError):
            change(FrozenTwin(1))
    assert record == Frozen(1)


def test_mutable_records_change_get_fresh_defaults_and_are_unhashable() -> None:
    first, second = Mutable(1), Mutable(1)
    first.items.append(7)
    first.a = 5
    assert (first, second) == (Mutable(5, [7]), Mutable(1, []))
    assert not hasattr(Mutable, "items") and not hasattr(MutableTwin, "items")
    for value in (Mutable(1), MutableTwin(1)):
        with pytest.raises(TypeError):
            hash(value)


def test_eq_false_compares_and_hashes_by_identity() -> None:
    one, other = Identity(1), Identity(1)
    assert one == one and one != other and len({one, other}) == 2


def test_a_field_without_a_default_cannot_follow_one_with() -> None:
    with pytest.raises(TypeError):
        class Bad(Record):
            a: int = 0
            b: int


def test_a_subclass_of_a_frozen_record_is_frozen_and_hashed_by_all_its_fields() -> None:
    """As the kill kinds are: `Kill` is frozen, each kind adds its own fields."""
    class Base(Record, frozen=True):
        a: int

    class Kind(Base):
        b: str

    kind = Kind(1, "x")
    assert kind._fields == ("a", "b") and hash(kind) == hash(Kind(1, "x")) != hash(Kind(1, "y"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        kind.b = "y"
