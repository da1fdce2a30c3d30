"""Request shapes for the OpenAPI schema, and the bearer-token scheme it advertises.

These serializers only *describe* request bodies; the views validate through the
services (which name the offending field) and answer with the models' `to_dict()`.
"""

from __future__ import annotations

from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema_field, inline_serializer
from rest_framework import serializers

from webapp.searches import models as m


class HashedTokenScheme(OpenApiAuthenticationExtension):
    target_class = "webapp.accounts.auth.HashedTokenAuthentication"
    name = "bearerAuth"

    def get_security_definition(self, auto_schema):
        return {"type": "http", "scheme": "bearer", "description": "A token from `manage.py issuetoken`."}


@extend_schema_field(OpenApiTypes.OBJECT)
class JsonObjectField(serializers.JSONField):
    pass


class SearchCreate(serializers.Serializer):
    team = serializers.IntegerField(help_text="id of one of your teams")
    name = serializers.CharField(max_length=200)
    spec = JsonObjectField(help_text="a search spec (nas_engine.spec): dataset, space, strategy, child, budget...")


class TrainingJobCreate(serializers.Serializer):
    team = serializers.IntegerField(help_text="id of one of your teams")
    name = serializers.CharField(max_length=200)
    architecture = serializers.IntegerField(required=False, help_text="train this architecture's genotype...")
    genotype = JsonObjectField(required=False, help_text="...or this genotype (give one of the two)")
    dataset = JsonObjectField(
        help_text="as in a search spec: a name or {name, subset_per_class, val_size, image_size, test_size, "
        "test_dataset}; val_size 0 trains on every training image (no validation accuracy, test only)"
    )
    recipe = JsonObjectField(
        required=False, help_text="nas_engine.trainer.Recipe fields; over the preset's recipe, else the defaults"
    )
    preset = serializers.CharField(
        required=False,
        help_text="a named final training (GET /api/transfer-presets): cifar_final, imagenet_mobile, ... Its recipe "
        "is the base and its image size the data set's unless dataset.image_size is given",
    )
    budget = JsonObjectField(
        required=False,
        help_text="{max_params, max_mult_adds} (numbers or '564M'): the worker trains the widest N and F within it "
        "(N fixed by recipe.repeats or the preset); give no recipe.filters. The fit is recorded as budget.fitted",
    )


class SelectionCreate(serializers.Serializer):
    kind = serializers.ChoiceField(
        choices=["top_k", "noise_floor"],
        required=False,
        help_text="top_k (default): the search's best K distinct architectures, the paper's second stage; "
        "noise_floor: K random children with the child recipe and other seeds",
    )
    top_k = serializers.IntegerField(required=False, help_text="architectures (default: 1.25% of the children, 3-250)")
    seeds = serializers.IntegerField(required=False, help_text="training seeds per architecture (default 2)")
    recipe = JsonObjectField(
        required=False, help_text="Recipe fields over the default (the child's recipe with twice its epochs)"
    )


# Responses are the models' to_dict(); the schema describes them as objects.
ERROR = inline_serializer(
    "Error", {"field": serializers.CharField(), "error": serializers.CharField()}, help_text="any 4xx answer"
)


def page_of(name: str):
    return inline_serializer(
        f"Paginated{name}",
        {
            "count": serializers.IntegerField(),
            "next": serializers.CharField(allow_null=True),
            "previous": serializers.CharField(allow_null=True),
            "results": serializers.ListField(child=JsonObjectField()),
        },
    )


PAGE = OpenApiParameter("page", int, description="page number (50 per page)")
SEARCH_FILTERS = [
    PAGE,
    OpenApiParameter("team", int, description="only this team's searches"),
    OpenApiParameter("status", str, enum=[s for s, _ in m.SEARCH_STATUSES]),
]
ORDERINGS = ("-reward", "reward", "sample_index", "-sample_index")
ARCHITECTURE_FILTERS = [PAGE, OpenApiParameter("ordering", str, enum=list(ORDERINGS), description="nulls last")]
TRAINING_JOB_FILTERS = [
    PAGE,
    OpenApiParameter("team", int, description="only this team's jobs"),
    OpenApiParameter("status", str, enum=[s for s, _ in m.RUN_STATUSES]),
]
