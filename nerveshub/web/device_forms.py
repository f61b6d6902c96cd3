"""The forms of the device and product-health pages."""

from __future__ import annotations

from typing import Any

from django import forms

from devices import health
from devices.models import IDENTIFIER_MAX_LENGTH
from nerveshub.tenancy.models import Organization, Product


class DeviceForm(forms.Form):
    product = forms.ModelChoiceField(queryset=Product.objects.none(), empty_label=None)
    identifier = forms.CharField(
        max_length=IDENTIFIER_MAX_LENGTH, help_text="The serial number the device identifies itself with."
    )
    tags = forms.CharField(max_length=500, required=False, help_text="Space- or comma-separated.")
    description = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def __init__(self, *args: Any, org: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Only this organization's products are choices.
        self.fields["product"].queryset = Product.objects.filter(org=org).order_by("name")  # type: ignore[attr-defined]


def _metric_field(name: str) -> tuple[str, str]:
    return f"{name}__warning", f"{name}__unhealthy"


class ThresholdsForm(forms.Form):
    """A warning and an unhealthy limit for each standard metric; both empty
    keeps the hub's default for that metric."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, label in health.STANDARD_METRICS.items():
            default = health.thresholds_for({}).get(name)
            warn, bad = _metric_field(name)
            hint = f"{default[0]:g}" if default else "none"
            self.fields[warn] = forms.FloatField(required=False, label=f"{label}: warning at", widget=_number(hint))
            hint = f"{default[1]:g}" if default else "none"
            self.fields[bad] = forms.FloatField(required=False, label=f"{label}: unhealthy at", widget=_number(hint))

    def rows(self) -> list[tuple[str, forms.BoundField, forms.BoundField]]:
        pairs = ((label, _metric_field(name)) for name, label in health.STANDARD_METRICS.items())
        return [(label, self[warn], self[bad]) for label, (warn, bad) in pairs]

    def thresholds(self, current: object) -> dict[str, list[float]]:
        """The product's new thresholds: the standard metrics from the form,
        any other metric it named (a custom one, set with save_product) kept."""
        own = current if isinstance(current, dict) else {}
        kept = {k: v for k, v in own.items() if k not in health.STANDARD_METRICS}
        for name in health.STANDARD_METRICS:
            warn, bad = (self.cleaned_data.get(field) for field in _metric_field(name))
            if warn is None and bad is None:
                continue
            if warn is None or bad is None:
                self.add_error(_metric_field(name)[0 if warn is None else 1], "Give both limits, or neither.")
                continue
            kept[name] = [warn, bad]
        return kept


def _number(placeholder: str) -> forms.NumberInput:
    return forms.NumberInput(attrs={"step": "any", "placeholder": placeholder, "size": 6})


def initial_thresholds(product: Product) -> dict[str, float]:
    initial: dict[str, float] = {}
    own = product.health_thresholds if isinstance(product.health_thresholds, dict) else {}
    for name in health.STANDARD_METRICS:
        pair = own.get(name)
        if isinstance(pair, list) and not health.threshold_errors({name: pair}):
            initial[_metric_field(name)[0]], initial[_metric_field(name)[1]] = pair
    return initial
