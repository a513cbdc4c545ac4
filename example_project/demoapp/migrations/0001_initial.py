from django.db import migrations, models


class Migration(migrations.Migration):
    initial = True

    dependencies: list = []

    operations = [
        migrations.CreateModel(
            name="Run",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("kind", models.CharField(max_length=20)),
                ("instance", models.CharField(max_length=253)),
                ("token", models.BigIntegerField(null=True)),
                ("worker", models.CharField(blank=True, default="", max_length=253)),
                ("at", models.DateTimeField(auto_now_add=True)),
            ],
            options={"ordering": ["at", "id"]},
        ),
    ]
