from __future__ import annotations

from django.contrib.auth import views as auth_views
from django.urls import include, path, reverse_lazy

from nerveshub.web import (
    device_pages,
    firmware_pages,
    live,
    manual_update_pages,
    org_pages,
    rollout_safety_pages,
    signin,
    twofactor,
    views,
)

app_name = "web"

# Everything under /org/<slug>/ is checked by access.get_org_for_user;
# tests/web/test_permissions.py walks this list.
org_patterns = [
    path("", views.dashboard, name="dashboard"),
    path("products/", views.products, name="products"),
    path("products/<int:pk>/", views.product_detail, name="product"),
    path("products/<int:pk>/delete/", views.product_delete, name="product_delete"),
    path("products/<int:pk>/secrets/", views.product_secret_new, name="product_secret_new"),
    path("products/secrets/<int:pk>/deactivate/", views.product_secret_deactivate, name="product_secret_deactivate"),
    path("products/<int:pk>/health/", device_pages.product_health, name="product_health"),
    path("devices/", views.device_list, name="devices"),
    path("devices/tags/", views.device_bulk_tags, name="device_bulk_tags"),
    path("devices/new/", device_pages.device_new, name="device_new"),
    path("devices/deleted/", device_pages.devices_deleted, name="devices_deleted"),
    path("devices/<int:pk>/delete/", device_pages.device_delete, name="device_delete"),
    path("devices/<int:pk>/restore/", device_pages.device_restore, name="device_restore"),
    path("devices/<int:pk>/move/", device_pages.device_move, name="device_move"),
    path("devices/<int:pk>/", views.device_detail, name="device"),
    path("devices/<int:pk>/action/", views.device_action, name="device_action"),
    path("devices/<int:pk>/update/", manual_update_pages.device_send_update, name="device_send_update"),
    path("devices/<int:pk>/audit/", views.device_audit, name="device_audit"),
    path("firmware/", views.firmware_list, name="firmware"),
    path("firmware/<int:pk>/", firmware_pages.firmware_detail, name="firmware_detail"),
    path("firmware/<int:pk>/download/", firmware_pages.firmware_download, name="firmware_download"),
    path("firmware/<int:pk>/status/", views.firmware_status, name="firmware_status"),
    path("firmware/<int:pk>/delete/", views.firmware_delete, name="firmware_delete"),
    path("keys/", views.signing_keys, name="keys"),
    path("keys/<int:pk>/delete/", views.signing_key_delete, name="key_delete"),
    path("certificates/", views.ca_certificates, name="certificates"),
    path("certificates/<int:pk>/delete/", views.ca_certificate_delete, name="certificate_delete"),
    path("certificates/<int:pk>/verify/", views.ca_certificate_verify, name="certificate_verify"),
    path("deployments/", views.deployment_list, name="deployments"),
    path("deployments/new/", views.deployment_form, name="deployment_new"),
    path("deployments/<int:pk>/", views.deployment_detail, name="deployment"),
    path("deployments/<int:pk>/edit/", views.deployment_form, name="deployment_edit"),
    path("deployments/<int:pk>/preview/", views.deployment_preview, name="deployment_preview"),
    path("deployments/<int:pk>/progress.json", views.deployment_progress, name="deployment_progress"),
    path("deployments/<int:pk>/action/", views.deployment_action, name="deployment_action"),
    path("deployments/<int:pk>/audit/", views.deployment_audit, name="deployment_audit"),
    path("deployments/<int:pk>/revert/", rollout_safety_pages.deployment_revert, name="deployment_revert"),
    path("members/", views.members, name="members"),
    path("members/<int:pk>/role/", views.member_role, name="member_role"),
    path("members/<int:pk>/remove/", views.member_remove, name="member_remove"),
    path("invitations/<int:pk>/revoke/", views.invitation_revoke, name="invitation_revoke"),
    path("audit/", views.audit_log, name="audit"),
    path("audit/chain/", views.audit_chain, name="audit_chain"),
    path("audit/export.jsonl", views.audit_export, name="audit_export"),
    path("settings/", org_pages.org_settings, name="org_settings"),
    path("live/counts.json", live.live_counts, name="live_counts"),
]

account_patterns = [
    path(
        "login/",
        signin.SignInView.as_view(template_name="registration/login.html", next_page=reverse_lazy("web:home")),
        name="login",
    ),
    path("login/code/", twofactor.login_code, name="login_code"),
    path("logout/", auth_views.LogoutView.as_view(next_page=reverse_lazy("web:login")), name="logout"),
    path(
        "password/reset/",
        # The hub's own templates, named explicitly: django.contrib.admin's
        # registration/ templates come first in the app order.
        signin.ThrottledPasswordResetView.as_view(
            template_name="web/accounts/password_reset_form.html",
            email_template_name="registration/reset_email.txt",
            subject_template_name="registration/reset_subject.txt",
            success_url=reverse_lazy("web:password_reset_done"),
        ),
        name="password_reset",
    ),
    path(
        "password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="web/accounts/password_reset_done.html"),
        name="password_reset_done",
    ),
    path(
        "password/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="web/accounts/password_reset_confirm.html",
            success_url=reverse_lazy("web:password_reset_complete"),
        ),
        name="password_reset_confirm",
    ),
    path(
        "password/reset/done/",
        auth_views.PasswordResetCompleteView.as_view(template_name="web/accounts/password_reset_complete.html"),
        name="password_reset_complete",
    ),
    path("settings/", views.account, name="account"),
    path("settings/two-factor/", twofactor.settings_page, name="two_factor"),
    path("tokens/", views.tokens, name="tokens"),
    path("tokens/<int:pk>/revoke/", views.token_revoke, name="token_revoke"),
    path("cli-sessions/<str:public_id>/", views.cli_session, name="cli_session"),
]

urlpatterns = [
    path("", views.home, name="home"),
    path("accounts/", include(account_patterns)),
    path("invitations/<str:token>/", views.invitation, name="invitation"),
    path("orgs/new/", org_pages.org_new, name="org_new"),
    path("org/<str:org>/", include(org_patterns)),
]
