"""The MQTT contract as code: events checked against `docs/asyncapi.yaml`.

The AsyncAPI document is the one description of what the server publishes. Each event
type is a message of the user topic's channel whose `name` is the type; its `payload` is
the JSON Schema of the whole envelope `{type, chat?, version?, data, ts}`. This module
loads the document once and validates events against it:

- `check_event(event)`: an `Event` as it will be published (its JSON), ValueError if it
  does not match its type's schema. `events.check_against_contract` calls it for every
  event about to be published when OUTBOX_CHECK_SCHEMAS is on (the test suite turns it
  on for every process).
- `check_payload(payload)`: the same for a received payload (bytes, str or parsed JSON).
- `check_data(type, data)`: the `data` of an event alone.
- `check_topic(topic, type)`: that `topic` is an event channel's address and `type` one of
  its messages (typing on the typing topic, not on the chat's).
- `event_schema(type)`, `documented_event_types()`, `schema_validator(ref)`: for tests
  and tools.

Infrastructure: imports no app (the schemas name the shapes, the apps build them).
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft7Validator, FormatChecker
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from chatserver.events import Event

DOCUMENT_PATH = Path(__file__).resolve().parent.parent / "docs" / "asyncapi.yaml"
# The document is registered under this URI, so that schemas refer into it by pointer.
DOCUMENT_URI = "urn:chat-backend:asyncapi"
# The channels whose messages are events (the presence channel carries plain strings).
EVENT_CHANNELS = ("userTopic", "chatTopic", "typingTopic")

_format_checker = FormatChecker()


@_format_checker.checks("date-time", raises=ValueError)
def _is_datetime(value: object) -> bool:
    # jsonschema checks date-time only with an optional extra package; this one is enough
    # for RFC 3339 as DRF writes it.
    if not isinstance(value, str):
        return True
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})", value):
        return False
    datetime.fromisoformat(value.replace("Z", "+00:00"))
    return True


@cache
def document() -> dict[str, Any]:
    """The AsyncAPI document, parsed once."""
    with open(DOCUMENT_PATH, encoding="utf-8") as f:
        return yaml.safe_load(f)


@cache
def _registry() -> Registry:
    return Registry().with_resource(DOCUMENT_URI, Resource(contents=document(), specification=DRAFT7))


def resolve(ref: str) -> Any:
    """What a local `$ref` of the document (`#/components/...`) points to."""
    if not ref.startswith("#/"):
        raise ValueError(f"not a local reference: {ref!r}")
    node: Any = document()
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _deref(node: Any) -> Any:
    while isinstance(node, dict) and set(node) == {"$ref"}:
        node = resolve(node["$ref"])
    return node


@cache
def _event_messages() -> dict[str, dict[str, Any]]:
    """Event type -> its message object, from the event channels."""
    messages: dict[str, dict[str, Any]] = {}
    for channel_name in EVENT_CHANNELS:
        channel = document()["channels"][channel_name]
        for key, ref in channel.get("messages", {}).items():
            message = _deref(ref)
            name = message.get("name")
            if not name:
                raise ValueError(f"message {key!r} of channel {channel_name!r} has no name")
            if messages.setdefault(name, message) is not message:
                raise ValueError(f"two different messages are named {name!r}")
    return messages


def documented_event_types() -> set[str]:
    """Every event type the document describes."""
    return set(_event_messages())


def _payload_ref(type: str) -> str:
    try:
        payload = _event_messages()[str(type)]["payload"]
    except KeyError:
        raise ValueError(f"event type {str(type)!r} is not documented in docs/asyncapi.yaml") from None
    if not (isinstance(payload, dict) and set(payload) == {"$ref"}):
        raise ValueError(f"the payload of {type} must be a $ref to components/schemas")
    return payload["$ref"]


def event_schema(type: str) -> dict[str, Any]:
    """The JSON Schema of the whole event (envelope and data) of `type`: the document's
    `components/schemas/<Type>Event`. Its own `$ref`s point into the document, so validate
    with `validator(type)` rather than on its own. ValueError for an undocumented type."""
    return resolve(_payload_ref(type))


@cache
def _validator_for(ref: str) -> Draft7Validator:
    return Draft7Validator({"$ref": DOCUMENT_URI + ref}, registry=_registry(), format_checker=_format_checker)


def validator(type: str) -> Draft7Validator:
    """A validator of events of `type` (draft-07, as AsyncAPI 3 schemas are)."""
    return _validator_for(_payload_ref(type))


def _data_refs(ref: str) -> list[str]:
    """The refs of the `data` schemas of an envelope schema (one per variant)."""
    schema = resolve(ref)
    if set(schema) == {"$ref"}:
        return _data_refs(schema["$ref"])
    if "data" in schema.get("properties", {}):
        return [f"{ref}/properties/data"]
    keyword = "oneOf" if "oneOf" in schema else "anyOf"
    return [data for i in range(len(schema.get(keyword, []))) for data in _data_refs(f"{ref}/{keyword}/{i}")]


def check_data(type: str, data: Any) -> None:
    """Validate the `data` of an event of `type` on its own (for clients that keep only
    the data, like the simulator's output); ValueError if no variant of it matches."""
    failures = []
    for ref in _data_refs(_payload_ref(type)):
        errors = _errors(_validator_for(ref), data)
        if not errors:
            return
        failures.extend(errors)
    raise ValueError(f"{type} data does not match docs/asyncapi.yaml:\n  " + "\n  ".join(failures)
                     + f"\ndata: {json.dumps(data, ensure_ascii=False)[:2000]}")


def schema_validator(ref: str) -> Draft7Validator:
    """A validator of the schema at a local ref, e.g. `#/components/schemas/Message`."""
    resolve(ref)  # KeyError for a ref that does not exist
    return _validator_for(ref)


def _errors(validator_: Draft7Validator, value: Any) -> list[str]:
    errors = sorted(validator_.iter_errors(value), key=lambda e: list(e.absolute_path))
    lines = []
    for error in errors:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        # oneOf failures: say why each branch failed, which is what one needs to fix it.
        reasons = [f"{'/'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in error.context or ()]
        message = f"matches none of the variants [{'; '.join(reasons[:6])}]" if reasons else error.message
        lines.append(f"{where}: {message}")
    return lines


def check_payload(payload: bytes | str | dict) -> dict:
    """Validate one event as received (raw or parsed); return it parsed. ValueError if it
    is not JSON, has an undocumented type, or does not match its type's schema."""
    if isinstance(payload, (bytes, str)):
        try:
            payload = json.loads(payload)
        except ValueError as exc:
            raise ValueError(f"an event is JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise ValueError(f"an event is a JSON object, got {type(payload).__name__}")
    event_type = payload.get("type")
    if not isinstance(event_type, str):
        raise ValueError(f"an event has a string `type`, got {event_type!r}")
    errors = _errors(validator(event_type), payload)
    if errors:
        raise ValueError(
            f"{event_type} event does not match docs/asyncapi.yaml:\n  " + "\n  ".join(errors)
            + f"\nevent: {json.dumps(payload, ensure_ascii=False)[:2000]}"
        )
    return payload


@cache
def _channel_addresses() -> list[tuple[re.Pattern[str], str]]:
    """(the address as a pattern, channel name) of each event channel."""
    out = []
    for name in EVENT_CHANNELS:
        address = document()["channels"][name]["address"]
        out.append((re.compile(re.sub(r"\\\{\w+\\\}", "[^/+#]+", re.escape(address))), name))
    return out


def channel_event_types(channel: str) -> set[str]:
    """The event types a channel carries (its messages' names)."""
    return {_deref(ref)["name"] for ref in document()["channels"][channel].get("messages", {}).values()}


def check_topic(topic: str, event_type: str) -> None:
    """ValueError unless `topic` is the address of an event channel that carries
    `event_type`."""
    for pattern, name in _channel_addresses():
        if pattern.fullmatch(topic):
            if event_type not in channel_event_types(name):
                raise ValueError(f"{event_type} is not a message of {name} ({topic}) in docs/asyncapi.yaml")
            return
    raise ValueError(f"{topic} is no event channel's address in docs/asyncapi.yaml")


def check_event(event: Event) -> None:
    """Validate an `Event` as it will be published (its JSON form); ValueError if it does
    not match the schema of its type in docs/asyncapi.yaml."""
    check_payload(event.encode())
