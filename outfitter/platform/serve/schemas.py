"""HTTP request/response models of the serving app, and the limits every request is held to.

Every rule a request can break lives here as a pydantic constraint or validator, so that a bad
request is refused by the ingress with a 422 that names the field and the rule, before any model
replica sees it. Limits are a plain dataclass so deployments and tests can tighten them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag

from outfitter.data.types import CATEGORIES

CategoryName = Literal[CATEGORIES]  # type: ignore[valid-type]  # the 11 Polyvore categories


@dataclass(frozen=True)
class Limits:
    """Size limits of requests (enforced by the schemas and the app)."""

    max_body_bytes: int = 8 * 1024 * 1024  # larger request bodies get a 413
    max_outfit_items: int = 12  # also capped by the model's own maximum outfit length
    max_text_chars: int = 500  # titles, descriptions, target descriptions
    max_image_bytes: int = 4 * 1024 * 1024  # decoded size of one image_b64
    max_image_pixels: int = 4096 * 4096  # width * height of one decoded image
    max_request_pixels: int = 4096 * 4096  # all images of one request together (decoded RGB)
    max_k: int = 100  # results per retrieval
    max_exclude: int = 1000  # ids in one exclude list
    max_targets: int = 8  # blanks in one /v1/complete request
    max_list_limit: int = 200  # page size of GET /v1/items
    max_in_flight: int = 64  # model requests one replica holds at once; more get 503 + Retry-After


LIMITS = Limits()

# Field types carry their rules, so the OpenAPI schema at /docs documents them too.
ItemId = Annotated[str, StringConstraints(min_length=1, max_length=64, strip_whitespace=True)]
Text = Annotated[str, StringConstraints(max_length=LIMITS.max_text_chars)]
# base64 inflates by 4/3; the decoded-size rule is checked again on the bytes.
ImageB64 = Annotated[
    str, StringConstraints(min_length=4, max_length=LIMITS.max_image_bytes * 4 // 3 + 4)
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


class CatalogRef(_Strict):
    """An item of the catalog."""

    item_id: ItemId = Field(description="id of a catalog item")
    is_catalog: ClassVar[bool] = True


class NewItemRef(_Strict):
    """An item that is not in the catalog: embedded on the fly by the CLIP towers."""

    title: Annotated[Text, StringConstraints(min_length=1)] = Field(description="its title")
    description: Text = Field("", description="its description (optional)")
    image_b64: ImageB64 = Field(description="its image: base64 JPEG/PNG/WebP")
    is_catalog: ClassVar[bool] = False
    item_id: ClassVar[None] = None


def _ref_kind(value) -> str:
    """Which model validates an item reference: an object with `item_id` is a catalog item."""
    if isinstance(value, dict):
        return "catalog" if "item_id" in value else "new"
    return "catalog" if isinstance(value, CatalogRef) else "new"


# A catalog item {"item_id"} or a new item {"title", "description", "image_b64"}; the OpenAPI
# schema says so (oneOf), and an object mixing both kinds is refused (extra fields forbidden).
ItemRef = Annotated[
    Annotated[CatalogRef, Tag("catalog")] | Annotated[NewItemRef, Tag("new")],
    Discriminator(_ref_kind),
]
REF_TAGS = ("catalog", "new")  # union tags pydantic puts in error locations


Outfit = Annotated[list[ItemRef], Field(min_length=2, max_length=LIMITS.max_outfit_items)]
Context = Annotated[list[ItemRef], Field(min_length=1, max_length=LIMITS.max_outfit_items)]
Exclude = Annotated[list[ItemId], Field(max_length=LIMITS.max_exclude)]


class Target(_Strict):
    """The missing piece: free text, optionally restricted to one category."""

    description: Annotated[Text, StringConstraints(min_length=1)]
    category: CategoryName | None = None


class CompatibilityRequest(_Strict):
    items: Outfit


class RetrieveRequest(_Strict):
    items: Context
    target: Target
    k: int = Field(10, ge=1, le=LIMITS.max_k)
    exclude: Exclude = []


class CompleteRequest(_Strict):
    items: Context
    targets: Annotated[list[Target], Field(min_length=1, max_length=LIMITS.max_targets)]
    k: int = Field(5, ge=1, le=LIMITS.max_k)
    exclude: Exclude = []


class WeakestItem(BaseModel):
    index: int = Field(description="position of the item in the request's items")
    item_id: str | None = Field(description="its catalog id (null for a new item)")
    score_without: float = Field(description="outfit score with this item removed")


class CompatibilityResponse(BaseModel):
    score: float = Field(ge=0.0, le=1.0, description="probability that the outfit goes together")
    model_version: str
    weakest_item: WeakestItem


class RetrievedItem(BaseModel):
    item_id: str
    score: float
    category: str
    title: str


class TargetCategory(BaseModel):
    """What the model made of a target's category."""

    name: str | None = Field(
        description="the category given, or the one inferred from the description; null when "
        "the model reads no category"
    )
    inferred: bool = Field(description="true when no category was given and the model inferred it")
    confidence: float | None = Field(
        None, ge=0.0, le=1.0, description="the inferred category's probability (null if given)"
    )
    searched: str | None = Field(
        description="the category whose items were searched; null = the whole catalog (an "
        "inferred category below the model's threshold is not searched alone)"
    )


class RetrieveResponse(BaseModel):
    model_version: str
    items: list[RetrievedItem]
    category: TargetCategory


class CompletedTarget(BaseModel):
    target: Target
    items: list[RetrievedItem]
    category: TargetCategory


class CompleteResponse(BaseModel):
    model_version: str
    results: list[CompletedTarget]
    outfit: list[str | None] = Field(
        description="the context (null for new items) followed by the best unused item per target"
    )
    score: float = Field(ge=0.0, le=1.0, description="compatibility of the completed outfit")


class CatalogItem(BaseModel):
    item_id: str
    title: str
    category: str


class ItemsPage(BaseModel):
    total: int
    limit: int
    offset: int
    items: list[CatalogItem]


class ModelInfo(BaseModel):
    name: str
    version: str
    alias: str | None
    run_id: str | None
    metrics: dict[str, float]
    model_config_name: str | None = None
    index: dict = Field(default_factory=dict, description="n_items, dim and shard kinds")
    load_error: str | None = Field(None, description="why the last reload failed (old one kept)")

    model_config = ConfigDict(protected_namespaces=())


class Health(BaseModel):
    status: Literal["ok"]
    model_version: str


class FieldError(BaseModel):
    field: str = Field(description='dotted path of the offending field, e.g. "items.2.image_b64"')
    rule: str = Field(description="the rule it broke")


class ErrorResponse(BaseModel):
    error: str
    errors: list[FieldError] = []


# ---------------------------------------------------------------- request models for other limits


@dataclass(frozen=True)
class RequestModels:
    """The request schemas of one set of limits (the routes of `create_app` use them)."""

    compatibility: type[CompatibilityRequest]
    retrieve: type[RetrieveRequest]
    complete: type[CompleteRequest]


def _build_request_models(limits: Limits) -> RequestModels:
    from pydantic import create_model

    text = Annotated[str, StringConstraints(max_length=limits.max_text_chars)]
    nonempty = Annotated[text, StringConstraints(min_length=1)]
    # image_b64 keeps the default's loose cap: the service checks the decoded size against
    # these limits and answers 413 (errors.decode_images)
    new_item = create_model(
        "NewItemRef",
        __base__=NewItemRef,
        title=(nonempty, Field(description="its title")),
        description=(text, Field("", description="its description (optional)")),
    )
    ref = Annotated[
        Annotated[CatalogRef, Tag("catalog")] | Annotated[new_item, Tag("new")],
        Discriminator(_ref_kind),
    ]
    # outfit lengths keep the defaults' bounds here: the service checks them against these
    # limits and the model's own maximum together, with one message (`_check_length`)
    outfit = Annotated[list[ref], Field(min_length=2, max_length=LIMITS.max_outfit_items)]
    context = Annotated[list[ref], Field(min_length=1, max_length=LIMITS.max_outfit_items)]
    exclude = Annotated[list[ItemId], Field(max_length=limits.max_exclude)]
    target = create_model("Target", __base__=Target, description=(nonempty, ...))
    targets = Annotated[list[target], Field(min_length=1, max_length=limits.max_targets)]
    return RequestModels(
        compatibility=create_model(
            "CompatibilityRequest", __base__=CompatibilityRequest, items=(outfit, ...)
        ),
        retrieve=create_model(
            "RetrieveRequest",
            __base__=RetrieveRequest,
            items=(context, ...),
            target=(target, ...),
            k=(int, Field(10, ge=1, le=limits.max_k)),
            exclude=(exclude, []),
        ),
        complete=create_model(
            "CompleteRequest",
            __base__=CompleteRequest,
            items=(context, ...),
            targets=(targets, ...),
            k=(int, Field(5, ge=1, le=limits.max_k)),
            exclude=(exclude, []),
        ),
    )


def request_models(limits: Limits = LIMITS) -> RequestModels:
    """Request schemas that enforce `limits`: the module's own classes for the defaults, else
    subclasses with the same fields and the limits' bounds (a deployment's `args.limits`)."""
    if limits == LIMITS:
        return RequestModels(CompatibilityRequest, RetrieveRequest, CompleteRequest)
    return _build_request_models(limits)
