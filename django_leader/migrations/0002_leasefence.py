from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("django_leader", "0001_initial")]

    operations = [
        migrations.CreateModel(
            name="LeaseFence",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("name", models.CharField(max_length=253, unique=True)),
                ("token", models.BigIntegerField()),
            ],
            options={"ordering": ["name"], "verbose_name": "lease fence"},
        ),
    ]
