"""The service's routes, one APIRouter per concern; `genad.service.app.create_app` includes them.

    static   the page `/`, its files under `/static`, `/healthz`
    detect   POST /v1/detect, GET /v1/detectors
    history  the /v1/inspections routes
    jobs     the /v1/jobs routes
    models   the /v1/models routes (stored models: fitted once, kept as model files)

Routes hold no state of their own: they reach the objects `create_app` builds (store,
inspector, job runner, stored models, limits, the detection thread pool) through
`request.app.state`, by way of the small dependencies in `genad.service.routes.deps`.
"""
