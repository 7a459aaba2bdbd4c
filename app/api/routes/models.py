"""``/v1/variants/{name}/models``: training jobs, their results, activation and the ONNX file."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response, status

from app.api.deps import SessionDep, VariantDep, Version, WorkerDep
from app.api.routes._docs import problems
from app.api.schemas import ModelCreate, ModelPage, ModelPublic
from app.api.security import AccessRoute, AdminAccess, InspectorAccess
from app.services import training as service

router = APIRouter(prefix="/v1/variants/{name}/models", tags=["models"],
                   route_class=AccessRoute)


@router.post("", dependencies=[AdminAccess],
             status_code=status.HTTP_202_ACCEPTED, response_model=ModelPublic,
             responses=problems(400, 404, 409))
def train(variant: VariantDep, session: SessionDep, worker: WorkerDep, request: Request,
          response: Response, body: Annotated[ModelCreate | None, Body()] = None) -> ModelPublic:
    """Queue a training job on the variant's images; returns at once with its ``version``.
    Poll ``GET .../models/{version}`` for ``status`` and ``progress``. 409 without good images."""
    body = body or ModelCreate()
    job = service.create_job(session, variant=variant, seed=body.seed, activate=body.activate,
                             settings=body.settings.changes() if body.settings else None)
    worker.wake()
    response.headers["Location"] = str(request.url_for("get_model", name=variant.name,
                                                       version=job.version))
    return ModelPublic.of(job, is_active=False)  # queued: not active yet


@router.get("", dependencies=[InspectorAccess],
            response_model=ModelPage, responses=problems(404))
def list_models(variant: VariantDep, session: SessionDep,
                limit: Annotated[int, Query(ge=1, le=500)] = 100,
                offset: Annotated[int, Query(ge=0, le=2**31)] = 0) -> ModelPage:
    """The variant's models, newest version first."""
    views, total = service.list_models(session, variant=variant, limit=limit, offset=offset)
    return ModelPage(items=[ModelPublic.of_view(v) for v in views], total=total, limit=limit,
                     offset=offset)


@router.get("/{version}", dependencies=[InspectorAccess],
            response_model=ModelPublic, responses=problems(404))
def get_model(variant: VariantDep, version: Version, session: SessionDep) -> ModelPublic:
    """Status, progress (0..1), threshold and calibration figures of one version."""
    return ModelPublic.of_view(service.get_model_view(session, variant=variant, version=version))


@router.post("/{version}/cancel", dependencies=[AdminAccess],
             response_model=ModelPublic, responses=problems(404, 409))
def cancel(variant: VariantDep, version: Version, session: SessionDep) -> ModelPublic:
    """Cancel a queued job, or ask a running one to stop (``cancel_requested`` until it does).
    409 for a finished job."""
    model = service.cancel_job(session, variant=variant, version=version)
    return ModelPublic.of_view(service.get_model_view(session, variant=variant,
                                                      version=model.version))


@router.post("/{version}/activate", dependencies=[AdminAccess],
             response_model=ModelPublic, responses=problems(404, 409))
def activate(variant: VariantDep, version: Version, session: SessionDep) -> ModelPublic:
    """Make this ready version the active one (roll forward or back); atomic, and seen by
    every replica on its next inspect."""
    model = service.activate_model(session, variant=variant, version=version)
    return ModelPublic.of_view(service.get_model_view(session, variant=variant,
                                                      version=model.version))


@router.delete("/{version}", dependencies=[AdminAccess],
               status_code=status.HTTP_204_NO_CONTENT,
               responses=problems(404, 409))
def delete(variant: VariantDep, version: Version, session: SessionDep) -> Response:
    """Delete a finished model that is not active."""
    service.delete_model(session, variant=variant, version=version)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{version}/onnx", dependencies=[AdminAccess],
            responses={
    200: {"content": {"application/octet-stream": {}},
          "description": "single-file ONNX model: input `image` uint8 [H, W, 3] RGB; outputs "
                         "`score` float32 [1] and `anomaly_map` float32 [H, W]; threshold and "
                         "preprocessing in the model's metadata (nominal.*)"},
    **problems(404, 409)})
def download_onnx(variant: VariantDep, version: Version, session: SessionDep) -> Response:
    """The trained model as one ONNX file, runnable in stock onnxruntime."""
    model = service.get_model(session, variant=variant, version=version)
    data = service.get_artifact(session, model=model)
    filename = f"{variant.name}-v{model.version}.onnx"
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"',
                             "X-Model-Version": str(model.version),
                             "X-Threshold": repr(model.threshold)})
