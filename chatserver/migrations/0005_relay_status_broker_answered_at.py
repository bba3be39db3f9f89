from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("chatserver", "0004_push_job")]

    operations = [
        migrations.AddField(
            model_name="relaystatus",
            name="broker_answered_at",
            field=models.DateTimeField(blank=True, null=True),
        ),
    ]
