"""The REST API: thin views over the services, answering with the models' `to_dict()`.

Every object is looked up through `for_user(user)`, so an outsider gets 404 for another
team's search, architecture, job or bundle, never its data. Every refusal is a 4xx
JSON `{"field": ..., "error": ...}` (see `api_exception_handler`).
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import zipfile
from pathlib import Path

from django.conf import settings
from django.core.exceptions import RequestDataTooBig
from django.db.models import F
from django.http import FileResponse, Http404, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import exceptions
from rest_framework.pagination import PageNumberPagination
from rest_framework.parsers import JSONParser
from rest_framework.response import Response
from rest_framework.views import APIView

from nas_engine.cells import NASNET_A
from nas_engine.transfer import TRANSFER_PRESETS
from webapp.accounts.models import Team
from webapp.api import serializers as s
from webapp.searches import models as m
from webapp.searches import services
from webapp.searches.services import ServiceError

log = logging.getLogger("nasnet.api")

MAX_ID = 2**63 - 1  # PostgreSQL bigint
FIELD_OF = {
    exceptions.ParseError: "body",
    exceptions.UnsupportedMediaType: "content-type",
    exceptions.NotAcceptable: "accept",
    exceptions.MethodNotAllowed: "method",
    exceptions.NotAuthenticated: "authorization",
    exceptions.AuthenticationFailed: "authorization",
    exceptions.PermissionDenied: "authorization",
    exceptions.Throttled: "rate",
}


def error(field: str, reason: str, status: int, headers: dict | None = None) -> Response:
    return Response({"field": field, "error": reason}, status=status, headers=headers)


def api_exception_handler(exc, context) -> Response | None:
    """Turn every refusal into `{"field", "error"}`; anything else stays a 500 (a bug)."""
    if isinstance(exc, ServiceError):
        return error(exc.field, exc.reason, exc.status)
    if isinstance(exc, Http404):
        return error("id", "not found", 404)
    if isinstance(exc, RequestDataTooBig):
        # Raised by request.data (request.body) past DATA_UPLOAD_MAX_MEMORY_SIZE; left alone,
        # Django answers it with its HTML 400 page.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return error("body", f"larger than the limit of {limit} bytes (DATA_UPLOAD_MAX_MEMORY_SIZE)", 413)
    if isinstance(exc, exceptions.ValidationError):
        field, reason = "body", exc.detail
        if isinstance(exc.detail, dict) and exc.detail:
            field, reason = next(iter(exc.detail.items()))
        if isinstance(reason, list) and reason:
            reason = reason[0]
        return error(str(field), str(reason), exc.status_code)
    if isinstance(exc, exceptions.APIException):
        headers = {}
        if getattr(exc, "auth_header", None):
            headers["WWW-Authenticate"] = exc.auth_header
        if getattr(exc, "wait", None):
            headers["Retry-After"] = str(int(exc.wait))
        field = next((f for cls, f in FIELD_OF.items() if isinstance(exc, cls)), "request")
        return error(field, str(exc.detail), exc.status_code, headers)
    return None


class StorableJSONParser(JSONParser):
    """JSON that PostgreSQL's JSON column can store, refused by its dotted path otherwise.

    Not strict: NaN and +-Infinity literals are read (as Python's json reads 1e400, inf) so
    that `check_storable` names where they are, rather than a parse error on the "body".
    The check runs here, on every body any view reads, not only those going via `json_body`.
    """

    strict = False

    def parse(self, stream, media_type=None, parser_context=None):
        data = super().parse(stream, media_type, parser_context)
        check_storable(data)
        return data


class ApiView(APIView):
    parser_classes = [StorableJSONParser]

    def get_exception_handler(self):
        return api_exception_handler


# -- small helpers -----------------------------------------------------------------------------
def parse_id(value: object, field: str) -> int:
    """An object id from a JSON body (an integer) or a query string (digits)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 19:
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_ID:
        raise ServiceError(field, f"must be an object id (a positive integer), got {value!r}")
    return value


def json_body(request) -> dict:
    try:
        # ParseError on malformed JSON, ServiceError on what cannot be stored (the parser's
        # check_storable), RequestDataTooBig past the size limit (api_exception_handler).
        data = request.data
    except RecursionError:
        raise ServiceError("body", "JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise ServiceError("body", "must be a JSON object")
    return data


def check_storable(data: object) -> None:
    """PostgreSQL stores no NUL character, no lone surrogate and no NaN or +-Infinity (Django
    would write them as JSON it refuses, a 500): refuse them up front, by path."""
    stack = [("", data)]
    while stack:
        path, value = stack.pop()
        if isinstance(value, dict):
            for key, item in value.items():
                child = f"{path}.{key}" if path else str(key)
                if not storable(key):
                    raise ServiceError(path or "body", "a key contains a NUL character or invalid Unicode")
                stack.append((child, item))
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", item) for i, item in enumerate(value))
        elif isinstance(value, str) and not storable(value):
            raise ServiceError(path, "contains a NUL character or invalid Unicode")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ServiceError(path or "body", "must be a finite number")


def storable(text: str) -> bool:
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def get_team(user, data: dict) -> Team:
    if data.get("team") is None:
        raise ServiceError("team", "required")
    team = Team.objects.for_user(user).filter(pk=parse_id(data["team"], "team")).first()
    if team is None:
        raise ServiceError("team", "no such team", status=404)
    return team


def get_or_404(queryset, pk: int):
    if not 1 <= pk <= MAX_ID:  # `<int:pk>` takes any digits; past bigint there is no such row
        raise ServiceError("id", "not found", status=404)
    obj = queryset.filter(pk=pk).first()
    if obj is None:
        raise ServiceError("id", "not found", status=404)
    return obj


@csrf_exempt  # an unknown path is a 404 for any method, not Django's CSRF 403 page
def no_route(request, *args, **kwargs) -> JsonResponse:
    """Every /api/... path that matches no route (the last pattern of api/urls.py), malformed
    ids included: `<int:pk>` takes digits only, so `searches/abc` lands here."""
    return JsonResponse({"field": "path", "error": "no such API endpoint"}, status=404)


def query_param(request, name: str) -> str | None:
    """A query parameter read once: given twice (`?team=1&team=2`), which one was meant is
    unknown, so it is refused rather than the last silently winning."""
    values = request.query_params.getlist(name)
    if len(values) > 1:
        raise ServiceError(name, "given more than once")
    return values[0] if values else None


def filter_choice(request, queryset, name: str, choices) -> object:
    value = query_param(request, name)
    if value is None or value == "":
        return queryset
    allowed = [c for c, _ in choices]
    if value not in allowed:
        raise ServiceError(name, f"must be one of {', '.join(allowed)}")
    return queryset.filter(**{name: value})


def filter_team(request, queryset):
    value = query_param(request, "team")
    if value is None or value == "":
        return queryset
    return queryset.filter(team_id=parse_id(value, "team"))


def paginate(request, view, queryset, as_dict=None) -> Response:
    """A page of `queryset`, each row as `as_dict(row)` (default: its to_dict())."""
    paginator = PageNumberPagination()
    query_param(request, paginator.page_query_param)  # the paginator reads the last one given
    try:
        page = paginator.paginate_queryset(queryset, request, view=view)
    except exceptions.NotFound as exc:
        raise ServiceError("page", str(exc.detail), status=404) from None
    return paginator.get_paginated_response([(as_dict or type(obj).to_dict)(obj) for obj in page])


def guarded(field: str, call, **kwargs):
    """Run a service call; a stray ValueError/OSError from validation is a 400, not a 500."""
    try:
        return call(**kwargs)
    except (ValueError, OSError) as exc:
        log.warning("validation raised %s: %s", type(exc).__name__, exc)
        raise ServiceError(field, "invalid value") from None


OBJ = OpenApiTypes.OBJECT
# Every operation can answer these, as the documented JSON error: 400 (a bad or repeated
# parameter), 401, 404 (also for a malformed id), 413 (a body over the size limit).
ERRORS = {code: s.ERROR for code in (400, 401, 404, 413)}


# -- teams -------------------------------------------------------------------------------------
class TeamList(ApiView):
    @extend_schema(operation_id="teams_list", parameters=[s.PAGE], responses={200: s.page_of("Teams"), **ERRORS})
    def get(self, request):
        return paginate(request, self, Team.objects.for_user(request.user).order_by("name", "id"))


# -- searches ----------------------------------------------------------------------------------
class SearchList(ApiView):
    @extend_schema(
        operation_id="searches_list", parameters=s.SEARCH_FILTERS, responses={200: s.page_of("Searches"), **ERRORS}
    )
    def get(self, request):
        qs = m.Search.objects.for_user(request.user).select_related("owner").order_by("-created_at", "-id")
        qs = filter_choice(request, filter_team(request, qs), "status", m.SEARCH_STATUSES)
        return paginate(request, self, qs)

    @extend_schema(request=s.SearchCreate, responses={201: OBJ, 409: s.ERROR, 429: s.ERROR, **ERRORS})
    def post(self, request):
        data = json_body(request)
        team = get_team(request.user, data)
        if not isinstance(data.get("spec"), dict):
            raise ServiceError("spec", "required: a JSON object")
        name = data.get("name")
        if not isinstance(name, str):
            raise ServiceError("name", "required: a string")
        search = guarded(
            "spec", services.submit_search, user=request.user, team=team, name=name, spec_data=data["spec"]
        )
        return Response(search.to_dict(), status=201)


class SearchDetail(ApiView):
    @extend_schema(responses={200: OBJ, **ERRORS})
    def get(self, request, pk: int):
        return Response(get_or_404(m.Search.objects.for_user(request.user).select_related("owner"), pk).to_dict())


class SearchAction(ApiView):
    action_name = ""

    @extend_schema(request=None, responses={200: OBJ, 409: s.ERROR, **ERRORS})
    def post(self, request, pk: int):
        search = get_or_404(m.Search.objects.for_user(request.user), pk)
        return Response(services.transition(search, self.action_name).to_dict())


class SearchCancel(SearchAction):
    action_name = "cancel"


class SearchPause(SearchAction):
    action_name = "pause"


class SearchResume(SearchAction):
    action_name = "resume"


# -- architectures -----------------------------------------------------------------------------
ORDER_BY = {
    "-reward": [F("reward").desc(nulls_last=True), "sample_index"],
    "reward": [F("reward").asc(nulls_last=True), "sample_index"],
    "sample_index": ["sample_index"],
    "-sample_index": ["-sample_index"],
}


def architecture_dict(arch: m.Architecture, planned: int) -> dict:
    """An architecture as the API answers it: its to_dict() with its child run's to_dict()
    (`run`: status queued, running, waiting, succeeded, stopped, failed, reused or cancelled;
    null before it has one) and `epochs_trained`, the epochs its run trained
    (models.epochs_trained; `planned`: the search's child epochs): for a child early stopping
    stopped, the rung it reached; for a reused one, 0. `reward` is the final
    reward only; a stopped child's value at its rung is `run.reward`. Read `runs` with the
    row (prefetch_related("runs"))."""
    run = next(iter(arch.runs.all()), None)
    reused = arch.reused_from_id is not None
    trained = m.epochs_trained(run.status, run.epochs, planned, reused, run.epochs_discarded) if run else 0
    return {**arch.to_dict(), "run": run.to_dict() if run else None, "epochs_trained": trained}


class SearchArchitectures(ApiView):
    @extend_schema(
        operation_id="searches_architectures_list",
        parameters=s.ARCHITECTURE_FILTERS,
        responses={200: s.page_of("Architectures"), **ERRORS},
    )
    def get(self, request, pk: int):
        search = get_or_404(m.Search.objects.for_user(request.user), pk)
        ordering = query_param(request, "ordering") or "sample_index"
        if ordering not in ORDER_BY:
            raise ServiceError("ordering", f"must be one of {', '.join(ORDER_BY)}")
        archs = search.architectures.prefetch_related("runs").order_by(*ORDER_BY[ordering], "id")
        planned = search.child_epochs or 0
        return paginate(request, self, archs, lambda arch: architecture_dict(arch, planned))


class SearchRungs(ApiView):
    @extend_schema(
        operation_id="searches_rungs_list", parameters=[s.PAGE], responses={200: s.page_of("RungDecisions"), **ERRORS}
    )
    def get(self, request, pk: int):
        """Early stopping's decisions: one row per child (`sample_index`) and epoch where the rule
        judged it (`stop`: ended there, else went on), its `value`, the `threshold` it was
        compared with (null: too few peers) and the `peers`; by epoch, then sample index."""
        search = get_or_404(m.Search.objects.for_user(request.user), pk)
        return paginate(request, self, search.rung_decisions.order_by("epoch", "sample_index", "id"))


class ArchitectureDetail(ApiView):
    @extend_schema(responses={200: OBJ, **ERRORS})
    def get(self, request, pk: int):
        qs = m.Architecture.objects.for_user(request.user).select_related("search").prefetch_related("runs")
        arch = get_or_404(qs, pk)
        return Response(architecture_dict(arch, arch.search.child_epochs or 0))


class ArchitectureGenotype(ApiView):
    @extend_schema(
        responses={200: OpenApiResponse(OBJ, description="genotype-<hash12>.json, as an attachment"), **ERRORS}
    )
    def get(self, request, pk: int):
        arch = get_or_404(m.Architecture.objects.for_user(request.user), pk)
        response = HttpResponse(json.dumps(arch.genotype, indent=2) + "\n", content_type="application/json")
        response["Content-Disposition"] = f'attachment; filename="genotype-{arch.canonical_hash[:12]}.json"'
        return response


# -- selections (the top-K stage, noise floors) -----------------------------------------------
class SearchSelections(ApiView):
    @extend_schema(
        operation_id="searches_selections_list", parameters=[s.PAGE], responses={200: s.page_of("Selections"), **ERRORS}
    )
    def get(self, request, pk: int):
        search = get_or_404(m.Search.objects.for_user(request.user), pk)
        return paginate(request, self, search.selections.select_related("owner").order_by("-created_at", "-id"))

    @extend_schema(request=s.SelectionCreate, responses={201: OBJ, 409: s.ERROR, 429: s.ERROR, **ERRORS})
    def post(self, request, pk: int):
        search = get_or_404(m.Search.objects.for_user(request.user), pk)
        data = json_body(request)
        unknown = set(data) - {"kind", "top_k", "seeds", "recipe"}
        if unknown:
            raise ServiceError(sorted(unknown)[0], "unknown field; allowed: kind, recipe, seeds, top_k")
        selection = guarded(
            "recipe",
            services.create_selection,
            user=request.user,
            search=search,
            kind=data.get("kind", m.SELECTION_TOP_K),
            top_k=data.get("top_k"),
            seeds=data.get("seeds"),
            recipe=data.get("recipe"),
        )
        return Response(selection.to_dict(), status=201)


class SelectionDetail(ApiView):
    @extend_schema(responses={200: OBJ, **ERRORS})
    def get(self, request, pk: int):
        return Response(get_or_404(m.Selection.objects.for_user(request.user).select_related("owner"), pk).to_dict())


class SelectionCancel(ApiView):
    @extend_schema(request=None, responses={200: OBJ, 409: s.ERROR, **ERRORS})
    def post(self, request, pk: int):
        selection = get_or_404(m.Selection.objects.for_user(request.user), pk)
        services.check_member(request.user, selection.search.team)
        return Response(services.cancel_selection(selection).to_dict())


# -- training jobs -----------------------------------------------------------------------------
class TrainingJobList(ApiView):
    @extend_schema(
        operation_id="training_jobs_list",
        parameters=s.TRAINING_JOB_FILTERS,
        responses={200: s.page_of("TrainingJobs"), **ERRORS},
    )
    def get(self, request):
        qs = m.TrainingJob.objects.for_user(request.user).select_related("owner").order_by("-created_at", "-id")
        qs = filter_choice(request, filter_team(request, qs), "status", m.RUN_STATUSES)
        return paginate(request, self, qs)

    @extend_schema(request=s.TrainingJobCreate, responses={201: OBJ, 429: s.ERROR, **ERRORS})
    def post(self, request):
        data = json_body(request)
        team = get_team(request.user, data)
        architecture, genotype = None, data.get("genotype")
        if data.get("architecture") is not None:
            if genotype is not None:
                raise ServiceError("genotype", "give an architecture or a genotype, not both")
            pk = parse_id(data["architecture"], "architecture")
            architecture = m.Architecture.objects.for_user(request.user).filter(pk=pk).first()
            if architecture is None:
                raise ServiceError("architecture", "no such architecture", status=404)
            if architecture.search.team_id != team.id:
                raise ServiceError("architecture", "belongs to another team's search")
            genotype = architecture.genotype
        elif genotype is None:
            raise ServiceError("genotype", "required (or give an architecture)")
        name = data.get("name")
        if not isinstance(name, str):
            raise ServiceError("name", "required: a string")
        if "dataset" not in data:
            raise ServiceError("dataset", "required")
        job = guarded(
            "dataset",
            services.create_training_job,
            user=request.user,
            team=team,
            name=name,
            genotype=genotype,
            dataset=data["dataset"],
            recipe=data.get("recipe", {}),
            architecture=architecture,
            preset=data.get("preset"),
            budget=data.get("budget"),
        )
        return Response(job.to_dict(), status=201)


class TransferPresetList(ApiView):
    @extend_schema(operation_id="transfer_presets_list", responses={200: OBJ, **ERRORS})
    def get(self, request):
        """The named final trainings a training job may start from (`preset`), with N@P for NASNet-A."""
        return Response({name: preset.to_dict(NASNET_A) for name, preset in TRANSFER_PRESETS.items()})


class TrainingJobDetail(ApiView):
    @extend_schema(responses={200: OBJ, **ERRORS})
    def get(self, request, pk: int):
        qs = m.TrainingJob.objects.for_user(request.user).select_related("owner")
        return Response(get_or_404(qs, pk).to_dict())


def bundle_dir(job: m.TrainingJob) -> Path | None:
    """The job's bundle folder, if it exists inside the artifacts root (never outside)."""
    if not job.bundle_path:
        return None
    try:
        root = Path(settings.NAS_ARTIFACTS_ROOT).resolve()
        folder = (root / job.bundle_path).resolve()
        if folder == root or not folder.is_relative_to(root) or not folder.is_dir():
            return None
    except (OSError, ValueError):
        return None
    return folder


def zip_folder(folder: Path) -> tempfile.SpooledTemporaryFile:
    """Zip regular files under `folder`; symlinks are skipped, so nothing outside leaks in."""
    out = tempfile.SpooledTemporaryFile(max_size=32 * 1024 * 1024)  # noqa: SIM115 (FileResponse closes it)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not os.path.islink(os.path.join(dirpath, d)))
            for filename in sorted(filenames):
                path = Path(dirpath) / filename
                if path.is_symlink() or not path.is_file():
                    continue
                archive.write(path, path.relative_to(folder).as_posix())
    out.seek(0)
    return out


class TrainingJobCancel(ApiView):
    @extend_schema(request=None, responses={200: OBJ, 409: s.ERROR, **ERRORS})
    def post(self, request, pk: int):
        """Cancel a queued or running job (a member of its team); its worker stops at the next heartbeat."""
        job = get_or_404(m.TrainingJob.objects.for_user(request.user), pk)
        services.check_member(request.user, job.team)
        return Response(services.cancel_training_job(job, by=request.user).to_dict())


class TrainingJobBundle(ApiView):
    @extend_schema(responses={200: OpenApiResponse(OpenApiTypes.BINARY, description="a zip of the bundle"), **ERRORS})
    def get(self, request, pk: int):
        job = get_or_404(m.TrainingJob.objects.for_user(request.user), pk)
        folder = bundle_dir(job)
        if folder is None:
            raise ServiceError("bundle", "no bundle yet", status=404)
        return FileResponse(
            zip_folder(folder),
            as_attachment=True,
            filename=f"training-job-{job.id}-bundle.zip",
            content_type="application/zip",
        )
