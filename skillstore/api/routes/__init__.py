"""One router per resource; `ROUTERS` is the list the app mounts."""

from . import catalog, experiments, jobs, packs, reports, states

ROUTERS = (catalog.router, jobs.router, experiments.router, packs.router, states.router,
           reports.router)

__all__ = ["ROUTERS"]
