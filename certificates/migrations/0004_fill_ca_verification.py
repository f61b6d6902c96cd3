"""Fill the key fingerprint and subject hash of existing CAs, and decide which
are verified.

A CA registered before proof of possession was required is unverified: it
provisions and authenticates no device until its org submits a verification
certificate. The exception is a CA whose registration audit event records that
a proof was checked (the optional proof of the earlier flow): it stays verified,
the first such row per key only (0005 makes the key unique among verified rows).
CA tables hold a handful of rows per organization, so one pass is enough.
"""

import hashlib

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from django.db import migrations


def fill(apps, schema_editor):
    CACertificate = apps.get_model("certificates", "CACertificate")
    AuditEvent = apps.get_model("tenancy", "AuditEvent")
    proven = {
        event.subject_id
        for event in AuditEvent.objects.filter(
            action="ca_certificate.registered", subject_type="cacertificate"
        ).only("subject_id", "details")
        if isinstance(event.details, dict) and event.details.get("proof_of_possession") is True
    }
    owned: set[str] = set()
    for ca in CACertificate.objects.order_by("created_at", "pk").iterator():
        cert = x509.load_der_x509_certificate(bytes(ca.der))
        spki = cert.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        ca.public_key_fingerprint = hashlib.sha256(spki).hexdigest()
        ca.subject_hash = hashlib.sha256(cert.subject.public_bytes()).hexdigest()
        ca.verified_at = None
        if str(ca.pk) in proven and ca.public_key_fingerprint not in owned:
            owned.add(ca.public_key_fingerprint)
            ca.verified_at = ca.created_at
        ca.save(update_fields=["public_key_fingerprint", "subject_hash", "verified_at"])


class Migration(migrations.Migration):
    dependencies = [
        ("certificates", "0003_ca_verification"),
    ]

    operations = [
        migrations.RunPython(fill, migrations.RunPython.noop),
    ]
