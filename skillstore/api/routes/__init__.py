"""One router per resource; `ROUTERS` is the list the app mounts."""

from . import catalog, jobs, packs, reports, states

ROUTERS = (catalog.router, jobs.router, packs.router, states.router, reports.router)

__all__ = ["ROUTERS"]
