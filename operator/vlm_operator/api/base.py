"""The base model of every API object, and the helpers that attach CEL rules to models.

Conventions every model in this package follows (crdgen and the tests rely on them):

- attributes are snake_case in Python and camelCase on the wire (``alias_generator=to_camel``);
  both spellings are accepted on input, ``to_api()`` writes camelCase;
- every field has a ``description``: it is what ``kubectl explain`` prints;
- spec models forbid unknown fields, so a typo in a manifest fails in Python the way
  ``kubectl apply`` (strict field validation) fails against the apiserver;
- CEL rules (``x-kubernetes-validations``) are declared next to the field or model they guard,
  with ``Field(json_schema_extra=cel(...))`` or ``model_config["json_schema_extra"] = cel(...)``.
  A rule that can be checked in Python is mirrored by a validator right beside it, so a model
  validated here rejects what the apiserver rejects; transition rules (``oldSelf``) only exist
  in the apiserver.

Only pydantic and the standard library are imported: the operator, the trainer and the tests
import these models without kubernetes or torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GROUP = "vlmtrain.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Reasons the apiserver accepts on a CEL rule (apiextensions ``ValidationRule.reason``).
RuleReason = Literal[
    "FieldValueInvalid", "FieldValueForbidden", "FieldValueRequired", "FieldValueDuplicate"
]


@dataclass(frozen=True)
class Rule:
    """One CEL validation rule as the apiserver evaluates it.

    ``field_path`` (relative, e.g. ``.hyperparameters.dpo``) makes the apiserver's error name the
    field the rule is about instead of the object the rule is attached to."""

    rule: str
    message: str
    field_path: str | None = None
    reason: RuleReason | None = None

    def to_schema(self) -> dict[str, str]:
        out = {"rule": self.rule, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out


def cel(*rules: Rule, **schema: Any) -> dict[str, Any]:
    """A model's ``json_schema_extra``: its CEL rules plus any other schema keywords.

    For fields and reusable types use ``Cel`` instead: pydantic merges a field's
    ``json_schema_extra`` dicts shallowly, so a field-level rule list would replace the rules its
    type already carries."""
    out: dict[str, Any] = dict(schema)
    if rules:
        out["x-kubernetes-validations"] = [r.to_schema() for r in rules]
    return out


class Cel:
    """``Annotated`` metadata that appends CEL rules to a field's or type's schema.

    Stacks: ``Annotated[FileURI, Cel(immutable("uri"))]`` keeps FileURI's own rules and adds one.
    """

    def __init__(self, *rules: Rule) -> None:
        self.rules = rules

    def __get_pydantic_json_schema__(self, core_schema: Any, handler: Any) -> dict[str, Any]:
        schema = dict(handler(core_schema))  # a copy: never extend a list another field shares
        schema["x-kubernetes-validations"] = [
            *schema.get("x-kubernetes-validations", ()),
            *(r.to_schema() for r in self.rules),
        ]
        return schema

    def __repr__(self) -> str:
        return f"Cel{self.rules!r}"


def Immutable(name: str) -> Cel:
    """``Annotated[X, Immutable("field")]``: set at creation, never changed afterwards."""
    return Cel(immutable(name))


def immutable(name: str) -> Rule:
    """A transition rule: the field may be set at creation but never changed afterwards.

    Kubernetes only evaluates it when the field exists in both the old and the new object, so an
    optional immutable field also needs a presence rule on its parent (see ``presence_fixed``)."""
    return Rule("self == oldSelf", f"{name} is immutable")


def presence_fixed(field: str) -> Rule:
    """On the parent of an optional immutable field: it cannot be added or removed later."""
    return Rule(
        f"has(self.{field}) == has(oldSelf.{field})",
        f"{field} cannot be added or removed after creation",
        field_path=f".{field}",
    )


def cel_string(value: str) -> str:
    """A Python string as a single-quoted CEL string literal (for regexes in ``matches``)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class ApiModel(BaseModel):
    """Base of every spec/status model: camelCase aliases, unknown fields forbidden."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_enum_values=False,
    )

    def to_api(self) -> dict[str, Any]:
        """The object as the apiserver stores it: camelCase keys, JSON types, no nulls."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class StatusModel(ApiModel):
    """Status is written by the operator and the trainer; readers tolerate fields they do not
    know (an older operator reading a newer status), writers still go through the schema."""

    model_config = ConfigDict(extra="ignore")


# --- whole objects ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PrinterColumn:
    """One column of ``kubectl get`` (a CRD additionalPrinterColumn)."""

    name: str
    type: Literal["string", "integer", "number", "boolean", "date"]
    json_path: str
    description: str
    priority: int = 0  # 1 = only shown with -o wide


@dataclass(frozen=True)
class KindInfo:
    """What the CRD says about a kind besides its schema."""

    kind: str
    plural: str
    short_names: tuple[str, ...]
    scope: Literal["Namespaced", "Cluster"]
    printer_columns: tuple[PrinterColumn, ...]
    categories: tuple[str, ...] = ("vlmtrain",)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def crd_name(self) -> str:
        return f"{self.plural}.{GROUP}"


AGE_COLUMN = PrinterColumn(
    "Age", "date", ".metadata.creationTimestamp", "Time since the object was created."
)


class ObjectMeta(BaseModel):
    """The parts of metav1.ObjectMeta the operator reads; everything else is kept as is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow")

    name: str | None = None
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None
    resource_version: str | None = None
    labels: dict[str, str] | None = None
    annotations: dict[str, str] | None = None


class Resource(BaseModel):
    """A whole object (apiVersion, kind, metadata, spec, status) as the apiserver returns it.

    Subclasses set ``KIND`` and narrow ``kind``, ``spec`` and ``status``. Unknown top-level keys
    are ignored so a raw object from the API (or a kopf body) validates as is."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")
    KIND: ClassVar[KindInfo]

    api_version: str = Field(API_VERSION, alias="apiVersion")
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)

    def to_api(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)
