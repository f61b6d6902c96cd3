"""A product's deployments (docs/nerveshub-api.md, "Deployments")."""

from __future__ import annotations

from datetime import datetime

from django.http import HttpRequest
from ninja import Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict, Field

from deployments import rollout
from deployments.models import Deployment
from devices.fields import normalise_tags
from firmware.models import Firmware, FirmwareKind
from nerveshub.apihelpers import actor
from nerveshub.nhapi.common import Data, FieldErrors, loose_bool, loose_tags, not_found, product_for
from nerveshub.tenancy.models import Product, Role

router = Router(tags=["deployments"])
BASE = "/orgs/{org}/products/{product}/deployments"


class ConditionsIn(Schema):
    model_config = ConfigDict(extra="ignore")
    version: str | None = Field("", max_length=200)
    tags: list[str] | str | None = []


class DeploymentIn(Schema):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=100)
    firmware: str = Field(min_length=1, max_length=36, description="uuid of a published firmware of the product")
    conditions: ConditionsIn = ConditionsIn(version="", tags=[])
    is_active: bool | str = False


class DeploymentChanges(Schema):
    """What `mix nerves_hub.deployment update NAME KEY VALUE` sends: one key,
    its value as text."""

    model_config = ConfigDict(extra="forbid")
    name: str | None = Field(None, min_length=1, max_length=100)
    firmware: str | None = Field(None, min_length=1, max_length=36, description="uuid of a published firmware")
    is_active: bool | str | None = Field(None, description='true/false, or the text "true"/"false"')
    state: str | None = Field(None, max_length=10, description='"on" activates, "off" deactivates')
    version: str | None = Field(None, max_length=200, description="The version condition")
    tags: list[str] | str | None = Field(None, description="The tags condition (a list, or text with commas)")
    conditions: ConditionsIn | None = None


class DeploymentUpdateIn(Schema):
    model_config = ConfigDict(extra="ignore")
    deployment: DeploymentChanges


class ConditionsOut(Schema):
    version: str
    tags: list[str]


class DeploymentOut(Schema):
    name: str
    is_active: bool
    state: str
    firmware_uuid: str
    firmware_version: str
    conditions: ConditionsOut
    paused: bool
    updated_at: datetime


def deployment_out(deployment: Deployment) -> DeploymentOut:
    return DeploymentOut(
        name=deployment.name,
        is_active=deployment.is_active,
        state="on" if deployment.is_active else "off",
        firmware_uuid=deployment.firmware.uuid or "",
        firmware_version=deployment.firmware.version,
        conditions=ConditionsOut(version=deployment.conditions_version, tags=list(deployment.conditions_tags)),
        paused=deployment.paused_at is not None,
        updated_at=deployment.updated_at,
    )


def _deployment(request: HttpRequest, org: str, product: str, name: str, role: str = Role.VIEW) -> Deployment:
    found = product_for(request, org, product, role)
    deployment = Deployment.objects.select_related("firmware", "product").filter(product=found, name=name).first()
    if deployment is None:
        raise not_found(f"deployment {name!r}")
    return deployment


def _firmware(product: Product, uuid: str) -> Firmware:
    # Whether it may be deployed (validated, this product's) is the service's rule.
    firmware = Firmware.objects.filter(product=product, uuid=uuid.strip(), kind=FirmwareKind.FIRMWARE).first()
    if firmware is None:
        raise FieldErrors({"firmware": [f"no firmware {uuid[:40]!r} in {product.name}"]})
    return firmware


def _state(value: str) -> bool:
    text = value.strip().lower()
    if text not in ("on", "off"):
        raise FieldErrors({"state": ['must be "on" or "off"']})
    return text == "on"


@router.get(BASE, response=Data[list[DeploymentOut]])
def list_deployments(request: HttpRequest, org: str, product: str) -> Data[list[DeploymentOut]]:
    found = product_for(request, org, product)
    rows = Deployment.objects.filter(product=found).select_related("firmware").order_by("name")
    return Data(data=[deployment_out(d) for d in rows])


@router.post(BASE, response={201: Data[DeploymentOut]})
def create_deployment(
    request: HttpRequest, org: str, product: str, payload: DeploymentIn
) -> Status[Data[DeploymentOut]]:
    """Created inactive; `is_active` true activates it once created."""
    found = product_for(request, org, product, Role.MANAGE)
    activate = loose_bool("is_active", payload.is_active)
    if Deployment.objects.filter(product=found, name=payload.name).exists():
        raise FieldErrors({"name": ["has already been taken"]})
    deployment = Deployment(
        org=found.org,
        product=found,
        name=payload.name,
        firmware=_firmware(found, payload.firmware),
        conditions_version=(payload.conditions.version or "").strip(),
        conditions_tags=normalise_tags(loose_tags(payload.conditions.tags or [])),
    )
    user = actor(request)
    rollout.save_deployment(user, deployment, ["name", "firmware"], via="nerveshub-api")
    if activate:
        rollout.set_active(user, deployment, True)
    deployment.refresh_from_db()
    return Status(201, Data(data=deployment_out(deployment)))


@router.get(BASE + "/{name}", response=Data[DeploymentOut])
def get_deployment(request: HttpRequest, org: str, product: str, name: str) -> Data[DeploymentOut]:
    return Data(data=deployment_out(_deployment(request, org, product, name)))


@router.put(BASE + "/{name}", response=Data[DeploymentOut])
def update_deployment(
    request: HttpRequest, org: str, product: str, name: str, payload: DeploymentUpdateIn
) -> Data[DeploymentOut]:
    """`{"deployment": {KEY: VALUE}}`: a new `firmware` uuid changes the release,
    `is_active` or `state` ("on"/"off") switches it, `name`, `version`, `tags`
    or `conditions` change the rest. Fields are saved first, then the switch."""
    deployment = _deployment(request, org, product, name, Role.MANAGE)
    changes = payload.deployment
    active: bool | None = None
    if changes.is_active is not None and changes.state is not None:
        raise FieldErrors({"state": ["send either is_active or state, not both"]})
    if changes.is_active is not None:
        active = loose_bool("is_active", changes.is_active)
    if changes.state is not None:
        active = _state(changes.state)
    fields: dict[str, object] = {}
    if changes.name is not None and changes.name != deployment.name:
        if Deployment.objects.filter(product=deployment.product, name=changes.name).exists():
            raise FieldErrors({"name": ["has already been taken"]})
        fields["name"] = changes.name
    if changes.firmware is not None:
        fields["firmware"] = _firmware(deployment.product, changes.firmware)
    if changes.conditions is not None:
        if changes.conditions.version is not None:
            fields["conditions_version"] = changes.conditions.version.strip()
        if changes.conditions.tags is not None:
            fields["conditions_tags"] = normalise_tags(loose_tags(changes.conditions.tags))
    if changes.version is not None:
        fields["conditions_version"] = changes.version.strip()
    if changes.tags is not None:
        fields["conditions_tags"] = normalise_tags(loose_tags(changes.tags))
    user = actor(request)
    if fields:
        for field, value in fields.items():
            setattr(deployment, field, value)
        rollout.save_deployment(user, deployment, fields, via="nerveshub-api")
    if active is not None:
        rollout.set_active(user, deployment, active)
    deployment.refresh_from_db()
    return Data(data=deployment_out(deployment))


@router.delete(BASE + "/{name}", response={204: None})
def delete_deployment(request: HttpRequest, org: str, product: str, name: str) -> Status[None]:
    deployment = _deployment(request, org, product, name, Role.MANAGE)
    try:
        rollout.delete_deployment(actor(request), deployment, via="nerveshub-api")
    except rollout.DeploymentInUse as exc:
        raise HttpError(409, str(exc)) from None
    return Status(204, None)
