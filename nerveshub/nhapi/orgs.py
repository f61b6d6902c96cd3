"""An organization's signing keys, CA certificates and products
(docs/nerveshub-api.md, "Keys", "CA certificates", "Products")."""

from __future__ import annotations

from datetime import datetime

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from ninja import Router, Schema, Status
from ninja.errors import HttpError
from pydantic import ConfigDict, Field

from certificates import services as certificates
from certificates.models import CACertificate
from devices.fields import normalise_tags
from devices.models import validate_tags
from firmware import services as firmware
from firmware.models import SigningKey
from nerveshub.apihelpers import actor
from nerveshub.nhapi.common import PEM_MAX, Data, FieldErrors, not_found, org_for, pem_from_base64, product_for
from nerveshub.tenancy import services as tenancy
from nerveshub.tenancy.models import Organization, Product, Role

router = Router()
KEYS = "/orgs/{org}/keys"
CAS = "/orgs/{org}/ca_certificates"
PRODUCTS = "/orgs/{org}/products"


# --- Signing keys --------------------------------------------------------------------


class KeyIn(Schema):
    model_config = ConfigDict(extra="ignore")
    name: str = Field(min_length=1, max_length=100)
    key: str = Field(min_length=1, max_length=1000, description="Base64 ed25519 public key (fwup-key.pub)")


class KeyOut(Schema):
    name: str
    key: str


def _key_out(key: SigningKey) -> KeyOut:
    return KeyOut(name=key.name, key=key.key)


def _key(request: HttpRequest, org: str, name: str, role: str = Role.VIEW) -> SigningKey:
    key = SigningKey.objects.filter(org=org_for(request, org, role), name=name).first()
    if key is None:
        raise not_found(f"key {name!r}")
    return key


@router.get(KEYS, response=Data[list[KeyOut]], tags=["keys"])
def list_keys(request: HttpRequest, org: str) -> Data[list[KeyOut]]:
    rows = SigningKey.objects.filter(org=org_for(request, org)).order_by("name")
    return Data(data=[_key_out(k) for k in rows])


@router.post(KEYS, response={201: Data[KeyOut]}, tags=["keys"])
def create_key(request: HttpRequest, org: str, payload: KeyIn) -> Status[Data[KeyOut]]:
    organization = org_for(request, org, Role.ADMIN)
    if SigningKey.objects.filter(org=organization, name=payload.name.strip()).exists():
        raise FieldErrors({"name": ["has already been taken"]})
    key = firmware.create_signing_key(actor(request), organization, payload.name, payload.key.strip())
    return Status(201, Data(data=_key_out(key)))


@router.get(KEYS + "/{name}", response=Data[KeyOut], tags=["keys"])
def get_key(request: HttpRequest, org: str, name: str) -> Data[KeyOut]:
    return Data(data=_key_out(_key(request, org, name)))


@router.delete(KEYS + "/{name}", response={204: None}, tags=["keys"])
def delete_key(request: HttpRequest, org: str, name: str) -> Status[None]:
    key = _key(request, org, name, Role.ADMIN)
    try:
        firmware.delete_signing_key(actor(request), key)
    except firmware.SigningKeyInUse as exc:
        raise HttpError(409, exc.reason) from None
    return Status(204, None)


# --- CA certificates -----------------------------------------------------------------


class JitpIn(Schema):
    model_config = ConfigDict(extra="ignore")
    product_name: str | None = Field(None, max_length=100, description="Product unknown devices are created in")
    product: str | None = Field(None, max_length=100, description="The same as product_name")
    tags: list[str] | str = []
    description: str = Field("", max_length=200)


class CAIn(Schema):
    model_config = ConfigDict(extra="ignore")
    cert: str = Field(min_length=1, max_length=PEM_MAX * 2, description="The CA certificate: PEM, base64-encoded")
    verification_cert: str | None = Field(
        None,
        max_length=PEM_MAX * 2,
        description="Proof of possession (required): base64 of a PEM certificate signed by the CA that "
        "carries the token from GET …/ca_certificates/verification_token as its common name or as the "
        "SAN URI urn:nerveshub:verify:<token>",
    )
    description: str = Field("", max_length=200)
    jitp: JitpIn | None = None


class JitpOut(Schema):
    product_name: str
    tags: list[str]
    description: str


class CAOut(Schema):
    serial: str
    not_before: datetime
    not_after: datetime
    description: str
    jitp: JitpOut | None


class VerificationTokenOut(Schema):
    verification_token: str


def _ca_out(ca: CACertificate) -> CAOut:
    product = ca.jitp_product
    jitp = (
        JitpOut(product_name=product.name, tags=list(ca.jitp_tags), description=ca.jitp_description)
        if product is not None
        else None
    )
    return CAOut(
        serial=ca.serial, not_before=ca.not_before, not_after=ca.not_after, description=ca.description, jitp=jitp
    )


def _ca(request: HttpRequest, org: str, serial: str, role: str = Role.VIEW) -> CACertificate:
    organization = org_for(request, org, role)
    rows = CACertificate.objects.select_related("jitp_product").filter(org=organization, serial=serial)
    found = list(rows.order_by("-created_at")[:2])
    if len(found) != 1:
        # Two CAs of the organization from different issuers may share a serial:
        # the serial then names neither (the hub's own API names CAs by key id).
        raise not_found(f"CA certificate {serial!r}")
    return found[0]


def _jitp(org: Organization, jitp: JitpIn) -> tuple[Product, list[str]]:
    name = (jitp.product_name or jitp.product or "").strip()
    product = Product.objects.filter(org=org, name=name).first() if name else None
    if product is None:
        raise FieldErrors({"jitp.product_name": [f"no product {name!r} in {org.name}"]})
    tags = normalise_tags(jitp.tags)
    try:
        validate_tags(tags)
    except ValidationError as exc:
        raise FieldErrors({"jitp.tags": exc.messages}) from None
    return product, tags


@router.get(CAS, response=Data[list[CAOut]], tags=["ca_certificates"])
def list_cas(request: HttpRequest, org: str) -> Data[list[CAOut]]:
    rows = CACertificate.objects.filter(org=org_for(request, org)).select_related("jitp_product")
    return Data(data=[_ca_out(ca) for ca in rows.order_by("-created_at")])


@router.get(CAS + "/verification_token", response=Data[VerificationTokenOut], tags=["ca_certificates"])
def verification_token(request: HttpRequest, org: str) -> Data[VerificationTokenOut]:
    """The token to put in the common name of a certificate signed by the CA,
    sent as `verification_cert`; valid for an hour."""
    organization = org_for(request, org, Role.ADMIN)
    return Data(data=VerificationTokenOut(verification_token=certificates.verification_code(organization)))


@router.post(CAS, response={201: Data[CAOut]}, tags=["ca_certificates"])
def register_ca(request: HttpRequest, org: str, payload: CAIn) -> Status[Data[CAOut]]:
    organization = org_for(request, org, Role.ADMIN)
    pem = pem_from_base64("cert", payload.cert)
    if not payload.verification_cert:
        raise FieldErrors(
            {
                "verification_cert": [
                    "is required: prove you hold the CA's private key. GET "
                    f"/api/orgs/{organization.name}/ca_certificates/verification_token, sign a certificate "
                    "with the CA that carries that token as its common name or as the SAN URI "
                    "urn:nerveshub:verify:<token>, and send it base64-encoded as verification_cert"
                ]
            }
        )
    verification = pem_from_base64("verification_cert", payload.verification_cert)
    product, tags = _jitp(organization, payload.jitp) if payload.jitp is not None else (None, [])
    try:
        ca = certificates.register_ca_certificate(
            actor(request),
            organization,
            pem,
            description=payload.description,
            verification_pem=verification,
            jitp_product=product,
            jitp_tags=tags,
            jitp_description=payload.jitp.description if payload.jitp is not None else "",
        )
    except certificates.CertificateError as exc:
        raise FieldErrors({"cert": [str(exc)]}) from None
    return Status(201, Data(data=_ca_out(ca)))


@router.get(CAS + "/{serial}", response=Data[CAOut], tags=["ca_certificates"])
def get_ca(request: HttpRequest, org: str, serial: str) -> Data[CAOut]:
    return Data(data=_ca_out(_ca(request, org, serial)))


@router.delete(CAS + "/{serial}", response={204: None}, tags=["ca_certificates"])
def delete_ca(request: HttpRequest, org: str, serial: str) -> Status[None]:
    certificates.delete_ca_certificates(actor(request), [_ca(request, org, serial, Role.ADMIN)])
    return Status(204, None)


# --- Products ------------------------------------------------------------------------


class ProductFields(Schema):
    model_config = ConfigDict(extra="ignore")
    name: str | None = Field(None, min_length=1, max_length=100)
    description: str | None = Field(None, max_length=10_000)


class ProductIn(ProductFields):
    product: ProductFields | None = Field(None, description='The same fields wrapped: {"product": {…}}')


class ProductOut(Schema):
    name: str
    description: str


def _product_out(product: Product) -> ProductOut:
    return ProductOut(name=product.name, description=product.description)


def _fields(payload: ProductIn) -> ProductFields:
    return payload.product if payload.product is not None else payload


@router.get(PRODUCTS, response=Data[list[ProductOut]], tags=["products"])
def list_products(request: HttpRequest, org: str) -> Data[list[ProductOut]]:
    rows = Product.objects.filter(org=org_for(request, org)).order_by("name")
    return Data(data=[_product_out(p) for p in rows])


@router.post(PRODUCTS, response={201: Data[ProductOut]}, tags=["products"])
def create_product(request: HttpRequest, org: str, payload: ProductIn) -> Status[Data[ProductOut]]:
    organization = org_for(request, org, Role.MANAGE)
    fields = _fields(payload)
    name = (fields.name or "").strip()
    if not name:
        raise FieldErrors({"name": ["can't be blank"]})
    if Product.objects.filter(org=organization, name=name).exists():
        raise FieldErrors({"name": ["has already been taken"]})
    product = Product(org=organization, name=name, description=fields.description or "", extensions=["health"])
    tenancy.save_product(actor(request), product, ["name", "description"], via="nerveshub-api")
    return Status(201, Data(data=_product_out(product)))


@router.get(PRODUCTS + "/{product}", response=Data[ProductOut], tags=["products"])
def get_product(request: HttpRequest, org: str, product: str) -> Data[ProductOut]:
    return Data(data=_product_out(product_for(request, org, product)))


def _update_product(request: HttpRequest, org: str, product: str, payload: ProductIn) -> Data[ProductOut]:
    found = product_for(request, org, product, Role.MANAGE)
    fields = _fields(payload)
    changes: list[str] = []
    if fields.name is not None and fields.name.strip() != found.name:
        name = fields.name.strip()
        if not name:
            raise FieldErrors({"name": ["can't be blank"]})
        if Product.objects.filter(org=found.org, name=name).exists():
            raise FieldErrors({"name": ["has already been taken"]})
        found.name = name
        changes.append("name")
    if fields.description is not None:
        found.description = fields.description
        changes.append("description")
    if changes:
        tenancy.save_product(actor(request), found, changes, via="nerveshub-api")
    return Data(data=_product_out(found))


@router.put(PRODUCTS + "/{product}", response=Data[ProductOut], tags=["products"])
def put_product(request: HttpRequest, org: str, product: str, payload: ProductIn) -> Data[ProductOut]:
    return _update_product(request, org, product, payload)


@router.patch(PRODUCTS + "/{product}", response=Data[ProductOut], tags=["products"])
def patch_product(request: HttpRequest, org: str, product: str, payload: ProductIn) -> Data[ProductOut]:
    return _update_product(request, org, product, payload)


@router.delete(PRODUCTS + "/{product}", response={204: None}, tags=["products"])
def delete_product(request: HttpRequest, org: str, product: str) -> Status[None]:
    found = product_for(request, org, product, Role.ADMIN)
    try:
        tenancy.delete_product(actor(request), found, via="nerveshub-api")
    except tenancy.ProductInUse as exc:
        raise HttpError(409, str(exc)) from None
    return Status(204, None)
