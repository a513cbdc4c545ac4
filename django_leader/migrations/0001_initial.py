from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list = []

    operations = [
        migrations.CreateModel(
            name="Lease",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=253, unique=True)),
                ("record", models.TextField()),
                ("version", models.BigIntegerField()),
                ("holder", models.CharField(blank=True, default="", max_length=253)),
                ("token", models.BigIntegerField(default=0, help_text="fencing token (leaderTransitions)")),
            ],
            options={"ordering": ["name"], "verbose_name": "lease"},
        ),
    ]
