from django.core.management import call_command
from django.core.management.base import BaseCommand

from tenants.demo import ADMIN_USERNAME, ensure_demo


class Command(BaseCommand):
    help = "Create the admin user and the demo tenant if missing (idempotent); print what was created."

    def add_arguments(self, parser):
        parser.add_argument("--base-url", default="http://127.0.0.1:8000")
        parser.add_argument("--migrate", action="store_true", help="apply migrations first (one process start)")

    def handle(self, *args, base_url: str, migrate: bool, **options):
        if migrate:
            call_command("migrate", "--noinput", verbosity=0)
        result = ensure_demo()
        tenant = result.demo_tenant
        assert tenant is not None
        lines = [f"Admin:        {base_url}/admin/"]
        if result.created_admin_password:
            lines.append(f"  username:   {ADMIN_USERNAME}")
            lines.append(f"  password:   {result.created_admin_password}   (shown once)")
        lines.append(f"Demo tenant:  {tenant.name} (id {tenant.pk}, slug {tenant.slug})")
        if result.created_demo_api_key:
            lines.append(f"  API key:    {result.created_demo_api_key}   (shown once)")
        lines.append(f"API docs:     {base_url}/api/docs/")
        lines.append(f"Health:       {base_url}/api/health")
        lines += [note.replace("{base_url}", base_url) for note in result.notes]
        self.stdout.write("\n".join(lines))
