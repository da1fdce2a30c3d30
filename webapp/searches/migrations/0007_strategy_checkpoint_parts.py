"""Strategy checkpoints move from Search.checkpoint (one column, rewritten whole on every
advance) to StrategyCheckpointPart rows (workers/strategy_store.py), and child runs gain the
`announced` outbox flag. Existing checkpoints are split into pieces; existing runs count as
announced (their events, if any, are long sent)."""

import hashlib
import io

import django.db.models.deletion
import torch
from django.db import migrations, models


def _bytes(value) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def split_checkpoints(apps, schema_editor):
    Search = apps.get_model("searches", "Search")
    Part = apps.get_model("searches", "StrategyCheckpointPart")
    for search_id, data in Search.objects.filter(checkpoint__isnull=False).values_list("id", "checkpoint").iterator():
        payload = torch.load(io.BytesIO(bytes(data)), map_location="cpu", weights_only=True)
        state = payload.pop("state")
        pieces = {"envelope": _bytes({**payload, "state": {}})}
        pieces.update({f"state.{key}": _bytes(value) for key, value in state.items()})
        Part.objects.bulk_create(
            Part(search_id=search_id, key=key, digest=hashlib.blake2b(blob, digest_size=32).hexdigest(), data=blob)
            for key, blob in pieces.items()
        )


class Migration(migrations.Migration):
    dependencies = [
        ("searches", "0006_training_job_preset_budget"),
    ]

    operations = [
        migrations.CreateModel(
            name="StrategyCheckpointPart",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("key", models.CharField(max_length=100)),
                ("digest", models.CharField(max_length=64)),
                ("data", models.BinaryField()),
                ("updated_at", models.DateTimeField(auto_now=True)),
                (
                    "search",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="checkpoint_parts",
                        to="searches.search",
                    ),
                ),
            ],
            options={
                "constraints": [models.UniqueConstraint(fields=("search", "key"), name="one_checkpoint_part_per_key")],
            },
        ),
        migrations.RunPython(split_checkpoints, migrations.RunPython.noop),
        migrations.RemoveField(model_name="search", name="checkpoint"),
        migrations.AddField(model_name="childrun", name="announced", field=models.BooleanField(default=True)),
        migrations.AlterField(model_name="childrun", name="announced", field=models.BooleanField(default=False)),
    ]
