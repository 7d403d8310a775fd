"""Round-trip properties of the one codec for every command, every event and the envelope.

The event log is only as good as its encoding: a field that does not survive encode/decode, or an
envelope whose bytes change when re-encoded, silently breaks replay and the per-aggregate hash
chain. The hypothesis strategies are derived from `msgspec.inspect.type_info`, so a class added to
`AnyCommand` or `AnyEvent` is covered without touching this file, and a field type the generator
does not know fails the suite instead of being skipped.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from typing import Any

import msgspec
import msgspec.inspect as mi
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from events.commands import COMMAND_CLASSES, AnyCommand, Command
from events.envelope import (
    Envelope,
    chain_hash,
    decode_command,
    decode_envelope,
    encode,
    seal,
)
from events.errors import ValidationError
from events.model import CE_TYPE, EVENT_CLASSES, AnyEvent, Event
from events.names import AGGREGATES, DNS1123_LABEL, Name, Ref

CE_TYPE_RE = re.compile(r"^io\.virtbus\.[a-z_]+\.[a-z_]+\.v1$")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
JSON_INT = 2**53
MAX_COLLECTION = 4
MAX_TEXT = 16

FAST = settings(max_examples=40, deadline=None)

# JSON-ish values for `Any` fields: what a KubeVirt manifest's spec can hold.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-JSON_INT, JSON_INT)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=MAX_TEXT),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def _int_strategy(t: mi.IntType) -> st.SearchStrategy[int]:
    lo = INT64_MIN if t.ge is None else t.ge
    if t.gt is not None:
        lo = max(lo, t.gt + 1)
    hi = INT64_MAX if t.le is None else t.le
    if t.lt is not None:
        hi = min(hi, t.lt - 1)
    ints = st.integers(lo, hi)
    if t.multiple_of is not None:
        step = t.multiple_of
        ints = st.integers(-(-lo // step), hi // step).map(lambda k: k * step)
    return ints


def _float_strategy(t: mi.FloatType) -> st.SearchStrategy[float]:
    if t.multiple_of is not None:
        raise TypeError(f"no strategy for a float with multiple_of: {t!r}")
    return st.floats(
        min_value=t.ge if t.ge is not None else t.gt,
        max_value=t.le if t.le is not None else t.lt,
        exclude_min=t.gt is not None and t.ge is None,
        exclude_max=t.lt is not None and t.le is None,
        allow_nan=False,
        allow_infinity=False,
    )


def _str_strategy(t: mi.StrType) -> st.SearchStrategy[str]:
    lo = t.min_length or 0
    hi = t.max_length if t.max_length is not None else max(lo, MAX_TEXT)
    if t.pattern is None:
        return st.text(min_size=lo, max_size=min(hi, lo + MAX_TEXT))
    return st.from_regex(t.pattern, fullmatch=True).filter(lambda s: lo <= len(s) <= hi)


def _datetime_strategy(t: mi.DateTimeType) -> st.SearchStrategy[datetime]:
    if t.tz is False:
        return st.datetimes()
    return st.datetimes(timezones=st.just(UTC))


def _struct_strategy(t: mi.StructType) -> st.SearchStrategy[Any]:
    required = {f.name: strategy_for(f.type) for f in t.fields if f.required}
    optional = {f.name: strategy_for(f.type) for f in t.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional).map(lambda kw: t.cls(**kw))


def strategy_for(t: mi.Type) -> st.SearchStrategy[Any]:
    """A hypothesis strategy producing values msgspec accepts for the type `t`."""
    match t:
        case mi.AnyType():
            return json_values
        case mi.NoneType():
            return st.none()
        case mi.BoolType():
            return st.booleans()
        case mi.IntType():
            return _int_strategy(t)
        case mi.FloatType():
            return _float_strategy(t)
        case mi.StrType():
            return _str_strategy(t)
        case mi.DateTimeType():
            return _datetime_strategy(t)
        case mi.ListType():
            return st.lists(
                strategy_for(t.item_type),
                min_size=t.min_length or 0,
                max_size=min(t.max_length or MAX_COLLECTION, (t.min_length or 0) + MAX_COLLECTION),
            )
        case mi.DictType():
            return st.dictionaries(
                strategy_for(t.key_type),
                strategy_for(t.value_type),
                min_size=t.min_length or 0,
                max_size=min(t.max_length or MAX_COLLECTION, (t.min_length or 0) + MAX_COLLECTION),
            )
        case mi.UnionType():
            return st.one_of(*(strategy_for(member) for member in t.types))
        case mi.StructType():
            return _struct_strategy(t)
    raise TypeError(f"test_codec has no hypothesis strategy for msgspec type {t!r}; add one")


@functools.cache
def instances(cls: type[Any]) -> st.SearchStrategy[Any]:
    """The strategy for `cls`, built once: hypothesis compiles regexes per strategy object."""
    return strategy_for(mi.type_info(cls))


names = strategy_for(mi.type_info(Name))
refs: st.SearchStrategy[Ref] = st.builds(Ref.of, st.sampled_from(AGGREGATES), names, names)
prevhashes = st.just("") | st.text("0123456789abcdef", min_size=64, max_size=64)
short_text = st.text(max_size=MAX_TEXT)

ALL_CLASSES: tuple[type[Any], ...] = (*COMMAND_CLASSES, *EVENT_CLASSES)


# --- the generator itself ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=lambda c: c.__name__)
def test_generator_knows_every_field_type(cls: type[Any]) -> None:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    for field in info.fields:
        assert isinstance(strategy_for(field.type), st.SearchStrategy), field.name


def test_generator_fails_loudly_on_unknown_type() -> None:
    with pytest.raises(TypeError, match="no hypothesis strategy"):
        strategy_for(mi.type_info(bytes))


@FAST
@given(names)
def test_generated_names_are_dns1123_labels(name: str) -> None:
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name)
    assert len(name) <= 63


# --- commands ------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", COMMAND_CLASSES, ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_command_round_trip(cls: type[Command], data: st.DataObject) -> None:
    cmd = data.draw(instances(cls))
    raw = encode(cmd)
    assert msgspec.json.decode(raw, type=AnyCommand) == cmd
    decoded = decode_command(raw)
    assert type(decoded) is cls
    assert decoded == cmd
    assert encode(decoded) == raw


# --- events and envelopes ------------------------------------------------------------------------


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
@FAST
@given(data=st.data())
def test_event_round_trip(cls: type[Event], data: st.DataObject) -> None:
    event = data.draw(instances(cls))
    raw = encode(event)
    decoded = msgspec.json.decode(raw, type=AnyEvent)
    assert type(decoded) is cls
    assert decoded == event
    assert msgspec.json.decode(raw)["kind"] == cls.__name__


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.__name__)
@FAST
@given(
    data=st.data(),
    ref=refs,
    version=st.integers(0, INT64_MAX),
    prevhash=prevhashes,
    source=short_text,
    actor=short_text,
    correlationid=short_text,
    causationid=short_text,
    time=st.none() | st.datetimes(timezones=st.just(UTC)),
)
def test_envelope_round_trip_and_stable_hash(
    cls: type[Event],
    data: st.DataObject,
    ref: Ref,
    version: int,
    prevhash: str,
    source: str,
    actor: str,
    correlationid: str,
    causationid: str,
    time: datetime | None,
) -> None:
    event = data.draw(instances(cls))
    env, raw = seal(
        event,
        ref=ref,
        version=version,
        prevhash=prevhash,
        source=source,
        actor=actor,
        correlationid=correlationid,
        causationid=causationid,
        time=time,
    )
    assert env.type == CE_TYPE[cls]
    assert env.subject == str(ref)
    assert env.data == event
    assert env.time.tzinfo is not None
    if time is not None:
        assert env.time == time

    decoded = decode_envelope(raw)
    assert isinstance(decoded, Envelope)
    assert decoded == env
    assert type(decoded.data) is cls
    # The chain hash is over bytes: re-encoding what was read must give the same bytes.
    again = encode(decoded)
    assert again == raw
    assert chain_hash(again) == chain_hash(raw)
    assert re.fullmatch(r"[0-9a-f]{64}", chain_hash(raw))


def test_chain_hash_sees_one_changed_byte() -> None:
    from events.model import VMStartRequested

    _, raw = seal(
        VMStartRequested(),
        ref=Ref.vm("a"),
        version=1,
        prevhash="",
        source="/t",
        time=datetime(2024, 1, 1, tzinfo=UTC),
    )
    tampered = raw.replace(b'"version":1', b'"version":2')
    assert tampered != raw
    assert chain_hash(tampered) != chain_hash(raw)


# --- tags and CloudEvents types ------------------------------------------------------------------


def _struct_info(cls: type[Any]) -> mi.StructType:
    info = mi.type_info(cls)
    assert isinstance(info, mi.StructType)
    return info


def test_command_tags_are_distinct_class_names() -> None:
    infos = [_struct_info(c) for c in COMMAND_CLASSES]
    tags = [i.tag for i in infos]
    assert all(i.tag_field == "kind" for i in infos)
    assert tags == [c.__name__ for c in COMMAND_CLASSES]
    assert len(set(tags)) == len(tags)


def test_event_tags_are_distinct_class_names() -> None:
    infos = [_struct_info(c) for c in EVENT_CLASSES]
    tags = [i.tag for i in infos]
    assert all(i.tag_field == "kind" for i in infos)
    assert tags == [c.__name__ for c in EVENT_CLASSES]
    assert len(set(tags)) == len(tags)


def test_every_event_has_a_distinct_well_formed_cloudevents_type() -> None:
    assert set(CE_TYPE) == set(EVENT_CLASSES)
    types = [CE_TYPE[c] for c in EVENT_CLASSES]
    bad = [t for t in types if not CE_TYPE_RE.match(t)]
    assert not bad, f"malformed CloudEvents types: {bad}"
    dupes = {t for t in types if types.count(t) > 1}
    assert not dupes, f"CloudEvents types shared by several classes: {dupes}"


def test_cloudevents_type_examples() -> None:
    from events import model as m

    assert CE_TYPE[m.VMCreated] == "io.virtbus.vm.created.v1"
    assert CE_TYPE[m.VMStartRequested] == "io.virtbus.vm.start_requested.v1"
    assert CE_TYPE[m.ReplicaSetScaled] == "io.virtbus.rs.scaled.v1"
    assert CE_TYPE[m.CommandRejected] == "io.virtbus.command.rejected.v1"


# --- decode_command on bad input -----------------------------------------------------------------


def _reject(raw: bytes) -> ValidationError:
    with pytest.raises(ValidationError) as info:
        decode_command(raw)
    assert info.value.message == str(info.value)
    assert info.value.retryable is False
    return info.value


def test_invalid_json_is_a_validation_error() -> None:
    err = _reject(b'{"kind": "StartVM", "name": ')
    assert "not valid JSON" in err.message
    assert err.field == ""


def test_unknown_kind_names_the_kind() -> None:
    err = _reject(b'{"kind": "LaunchRocket", "name": "a"}')
    assert err.field == "kind"
    assert "LaunchRocket" in err.message


@pytest.mark.parametrize("bad", ["Bad_Name", "-a", "a-", "UPPER", "a.b", "a" * 64, ""])
def test_name_not_dns1123_names_the_field(bad: str) -> None:
    err = _reject(encode({"kind": "StartVM", "name": bad}))
    assert err.field == "name"
    assert "name" in err.message


def test_bad_namespace_names_the_field() -> None:
    err = _reject(encode({"kind": "StartVM", "name": "a", "namespace": "Not_Ok"}))
    assert err.field == "namespace"


def test_negative_replicas_names_the_field() -> None:
    err = _reject(encode({"kind": "ScaleReplicaSet", "name": "web", "replicas": -1}))
    assert err.field == "replicas"
    assert ">= 0" in err.message


def test_too_many_replicas_names_the_field() -> None:
    err = _reject(encode({"kind": "ScaleReplicaSet", "name": "web", "replicas": 10_001}))
    assert err.field == "replicas"
    assert "<= 10000" in err.message


def test_missing_name_is_rejected_with_a_clear_message() -> None:
    err = _reject(b'{"kind": "StartVM"}')
    assert "missing required field `name`" in err.message


def test_missing_name_names_the_field() -> None:
    assert _reject(b'{"kind": "StartVM"}').field == "name"


def test_missing_kind_is_rejected() -> None:
    err = _reject(b'{"name": "a"}')
    assert "kind" in err.message


@pytest.mark.parametrize("bad", ["abc\n", "vm-1\n"])
def test_name_with_trailing_newline_is_rejected(bad: str) -> None:
    assert not re.fullmatch(DNS1123_LABEL.strip("^$"), bad)
    _reject(encode({"kind": "StartVM", "name": bad}))
